"""Random search with parameter sharing (RSPS, Li & Talwalkar 2019): train the supernet on uniformly sampled paths,
then score random candidates one-shot on the validation half and output the best.

Weight steps run one path drawn uniformly over every edge's kept ops (no architecture steps inside the epochs).
After the weight epochs come `rsps.epochs` policy epochs over the architecture half with the supernet frozen: step j
scores candidate j mod `rsps.candidates` (drawn uniformly the first time it is needed) on that validation batch,
BatchNorm on the batch's statistics, as the NAS-Bench-201 reference scores each candidate on one batch. A
candidate's score is its mean top-1 over the batches it got; with fewer steps than candidates only the first ones
are scored. The output is the best-scored candidate: `probs()` is its one-hot, so `derive` and op dropping keep it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from controllers.base import ArchStepContext, Controller, StageContext
from nas.core.arch_types import OpIndices
from nas.core.batchnorm import batch_stat_eval
from nas.core.errors import UserError


@dataclass
class RspsConfig:
    """The `rsps:` section of a search config."""

    candidates: int = 100  # random candidates scored after the weight epochs
    epochs: int = 1  # policy epochs over the architecture half that score them

    def validate(self, num_stages: int) -> None:
        for key in ("candidates", "epochs"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UserError(f"rsps.{key} must be a positive integer, got {value!r}")


class RspsController(Controller):
    """Uniform single-path weight training, then the best of random candidates on validation batches."""

    name = "rsps"
    config_sections = {"rsps": RspsConfig}
    tags = {
        "stage{s}/rsps/candidate_acc": "validation-batch top-1 (0..1) of the candidate scored in one policy step",
        "stage{s}/rsps/best_acc": "mean validation-batch top-1 (0..1) of the best candidate so far",
        "stage{s}/rsps/scored": "candidates scored so far",
    }

    def __init__(self, shapes: dict[str, tuple[int, int]], cfg: RspsConfig, generator: torch.Generator):
        """`generator` (CPU) draws every training path and candidate; the search checkpoints its state."""
        super().__init__(shapes)
        self.cfg, self.generator = cfg, generator
        edges = sum(e for e, _ in shapes.values())
        self.register_buffer("candidate_ops", torch.zeros(cfg.candidates, edges, dtype=torch.long))  # drawn: steps
        self.register_buffer("correct", torch.zeros(cfg.candidates, dtype=torch.float64))
        self.register_buffer("batches", torch.zeros(cfg.candidates, dtype=torch.long))
        self.steps = 0

    @classmethod
    def from_config(cls, ctx: StageContext) -> RspsController:
        return cls(cls.shapes(ctx.kept_ops), ctx.sections["rsps"], ctx.generator)

    def _uniform(self) -> OpIndices:
        return {g: torch.randint(a.shape[1], (a.shape[0],), generator=self.generator) for g, a in self.alphas.items()}

    def _path(self, row: torch.Tensor) -> OpIndices:
        """A candidate's path from its row of op indices (groups concatenated in logit order)."""
        path, start = {}, 0
        for group, alpha in self.alphas.items():
            path[group] = row[start:start + alpha.shape[0]].cpu()
            start += alpha.shape[0]
        return path

    def _best(self) -> int | None:
        scored = self.batches > 0
        if not scored.any():
            return None
        mean = torch.where(scored, self.correct / self.batches.clamp_min(1), torch.full_like(self.correct, -1.0))
        return int(mean.argmax())

    def probs(self) -> dict[str, torch.Tensor]:
        """One-hot on the best candidate so far; uniform before any is scored."""
        best = self._best()
        if best is None:
            return {g: torch.full_like(a.detach(), 1.0 / a.shape[1]) for g, a in self.alphas.items()}
        path = self._path(self.candidate_ops[best])
        return {g: F.one_hot(path[g], a.shape[1]).to(a.dtype) for g, a in self.alphas.items()}

    def arch_active(self, epoch: int, warmup: int) -> bool:
        return False  # candidates are scored in the policy epochs, on the trained supernet

    def extra_epochs(self, epochs: int, warmup: int) -> int:
        return self.cfg.epochs

    def weight_forward_kwargs(self) -> dict[str, Any]:
        return {"path": self._uniform()}

    def eval_forward_kwargs(self) -> dict[str, Any]:
        """The best candidate once one is scored; before, a fresh uniform path (the supernet on a random cell)."""
        best = self._best()
        return {"path": self._uniform() if best is None else self._path(self.candidate_ops[best])}

    def arch_step(self, ctx: ArchStepContext) -> dict[str, float]:
        index = self.steps % self.cfg.candidates
        if self.steps < self.cfg.candidates:  # its first batch: draw it
            self.candidate_ops[index] = torch.cat(list(self._uniform().values()))
        x, y = ctx.val_batch
        with batch_stat_eval(ctx.model), torch.no_grad():
            acc = (ctx.model(x, path=self._path(self.candidate_ops[index])).argmax(dim=-1) == y).float().mean().item()
        self.correct[index] += acc
        self.batches[index] += 1
        self.steps += 1
        best = self._best()
        assert best is not None
        return {"rsps/candidate_acc": acc, "rsps/best_acc": float(self.correct[best] / self.batches[best]),
                "rsps/scored": float((self.batches > 0).sum())}

    def stage_entries(self, space: Any, kept_ops: Any, summary: dict[str, float]) -> dict[str, Any]:
        best = self._best()
        return {"rsps_scored": int((self.batches > 0).sum()),
                "rsps_best_acc": None if best is None else float(self.correct[best] / self.batches[best])}

    def get_extra_state(self) -> dict[str, Any]:
        return {"steps": self.steps}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.steps = state["steps"]
