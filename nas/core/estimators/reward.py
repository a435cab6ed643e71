"""An estimator as a search's reward: each new architecture is built, scored once, and rewarded by its running rank.

The caller supplies how an architecture becomes a network (`build`) and a hashable key (`key`); nothing here knows
a space. Every architecture is scored on the same batch (the first one given) from the same initialisation seeds (a
score is the mean over `seeds` initialisations), so scores compare across candidates; an architecture seen before
is answered from the cache. The reward is the online
rank ensemble's score (ensemble.py) turned into exp(score) in (0, 1]: for one estimator, the fraction
of the architectures seen so far whose score this one reaches.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Hashable, Sequence

import torch
from torch import nn

from nas.core.errors import UserError
from nas.core.estimators.common import Batch
from nas.core.estimators.ensemble import DEFAULT_MEMBERS, OnlineRankEnsemble
from nas.core.estimators.registry import estimator, score

ENSEMBLE = "ensemble"  # the reward name of the default rank ensemble
JOIN = "+"  # a rank ensemble of named members: "synflow+params+jacob_cov"


def reward_members(name: str) -> tuple[str, ...]:
    """The estimators behind a reward name: `ensemble` (the default members), members joined by "+" (their rank
    ensemble) or one estimator."""
    return DEFAULT_MEMBERS if name == ENSEMBLE else tuple(part.strip() for part in name.split(JOIN))


def check_reward_name(key: str, name: str, other: str = "") -> None:
    """UserError naming config key `key` unless `name` is a reward name whose every member is an estimator (`other`:
    a further choice the key accepts, for the message)."""
    try:
        for member in reward_members(name):
            estimator(member)
    except UserError:
        choices = f"{other}, {ENSEMBLE}" if other else ENSEMBLE
        raise UserError(f"{key} is {name!r}; choose {choices}, an estimator of nas/core/estimators/registry.py or "
                        f"several joined by {JOIN!r} (their rank ensemble)") from None


class EstimatorReward:
    """Rewards architectures by the running rank of their estimator scores among those seen so far."""

    def __init__(self, members: Sequence[str], build: Callable[[Any], nn.Module], key: Callable[[Any], Hashable],
                 seeds: int = 1):
        self.members, self.build, self.key, self.seeds = tuple(members), build, key, seeds
        self.batch: Batch | None = None
        self.scores: dict[Hashable, dict[str, float]] = {}  # insertion order is arrival order
        self.ensemble = OnlineRankEnsemble(self.members)

    def member_scores(self, arch: Any, record: bool = True) -> dict[str, float]:
        """Each member's score of `arch` (the mean over the seeds' initialisations) on the kept batch; a new
        architecture is scored, and with `record` cached and entered in the running ranks."""
        if self.batch is None:
            raise ValueError("EstimatorReward scores on the batch of its first call; none was given yet")
        key = self.key(arch)
        if key in self.scores:
            return self.scores[key]
        totals = dict.fromkeys(self.members, 0.0)
        with torch.random.fork_rng(devices=[]):  # the search's random stream is left as it was
            for seed in range(self.seeds):
                torch.manual_seed(seed)
                network = self.build(arch)
                for name in self.members:
                    totals[name] += score(name, network, [self.batch]) / self.seeds
        if record:
            self.scores[key] = totals
            self.ensemble.add(totals)
        return totals

    def __call__(self, arch: Any, batch: Batch) -> float:
        """The reward of `arch` in (0, 1]; `batch` is kept as the scoring batch the first time only."""
        if self.batch is None:
            self.batch = (batch[0].detach().cpu(), batch[1].detach().cpu())
        return self.rank(arch)

    def rank(self, arch: Any, record: bool = True) -> float:
        """exp of the ensemble score of `arch` among the architectures recorded so far, in (0, 1] (scored on the
        kept batch if it is new, and recorded with `record`)."""
        return math.exp(self.ensemble.score(self.member_scores(arch, record)))

    def state(self) -> dict[str, Any]:
        return {"batch": self.batch, "scores": [(key, value) for key, value in self.scores.items()]}

    def load_state(self, state: dict[str, Any]) -> None:
        self.batch = state["batch"]
        self.scores, self.ensemble = {}, OnlineRankEnsemble(self.members)
        for key, value in state["scores"]:
            self.scores[key] = value
            self.ensemble.add(value)
