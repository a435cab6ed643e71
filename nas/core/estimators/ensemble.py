"""Combining estimators by rank, online: candidates arrive one by one and each is ranked among those seen so far.

A candidate's ensemble score is the sum over the ensemble's estimators of log(q), q in (0, 1] the fraction of the
scores seen so far (the candidate's own included) that its score reaches or beats. With every candidate seen, this
is the sum of log ranks (rank 1 = worst) up to a constant, the aggregation of the issue's quick check.
Non-finite scores rank below every finite one.
"""
from __future__ import annotations

import bisect
import math
from typing import Mapping, Sequence

# The best three-member ensemble of the NB201 ranking study (docs/estimators.md): Kendall tau 0.760 over 1,000 cells
# x 3 seeds, 0.763 on the 836 cells scored after it was chosen; nwot + synflow + params reached 0.672.
DEFAULT_MEMBERS: tuple[str, ...] = ("synflow", "params", "jacob_cov")


def _key(value: float) -> float:
    return value if math.isfinite(value) else -math.inf


class OnlineRankEnsemble:
    """Running ranks of each member estimator's scores; :meth:`add` scores a new candidate against the seen ones."""

    def __init__(self, members: Sequence[str] = DEFAULT_MEMBERS):
        if not members:
            raise ValueError("an ensemble needs at least one estimator")
        self.members = tuple(members)
        self.seen: dict[str, list[float]] = {name: [] for name in self.members}  # sorted, per member

    def __len__(self) -> int:
        return len(self.seen[self.members[0]])

    def add(self, scores: Mapping[str, float]) -> float:
        """Record a candidate's member scores and return its ensemble score among every candidate seen so far."""
        for name in self.members:
            bisect.insort(self.seen[name], _key(scores[name]))
        return self.score(scores)

    def score(self, scores: Mapping[str, float]) -> float:
        """The ensemble score of member scores against the candidates recorded so far, without recording them
        (a candidate that beats all of them scores as if it were recorded)."""
        total = 0.0
        for name in self.members:
            ranked = self.seen[name]
            reached = bisect.bisect_right(ranked, _key(scores[name]))
            total += math.log(max(reached, 1) / max(len(ranked), 1))
        return total


def rank_ensemble(columns: Mapping[str, Sequence[float]], members: Sequence[str] = DEFAULT_MEMBERS) -> list[float]:
    """The ensemble score of every candidate once all are seen (columns: per estimator, one score per candidate)."""
    ensemble = OnlineRankEnsemble(members)
    rows = [dict(zip(members, values)) for values in zip(*(columns[name] for name in members))]
    for row in rows:
        for name in members:
            bisect.insort(ensemble.seen[name], _key(row[name]))
    return [ensemble.score(row) for row in rows]
