"""The DARTS architect: architecture logits learned by gradient descent on the validation loss.

First order: alpha <- Adam(grad_alpha L_val(w, alpha)).
Second order (Liu et al. 2019, eq. 7-8): with the virtual step
w' = w - lr * (momentum * buf + grad_w L_train(w) + wd * w),
grad = grad_alpha L_val(w', alpha) - lr * [grad_alpha L_train(w+) - grad_alpha L_train(w-)] / (2R),
where w+- = w +- R * grad_w' L_val(w', alpha) and R = 0.01 / ||grad_w' L_val||.
The train passes at w, w+ and w- draw the same skip-dropout masks (one replayed RNG state): with
masks of their own the difference quotient would divide mask noise by 2R.
The gradient of the logits is clipped to norm `grad_clip` before Adam's step, as P-DARTS does.
The second-order step runs in float32 with autocast off whatever `run.amp` is: its finite difference would divide
bf16 rounding noise by 2R.
Under torchrun every gradient is averaged over the ranks' shards before it is used (the logits' gradient, and
for the second order also the weight gradients of the virtual step and of the finite difference), so N ranks
compute the one-process gradient of the global batch and take the same Adam step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from controllers.base import ArchStepContext, Controller, StageContext
from controllers.edge_weights import EdgeNodes, edge_nodes
from nas.core.distributed import all_mean
from nas.core.errors import UserError


@dataclass
class GradientConfig:
    """The `gradient:` section of a search config (P-DARTS defaults)."""

    order: int = 1
    lr: float = 6e-4
    betas: tuple[float, float] = (0.5, 0.999)
    weight_decay: float = 1e-3
    grad_clip: float = 5.0  # max norm of the logits' gradient; 0 disables

    def validate(self) -> None:
        if self.order not in (1, 2):
            raise UserError(f"gradient.order must be 1 or 2, got {self.order}")
        if self.lr <= 0:
            raise UserError(f"gradient.lr must be positive, got {self.lr}")
        if self.grad_clip < 0:
            raise UserError(f"gradient.grad_clip must be >= 0 (0 disables it), got {self.grad_clip}")
        if any(not 0.0 <= beta < 1.0 for beta in self.betas):
            raise UserError(f"gradient.betas must be two values in [0, 1), got {list(self.betas)}")
        if not self.weight_decay >= 0:
            raise UserError(f"gradient.weight_decay must be >= 0, got {self.weight_decay}")


FD_RADIUS = 0.01  # R = FD_RADIUS / ||grad_w' L_val|| in the finite-difference Hessian-vector product

RngState = tuple[torch.Tensor, torch.Tensor | None]


def _rng_state(device: torch.device) -> RngState:
    """The CPU RNG state and, off the CPU, that device's: together they fix the dropout masks drawn next."""
    on_device = torch.get_device_module(device).get_rng_state(device) if device.type != "cpu" else None
    return torch.get_rng_state(), on_device


def _set_rng_state(state: RngState, device: torch.device) -> None:
    cpu, on_device = state
    torch.set_rng_state(cpu)
    if on_device is not None:
        torch.get_device_module(device).set_rng_state(on_device, device)


class GradientController(Controller):
    """Softmax-relaxed architecture weights trained by Adam on validation batches."""

    name = "gradient"
    config_sections = {"gradient": GradientConfig}
    text_tags = {"stage{s}/gradient/edge_weights": "PC-DARTS edge weights at the end of the stage (softmax over "
                                                   "each node's input edges), with model.edge_norm"}

    def __init__(self, shapes: dict[str, tuple[int, int]], cfg: GradientConfig, edges: EdgeNodes | None = None):
        """`edges`: the node layout for PC-DARTS edge logits (controllers/edge_weights.py), learned with the alphas."""
        super().__init__(shapes, edge_nodes=edges)
        self.cfg = cfg
        self.optimizer = torch.optim.Adam(self.arch_parameters(), lr=cfg.lr, betas=cfg.betas,
                                          weight_decay=cfg.weight_decay)

    @classmethod
    def validate_config(cls, sections: dict[str, Any], num_stages: int) -> None:
        sections["gradient"].validate()

    @classmethod
    def from_config(cls, ctx: StageContext) -> GradientController:
        return cls(cls.shapes(ctx.kept_ops), ctx.sections["gradient"], edge_nodes(ctx.space, ctx.kept_ops))

    def mixture_weights(self) -> dict[str, torch.Tensor]:
        """Softmax of the logits, differentiable with respect to them."""
        return {group: torch.softmax(alpha, dim=-1) for group, alpha in self.alphas.items()}

    def weight_forward_kwargs(self) -> dict[str, Any]:
        return {"weights": self.probs(), **self.edge_kwargs()}

    def eval_forward_kwargs(self) -> dict[str, Any]:
        return {"weights": self.probs(), **self.edge_kwargs()}

    def _alpha_grads(self, ctx: ArchStepContext, batch, params: dict[str, torch.Tensor] | None = None,
                     wrt_params: bool = False) -> tuple[torch.Tensor, ...]:
        """Gradients of the loss on `batch` with respect to the logits (and the weights `params`)."""
        x, y = batch
        kwargs = {"weights": self.mixture_weights(), **self.edge_kwargs(differentiable=True)}
        logits = ctx.model(x, **kwargs) if params is None else functional_call(ctx.model, params, (x,), kwargs)
        loss = ctx.criterion(logits, y)
        inputs = self.arch_parameters() + (list(params.values()) if wrt_params else [])
        return torch.autograd.grad(loss, inputs, allow_unused=True)

    def _unrolled_grads(self, ctx: ArchStepContext) -> list[torch.Tensor]:
        model, opt = ctx.model, ctx.w_optimizer
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        weights = [p for n, p in model.named_parameters() if p.requires_grad]
        group = opt.param_groups[0]
        momentum, wd = group.get("momentum", 0.0), group.get("weight_decay", 0.0)
        x, y = ctx.train_batch
        device = x.device
        masks = _rng_state(device)  # the train passes at w, w+ and w- all draw these dropout masks
        train_grads = torch.autograd.grad(ctx.criterion(model(x, **self.weight_forward_kwargs()), y), weights,
                                          allow_unused=True)
        train_grads = all_mean([g if g is not None else torch.zeros_like(w) for g, w in zip(train_grads, weights)])
        virtual = {}
        for name, w, g in zip(names, weights, train_grads):
            step = g + wd * w.detach()
            buf = opt.state.get(w, {}).get("momentum_buffer")
            if buf is not None:
                step = step + momentum * buf
            virtual[name] = (w.detach() - ctx.lr * step).requires_grad_(True)
        n_alpha = len(self.arch_parameters())
        grads = self._alpha_grads(ctx, ctx.val_batch, virtual, wrt_params=True)
        d_alpha, d_w = grads[:n_alpha], grads[n_alpha:]
        d_w = all_mean([g if g is not None else torch.zeros_like(w) for g, w in zip(d_w, weights)])
        radius = FD_RADIUS / torch.cat([g.flatten() for g in d_w]).norm().clamp_min(1e-12)
        after = _rng_state(device)  # where the RNG continues, so the sequence does not depend on the replays
        with torch.no_grad():
            for w, g in zip(weights, d_w):
                w.add_(g, alpha=radius)
        _set_rng_state(masks, device)
        plus = self._alpha_grads(ctx, ctx.train_batch)
        with torch.no_grad():
            for w, g in zip(weights, d_w):
                w.sub_(g, alpha=2 * radius)
        _set_rng_state(masks, device)
        minus = self._alpha_grads(ctx, ctx.train_batch)
        with torch.no_grad():
            for w, g in zip(weights, d_w):
                w.add_(g, alpha=radius)
        _set_rng_state(after, device)
        return [da - ctx.lr * (p - m) / (2 * radius) for da, p, m in zip(d_alpha, plus, minus)]

    def arch_step(self, ctx: ArchStepContext) -> dict[str, float]:
        self.optimizer.zero_grad(set_to_none=True)
        if self.cfg.order == 2:  # exact under any autocast: the finite difference divides by 2R ~ 1e-2/||grad||
            with torch.autocast(ctx.val_batch[0].device.type, enabled=False):
                grads = self._unrolled_grads(ctx)
        else:
            grads = self._alpha_grads(ctx, ctx.val_batch)
        for alpha, grad in zip(self.arch_parameters(), all_mean(grads)):
            alpha.grad = grad
        if self.cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.arch_parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        entropy = sum(float(-(p * p.clamp_min(1e-12).log()).sum(-1).mean()) for p in self.probs().values())
        return {"arch/entropy": entropy / len(self.alphas)}

    def get_extra_state(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
