"""Architectures drawn uniformly over a stage's kept ops and scored by training-free estimators: what the controllers
that search by an estimator alone (estimator_pruning, random_estimator) share.

A draw picks one kept op per edge uniformly and ranks the edges at random, and the space derives the architecture
from that (NB201: the cell of those ops; DARTS: per node two of the edges at random, with their ops); its path is
the one that runs exactly that architecture (`space.architecture_path`: -1 on the edges it leaves off). Each new
architecture is built as the space's `scoring_network` and scored once (nas/core/estimators/reward.py: on the first
batch given, from fixed initialisation seeds, cached), so scores compare across the stage's draws.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from controllers.base import Controller, StageContext
from nas.core.arch_types import KeptOps, OpIndices
from nas.core.errors import UserError
from nas.core.estimators.common import Batch
from nas.core.estimators.ensemble import rank_ensemble
from nas.core.estimators.reward import ENSEMBLE, EstimatorReward, check_reward_name, reward_members


@dataclass
class EstimatorSearchConfig:
    """What a controller that searches by an estimator alone reads: the estimator and how it scores."""

    estimator: str = ENSEMBLE  # ensemble | an estimator | names joined by "+" (their rank ensemble)
    seeds: int = 1  # initialisations each architecture is scored from (its score is their mean)
    per_step: int = 4  # draws scored per architecture step (the search loop's steps: epochs x batches)

    def check(self, section: str) -> None:
        """UserError naming the first bad field of section `section`."""
        check_reward_name(f"{section}.estimator", self.estimator)
        for name in ("seeds", "per_step"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UserError(f"{section}.{name} must be a positive integer, got {value!r}")


class ScoredSamples:
    """The stage's draws, in order, each with its architecture's member scores (cached per architecture)."""

    def __init__(self, space: Any, kept_ops: KeptOps, cfg: EstimatorSearchConfig, generator: torch.Generator):
        self.space, self.kept_ops, self.generator = space, kept_ops, generator
        self.estimator = EstimatorReward(reward_members(cfg.estimator), space.scoring_network, space.format_arch,
                                         seeds=cfg.seeds)
        self.paths: list[OpIndices] = []
        self.keys: list[str] = []

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def label(self) -> str:
        """The estimator's name in records: its members joined by "+"."""
        return "+".join(self.estimator.members)

    def distinct(self) -> int:
        """How many distinct architectures have been scored (estimator evaluations)."""
        return len(self.estimator.scores)

    def draw(self) -> Any:
        """One architecture drawn uniformly over the kept ops (module doc), not scored."""
        scores = {}
        for group, edges in self.kept_ops.items():
            ops = torch.randint(len(edges[0]), (len(edges),), generator=self.generator)
            order = torch.rand(len(edges), 1, generator=self.generator) + 1e-3
            scores[group] = F.one_hot(ops, len(edges[0])).double() * order
        return self.space.derive(scores, self.kept_ops)

    def add(self, arch: Any, batch: Batch) -> None:
        """Score `arch` (on `batch` if it is the first; later ones on the first batch) and append it."""
        self.estimator(arch, batch)
        self.paths.append(self.space.architecture_path(arch, self.kept_ops))
        self.keys.append(self.space.format_arch(arch))

    def scores(self) -> list[float]:
        """Every draw's ensemble score among all the stage's draws (the sum over members of log rank fractions)."""
        members = self.estimator.members
        rows = [self.estimator.scores[key] for key in self.keys]
        return rank_ensemble({m: [row[m] for row in rows] for m in members}, members)

    def rank(self, arch: Any) -> float:
        """exp of `arch`'s ensemble score among the stage's draws, in (0, 1] (scored, not recorded, if new)."""
        return math.exp(self.estimator.ensemble.score(self.estimator.member_scores(arch, record=False)))

    def state(self) -> dict[str, Any]:
        return {"estimator": self.estimator.state(), "paths": list(self.paths), "keys": list(self.keys)}

    def load_state(self, state: dict[str, Any]) -> None:
        self.estimator.load_state(state["estimator"])
        self.paths, self.keys = list(state["paths"]), list(state["keys"])


def stage_samples(ctx: StageContext, section: str) -> ScoredSamples:
    """The stage's ScoredSamples under config section `section`; a space without a scoring network is a UserError
    here, before any step."""
    samples = ScoredSamples(ctx.space, ctx.kept_ops, ctx.sections[section], ctx.generator)
    ctx.space.scoring_network(samples.draw())
    return samples


class TrainingFreeController(Controller):
    """A controller that trains no weight: every epoch of a stage is spent scoring draws (extra epochs)."""

    def arch_active(self, epoch: int, warmup: int) -> bool:
        return False

    def weight_epochs(self, epochs: int) -> int:
        """No weight is trained."""
        return 0

    def extra_epochs(self, epochs: int, warmup: int) -> int:
        """Every epoch of the stage scores draws."""
        return epochs
