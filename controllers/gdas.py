"""GDAS (Dong & Yang, CVPR 2019, "Searching for a Robust Neural Architecture in Four GPU Hours").

Per edge e, with logits a_e over its K kept ops and temperature tau, one Gumbel-softmax draw:

    g ~ Gumbel(0, 1)^K,  p = softmax((a_e + g) / tau),  k = argmax(a_e + g)  (Gumbel-max: k ~ softmax(a_e)),
    h = onehot(k) - p.detach() + p  (straight through: the value is one-hot, the gradient is p's).

The supernet runs op k alone on the edge and multiplies its output by h[k] (`path_scale`), so dL/dh[k] reaches
every logit of the edge through the softmax's Jacobian. Both halves of an iteration sample afresh, as the
reference does: the weight step runs a Gumbel-max path on the train batch (no scale: its value is 1 and the
weights need no path to the logits), the architecture step runs a scaled sample on the validation batch and
takes an Adam step on the logits. The reference implementation (D-X-Y/AutoDL-Projects) takes the weight step
before the architecture step; this engine takes the architecture step first, as it does for DARTS.

tau anneals linearly per epoch within each stage, from tau_max at the stage's first epoch to tau_min at its last
(the reference's schedule over its single search). Every P-DARTS stage builds fresh logits over its kept ops, so
each stage is a search of its own and starts hot again. tau is a function of the epoch alone (`on_epoch`), so a
resumed run has it back without any state. The index drawn does not depend on tau, only the gradient does.

Under torchrun every rank draws the noise of all N ranks from the shared generator (seeded alike, so it stays in
step everywhere) and keeps its own row: each rank trains and scores a different sampled architecture on its shard,
and the architecture gradients are averaged over the ranks before Adam's step, so the logits stay identical.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from controllers.base import ArchStepContext, Controller, Evaluate, StageContext
from controllers.edge_weights import EdgeNodes, edge_nodes
from nas.core.arch_types import OpIndices
from nas.core.distributed import all_mean, world
from nas.core.errors import UserError


@dataclass
class GdasConfig:
    """The `gdas:` section of a search config (the reference's defaults)."""

    tau_max: float = 10.0
    tau_min: float = 0.1
    lr: float = 3e-4
    betas: tuple[float, float] = (0.5, 0.999)
    weight_decay: float = 1e-3
    grad_clip: float = 0.0  # max norm of the logits' gradient; 0 disables it (the reference does not clip)

    def validate(self, num_stages: int) -> None:
        """Raise UserError naming the first bad field (the schedule is per stage, so `num_stages` sets nothing)."""
        if not 0 < self.tau_min <= self.tau_max:
            raise UserError(f"gdas.tau_min and gdas.tau_max must satisfy 0 < tau_min <= tau_max, got "
                            f"tau_min={self.tau_min}, tau_max={self.tau_max}")
        if not self.lr > 0:
            raise UserError(f"gdas.lr must be positive, got {self.lr}")
        if any(not 0.0 <= beta < 1.0 for beta in self.betas):
            raise UserError(f"gdas.betas must be two values in [0, 1), got {list(self.betas)}")
        if not self.weight_decay >= 0:
            raise UserError(f"gdas.weight_decay must be >= 0, got {self.weight_decay}")
        if not self.grad_clip >= 0:
            raise UserError(f"gdas.grad_clip must be >= 0 (0 disables it), got {self.grad_clip}")


def annealed_tau(epoch: int, epochs: int, tau_max: float, tau_min: float) -> float:
    """Linear from tau_max (epoch 0) to tau_min (epoch epochs - 1), both ends exact; tau_max for a 1-epoch stage."""
    t = epoch / max(epochs - 1, 1)
    return tau_max * (1 - t) + tau_min * t


def gumbel_noise(shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
    """Standard Gumbel noise on the CPU, finite everywhere: -log(-log(u)) with u kept inside (0, 1)."""
    u = torch.rand(shape, generator=generator).clamp_(min=torch.finfo(torch.float32).tiny)
    return -(-u.log()).log()


class GdasController(Controller):
    """Gumbel-softmax one-hot samples with a straight-through gradient, Adam on validation batches."""

    name = "gdas"
    config_sections = {"gdas": GdasConfig}
    tags = {
        "stage{s}/gdas/tau": "Gumbel-softmax temperature of the epoch (linear from gdas.tau_max to gdas.tau_min "
                             "within each stage)",
        "stage{s}/gdas/arch_loss": "validation loss of the sampled architecture in one architecture step",
        "stage{s}/gdas/arch_acc": "validation top-1 (0..1) of the sampled architecture in one architecture step",
    }
    text_tags = {"stage{s}/gdas/edge_weights": "PC-DARTS edge weights at the end of the stage (softmax over each "
                                               "node's input edges), with model.edge_norm"}

    def __init__(self, shapes: dict[str, tuple[int, int]], cfg: GdasConfig, generator: torch.Generator,
                 edges: EdgeNodes | None = None):
        """`generator` (CPU) draws every Gumbel sample; the search checkpoints its state. `edges`: the node layout
        for PC-DARTS edge logits (controllers/edge_weights.py), learned with the alphas."""
        super().__init__(shapes, edge_nodes=edges)
        self.cfg, self.generator = cfg, generator
        self.tau = cfg.tau_max
        self.optimizer = torch.optim.Adam(self.arch_parameters(), lr=cfg.lr, betas=tuple(cfg.betas),
                                          weight_decay=cfg.weight_decay)

    @classmethod
    def from_config(cls, ctx: StageContext) -> GdasController:
        return cls(cls.shapes(ctx.kept_ops), ctx.sections["gdas"], ctx.generator, edge_nodes(ctx.space, ctx.kept_ops))

    def on_epoch(self, epoch: int, epochs: int) -> None:
        self.tau = annealed_tau(epoch, epochs, self.cfg.tau_max, self.cfg.tau_min)

    def sample(self) -> tuple[OpIndices, dict[str, torch.Tensor]]:
        """One draw per edge: the op indices ([E] per group) and the straight-through weight h[k] of each drawn op
        ([E] per group, value 1, differentiable with respect to every logit of its edge); this rank's draw of the
        N drawn under torchrun."""
        path, scale = {}, {}
        dist = world()
        for group, alpha in self.alphas.items():
            noise = gumbel_noise(torch.Size((dist.world_size, *alpha.shape)), self.generator)[dist.rank]
            noisy = alpha + noise.to(alpha.device)
            probs = torch.softmax(noisy / self.tau, dim=-1)
            index = noisy.detach().argmax(dim=-1)
            hard = F.one_hot(index, alpha.shape[-1]).to(probs.dtype) - probs.detach() + probs
            path[group], scale[group] = index, hard.gather(1, index[:, None]).squeeze(1)
        return path, scale

    def weight_forward_kwargs(self) -> dict[str, Any]:
        with torch.no_grad():
            return {"path": self.sample()[0], **self.edge_kwargs()}

    def eval_forward_kwargs(self) -> dict[str, Any]:
        return {"path": self.argmax_path(), **self.edge_kwargs()}

    def epoch_scalars(self, evaluate: Evaluate, summary: dict[str, float]) -> dict[str, float]:
        return {**super().epoch_scalars(evaluate, summary), "gdas/tau": self.tau}

    def arch_step(self, ctx: ArchStepContext) -> dict[str, float]:
        path, scale = self.sample()
        x, y = ctx.val_batch
        logits = ctx.model(x, path=path, path_scale=scale, **self.edge_kwargs(differentiable=True))
        loss = ctx.criterion(logits, y)
        # materialize: when every sampled op into a node is `none`, the loss does not depend on the logits
        grads = torch.autograd.grad(loss, self.arch_parameters(), allow_unused=True, materialize_grads=True)
        accuracy = (logits.argmax(dim=-1) == y).float().mean()
        *grads, stats = all_mean([*grads, torch.stack([loss.detach(), accuracy])])  # over the ranks' samples
        for alpha, grad in zip(self.arch_parameters(), grads):
            alpha.grad = grad
        if self.cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.arch_parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        entropy = torch.stack([torch.distributions.Categorical(logits=a.detach()).entropy().mean()
                               for a in self.alphas.values()]).mean()
        return {"arch/entropy": entropy.item(), "gdas/arch_loss": stats[0].item(), "gdas/arch_acc": stats[1].item()}

    def get_extra_state(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
