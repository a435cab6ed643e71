"""The interface every architecture controller shares.

A controller owns architecture logits `alphas[group]` of shape [E, K] (E edges or choice blocks
of a group such as "normal"/"reduce", K ops kept on every edge of that group). The search loop
asks it how the supernet should run during weight steps and during validation, and calls
`arch_step` every `update_interval` weight steps once the warm-up is over.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from nas.arch_types import KeptOps

Batch = tuple[torch.Tensor, torch.Tensor]
Path = dict[str, torch.Tensor]  # group -> LongTensor[E]: index of the op run on each edge


@dataclass
class ArchStepContext:
    """What a controller may use for one architecture update."""

    model: nn.Module
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    train_batch: Batch
    val_batch: Batch
    w_optimizer: torch.optim.Optimizer
    lr: float
    stage: int
    step: int
    reward_fn: Callable[[Path, float], Any] | None = None  # (path, accuracy) -> reward details


class Controller(nn.Module, ABC):
    """Per-group architecture logits plus the rule that updates them."""

    update_interval: int = 1

    def __init__(self, shapes: dict[str, tuple[int, int]], init_std: float = 1e-3):
        super().__init__()
        self.alphas = nn.ParameterDict(
            {group: nn.Parameter(init_std * torch.randn(edges, ops)) for group, (edges, ops) in shapes.items()}
        )

    def probs(self) -> dict[str, torch.Tensor]:
        """Softmax of every group's logits over its kept ops, detached."""
        return {group: torch.softmax(alpha.detach(), dim=-1) for group, alpha in self.alphas.items()}

    def argmax_path(self) -> Path:
        """The most probable op on every edge."""
        return {group: alpha.detach().argmax(dim=-1) for group, alpha in self.alphas.items()}

    def architecture(self, space: Any, kept_ops: KeptOps, max_skip: int | None = None) -> Any:
        """The architecture this controller outputs now: the space's derivation from the op probabilities."""
        return space.derive(self.probs(), kept_ops, max_skip)

    @abstractmethod
    def weight_forward_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for the supernet forward in a weight step (`weights=` or `path=`)."""

    @abstractmethod
    def eval_forward_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for the supernet forward when measuring validation accuracy."""

    @abstractmethod
    def arch_step(self, ctx: ArchStepContext) -> dict[str, float]:
        """Update the architecture logits once; return scalars for the monitor."""
