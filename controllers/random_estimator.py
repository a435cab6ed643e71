"""The best of N random architectures by a training-free estimator (the baseline of estimator-driven search).

Each stage draws architectures uniformly over its kept ops (controllers/estimator_samples.py) until
`random_estimator.candidates` distinct ones are scored at initialisation, and outputs the one whose ensemble score
among them is highest. No weight is trained: every epoch of a stage (warm-up included) is a policy epoch of
architecture steps (one per batch of the architecture half), each scoring up to `per_step` new candidates; steps
after the last candidate do nothing, and a stage with too few steps scores fewer.

The candidates are the controller's scored samples (reward: exp of the ensemble score among all candidates, in
(0, 1]), so the `search.select` rules apply: `probe` trains the `top_k` best by the estimator briefly from scratch and
keeps the best (the hybrid: the estimator narrows, short training decides), and the end-of-stage rescoring ranks by
the estimator, not by the untrained supernet.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from controllers.base import ArchStepContext, Evaluate, StageContext
from controllers.estimator_samples import EstimatorSearchConfig, ScoredSamples, TrainingFreeController, stage_samples
from nas.core.arch_types import KeptOps, OpIndices
from nas.core.errors import UserError

MAX_DRAWS_PER_CANDIDATE = 20  # a space with fewer architectures than candidates stops drawing after this many tries


@dataclass
class RandomEstimatorConfig(EstimatorSearchConfig):
    """The ``random_estimator:`` section."""

    candidates: int = 100  # distinct architectures scored per stage

    def validate(self, num_stages: int) -> None:
        self.check("random_estimator")
        if not isinstance(self.candidates, int) or isinstance(self.candidates, bool) or self.candidates < 1:
            raise UserError(f"random_estimator.candidates must be a positive integer, got {self.candidates!r}")


class RandomEstimatorController(TrainingFreeController):
    """Scores random candidates with an estimator and outputs the best (module doc)."""

    name = "random_estimator"
    config_sections = {"random_estimator": RandomEstimatorConfig}
    scores_samples = True
    tags = {"stage{s}/random_estimator/candidates": "distinct candidates scored so far in the stage"}

    def __init__(self, shapes: dict[str, tuple[int, int]], cfg: RandomEstimatorConfig, samples: ScoredSamples):
        super().__init__(shapes, init_std=0.0)
        self.cfg, self.samples, self.draws = cfg, samples, 0

    @classmethod
    def from_config(cls, ctx: StageContext) -> RandomEstimatorController:
        cfg = ctx.sections["random_estimator"]
        samples = stage_samples(ctx, "random_estimator")
        return cls(cls.shapes(ctx.kept_ops), cfg, samples)

    def _best(self) -> int | None:
        scores = self.samples.scores()
        return max(range(len(scores)), key=lambda i: (scores[i], -i)) if scores else None

    def _best_path(self) -> OpIndices:
        best = self._best()
        return self.argmax_path() if best is None else self.samples.paths[best]

    def weight_forward_kwargs(self) -> dict[str, Any]:
        return {"path": self._best_path()}

    def eval_forward_kwargs(self) -> dict[str, Any]:
        return {"path": self._best_path()}

    def arch_step(self, ctx: ArchStepContext) -> dict[str, float]:
        """Score up to `per_step` new distinct candidates on ctx.val_batch (the first one the stage scores on), and
        make the best one the logits' argmax (so pruning keeps its ops)."""
        limit = MAX_DRAWS_PER_CANDIDATE * self.cfg.candidates
        for _ in range(self.cfg.per_step):
            while len(self.samples) < self.cfg.candidates and self.draws < limit:
                self.draws += 1
                arch = self.samples.draw()
                if self.samples.space.format_arch(arch) not in self.samples.estimator.scores:
                    self.samples.add(arch, ctx.val_batch)
                    break
        best = self._best()
        if best is not None:
            with torch.no_grad():
                for group, alpha in self.alphas.items():
                    row = self.samples.paths[best][group].to(alpha.device)
                    alpha.zero_()
                    alpha[row >= 0] = alpha[row >= 0].scatter(1, row[row >= 0, None], 1.0)
        return {"random_estimator/candidates": float(len(self.samples))}

    def architecture(self, space: Any, kept_ops: KeptOps, max_skip: int | None = None) -> Any:
        """The best candidate by the estimator (`max_skip` does not apply); the argmax before any is scored."""
        best = self._best()
        if best is None:
            return super().architecture(space, kept_ops, max_skip)
        return space.path_architecture(self.samples.paths[best], kept_ops)

    def scored_samples(self) -> list[tuple[OpIndices, float]]:
        """Every candidate with exp of its ensemble score among all of them, in (0, 1]."""
        return [(path, math.exp(s)) for path, s in zip(self.samples.paths, self.samples.scores())]

    def reward(self, arch: Any, accuracy: float) -> tuple[float, dict[str, float]]:
        """The estimator's rank stands in for the accuracy and is the reward itself (no cost term)."""
        return accuracy, {}

    def rescore_accuracy(self, space: Any, kept_ops: KeptOps, arch: Any, evaluate: Evaluate) -> tuple[float, str]:
        """100 x exp of `arch`'s ensemble score among the candidates (a new architecture is scored, not recorded)."""
        return 100 * self.samples.rank(arch), f"estimator {self.samples.label}"

    def stage_entries(self, space: Any, kept_ops: KeptOps, summary: dict[str, float]) -> dict[str, Any]:
        """The estimator, the candidates scored (estimator_evaluations), the draws, and the best candidate."""
        best = self._best()
        return {"estimator": self.samples.label, "estimator_evaluations": len(self.samples), "draws": self.draws,
                "best_candidate": None if best is None else self.samples.keys[best]}

    def get_extra_state(self) -> dict[str, Any]:
        return {**self.samples.state(), "draws": self.draws}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.samples.load_state(state)
        self.draws = state["draws"]
