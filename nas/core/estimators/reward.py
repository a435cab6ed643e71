"""An estimator as a search's reward: each new architecture is built, scored once, and rewarded by its running rank.

The caller supplies how an architecture becomes a network (`build`) and a hashable key (`key`); nothing here knows
a space. Every architecture is scored on the same batch (the first one given) from the same initialisation seed, so
scores compare across candidates; an architecture seen before is answered from the cache. The reward is the online
rank ensemble's score (ensemble.py) turned into exp(score) in (0, 1]: for one estimator, the fraction
of the architectures seen so far whose score this one reaches.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Hashable, Sequence

import torch
from torch import nn

from nas.core.estimators.common import Batch
from nas.core.estimators.ensemble import DEFAULT_MEMBERS, OnlineRankEnsemble
from nas.core.estimators.registry import score

ENSEMBLE = "ensemble"  # the reward name of the default rank ensemble


def reward_members(name: str) -> tuple[str, ...]:
    """The estimators behind a reward name: `ensemble` (the default members) or one estimator."""
    return DEFAULT_MEMBERS if name == ENSEMBLE else (name,)


class EstimatorReward:
    """Rewards architectures by the running rank of their estimator scores among those seen so far."""

    def __init__(self, members: Sequence[str], build: Callable[[Any], nn.Module], key: Callable[[Any], Hashable],
                 seed: int = 0):
        self.members, self.build, self.key, self.seed = tuple(members), build, key, seed
        self.batch: Batch | None = None
        self.scores: dict[Hashable, dict[str, float]] = {}  # insertion order is arrival order
        self.ensemble = OnlineRankEnsemble(self.members)

    def _scores(self, arch: Any) -> dict[str, float]:
        key = self.key(arch)
        if key not in self.scores:
            with torch.random.fork_rng(devices=[]):  # the search's random stream is left as it was
                torch.manual_seed(self.seed)
                network = self.build(arch)
                self.scores[key] = {name: score(name, network, [self.batch]) for name in self.members}
            self.ensemble.add(self.scores[key])
        return self.scores[key]

    def __call__(self, arch: Any, batch: Batch) -> float:
        """The reward of `arch` in (0, 1]; `batch` is kept as the scoring batch the first time only."""
        if self.batch is None:
            self.batch = (batch[0].detach().cpu(), batch[1].detach().cpu())
        return math.exp(self.ensemble.score(self._scores(arch)))

    def state(self) -> dict[str, Any]:
        return {"batch": self.batch, "scores": [(key, value) for key, value in self.scores.items()]}

    def load_state(self, state: dict[str, Any]) -> None:
        self.batch = state["batch"]
        self.scores, self.ensemble = {}, OnlineRankEnsemble(self.members)
        for key, value in state["scores"]:
            self.scores[key] = value
            self.ensemble.add(value)
