"""Progressive pruning by a training-free estimator (TE-NAS's manner in P-DARTS's stages): no weight is trained.

Each stage draws architectures uniformly over its kept ops and scores each at initialisation
(controllers/estimator_samples.py). The network "with op o removed from edge e" is read as the kept ops without o
on e, and its estimator value as the mean ensemble score of the architectures over those ops; the importance of o
on e is how much removing it lowers that value:

    importance(e, o) = mean(over the kept ops) - mean(over the kept ops without o on e),

both means taken under an additive model (a value per edge and op) fitted to the draws' scores by least squares,
which takes out the other edges' variance that plain means over the draws would carry. The score fitted is a
draw's rank fraction among the stage's draws by the ensemble score (in (0, 1], spread evenly), so neither an
outlier nor the ensemble's log ranks, which stretch the bottom, dominate the fit.

The logits are set to these importances, so the stage's end drops on every edge the ops whose removal changes the
estimator least (`stages.keep`, the space's usual pruning) and the last stage derives the most important op.
An op no draw ran on an edge ranks below every one that ran.

Why draws rather than the supernet mixture: the estimators were validated on single architectures' eval-scale
networks (docs/estimators.md); a mixture with a removed op's weight at zero keeps that op's parameters, so params
(and FLOPs) cannot see the removal, and an NB201 supernet cannot drop one op from one edge; and one set of draws
scores every (edge, op) at once, at a cost that does not grow with the number of edges and ops.

Epochs: every epoch of a stage (warm-up included) is a policy epoch of architecture steps (one per batch of the
architecture half) without weight training; each step scores `per_step` draws until the stage's `samples` are
scored, after which steps do nothing. A stage with fewer steps than samples / per_step scores fewer.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from controllers.base import ArchStepContext, StageContext
from controllers.estimator_samples import EstimatorSearchConfig, ScoredSamples, TrainingFreeController, stage_samples
from nas.core.arch_types import KeptOps, OpIndices
from nas.core.errors import UserError

RIDGE = 1e-3  # the least-squares fit's ridge, so ops drawn together (or never) leave it solvable


@dataclass
class EstimatorPruningConfig(EstimatorSearchConfig):
    """The ``estimator_pruning:`` section."""

    samples: list[int] = field(default_factory=lambda: [64, 64, 64])  # draws scored per stage

    def validate(self, num_stages: int) -> None:
        self.check("estimator_pruning")
        if len(self.samples) != num_stages:
            raise UserError(f"estimator_pruning.samples has {len(self.samples)} values but the search has "
                            f"{num_stages} stages; give one per stage")
        if any(not isinstance(n, int) or isinstance(n, bool) or n < 1 for n in self.samples):
            raise UserError(f"estimator_pruning.samples must be positive integers, got {self.samples}")


def importance(paths: list[OpIndices], scores: list[float], shapes: dict[str, tuple[int, int]]
               ) -> dict[str, torch.Tensor]:
    """Per group [edges, ops]: the fall of the mean score over the kept ops when the op is removed from the edge,
    mean(all) - mean(without it), both under an additive model fitted to the draws by least squares (score = sum
    over edges of a value per edge and op): the mean of an edge's op values over the ops kept, with or without
    this one. An op no draw ran ranks below every drawn op of its edge, the edge's only drawn op above."""
    offsets, total = {}, 0
    for group, (edges, ops) in shapes.items():
        offsets[group], total = total, total + edges * ops
    design = torch.zeros(len(paths), total, dtype=torch.float64)
    for i, path in enumerate(paths):
        for group, (_, ops) in shapes.items():
            for e, k in enumerate(path[group].tolist()):
                if k >= 0:
                    design[i, offsets[group] + e * ops + k] = 1.0
    y = torch.tensor(scores, dtype=torch.float64)
    gram = design.T @ design + RIDGE * torch.eye(total, dtype=torch.float64)
    values = torch.linalg.solve(gram, design.T @ (y - y.mean()))
    drawn = design.sum(0) > 0
    out = {}
    for group, (edges, ops) in shapes.items():
        block = values[offsets[group]:offsets[group] + edges * ops].view(edges, ops)
        seen = drawn[offsets[group]:offsets[group] + edges * ops].view(edges, ops)
        table = torch.empty(edges, ops, dtype=torch.float64)
        for e in range(edges):
            kept = block[e][seen[e]]
            for k in range(ops):
                if seen[e, k] and len(kept) > 1:
                    table[e, k] = kept.mean() - (kept.sum() - block[e, k]) / (len(kept) - 1)
            ranked = table[e][seen[e]] if len(kept) > 1 else torch.zeros(1, dtype=torch.float64)
            table[e][~seen[e]] = ranked.min() - 1
            if len(kept) == 1:
                table[e][seen[e]] = 1.0
        out[group] = table.float()
    return out


class EstimatorPruningController(TrainingFreeController):
    """P-DARTS stages whose op dropping ranks ops by their importance to a training-free estimator (module doc)."""

    name = "estimator_pruning"
    config_sections = {"estimator_pruning": EstimatorPruningConfig}
    tags = {"stage{s}/estimator_pruning/samples": "draws scored so far in the stage",
            "stage{s}/estimator_pruning/distinct": "distinct architectures scored so far in the stage"}

    def __init__(self, shapes: dict[str, tuple[int, int]], cfg: EstimatorPruningConfig, budget: int,
                 samples: ScoredSamples):
        super().__init__(shapes, init_std=0.0)
        self.cfg, self.budget, self.samples = cfg, budget, samples

    @classmethod
    def from_config(cls, ctx: StageContext) -> EstimatorPruningController:
        cfg = ctx.sections["estimator_pruning"]
        samples = stage_samples(ctx, "estimator_pruning")
        return cls(cls.shapes(ctx.kept_ops), cfg, cfg.samples[ctx.stage], samples)

    def _derived_path(self) -> OpIndices:
        space, kept = self.samples.space, self.samples.kept_ops
        return space.architecture_path(self.architecture(space, kept), kept)

    def weight_forward_kwargs(self) -> dict[str, Any]:
        return {"path": self._derived_path()}

    def eval_forward_kwargs(self) -> dict[str, Any]:
        """The path of the architecture the importances derive (what the engine's per-epoch accuracy measures)."""
        return {"path": self._derived_path()}

    def arch_step(self, ctx: ArchStepContext) -> dict[str, float]:
        """Score up to `per_step` new draws on ctx.val_batch (the first one the stage scores on) and set the logits
        to the ops' importances."""
        if len(self.samples) >= self.budget:
            return {}
        for _ in range(min(self.cfg.per_step, self.budget - len(self.samples))):
            self.samples.add(self.samples.draw(), ctx.val_batch)
        self._set_importance()
        return {"estimator_pruning/samples": float(len(self.samples)),
                "estimator_pruning/distinct": float(self.samples.distinct())}

    def _set_importance(self) -> None:
        shapes = {group: (alpha.shape[0], alpha.shape[1]) for group, alpha in self.alphas.items()}
        scores = torch.tensor(self.samples.scores())
        fractions = (scores[None, :] <= scores[:, None]).double().mean(1)  # each draw's rank among the draws
        table = importance(self.samples.paths, fractions.tolist(), shapes)
        with torch.no_grad():
            for group, alpha in self.alphas.items():
                alpha.copy_(table[group].to(alpha.device))

    def stage_entries(self, space: Any, kept_ops: KeptOps, summary: dict[str, float]) -> dict[str, Any]:
        """The estimator, the draws scored, the distinct architectures among them (estimator_evaluations), and per
        group, edge and kept op its importance."""
        return {"estimator": self.samples.label, "samples": len(self.samples),
                "estimator_evaluations": self.samples.distinct(),
                "importance": {g: [[round(v, 6) for v in row] for row in a.detach().cpu().tolist()]
                               for g, a in self.alphas.items()}}

    def get_extra_state(self) -> dict[str, Any]:
        return self.samples.state()

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.samples.load_state(state)
