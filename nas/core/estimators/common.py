"""What the estimators share: the logits of a forward, the weighted layers, cross-entropy on a batch."""
from __future__ import annotations

from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

Batch = tuple[torch.Tensor, torch.Tensor]  # (images [N, C, H, W], labels [N])
WEIGHTED = (nn.Conv2d, nn.Linear)  # the layers whose weights the saliency estimators sum over


def logits(output: torch.Tensor | tuple) -> torch.Tensor:
    """The logits of a forward's output: the output itself, or the first item of a tuple (logits, auxiliary)."""
    return output[0] if isinstance(output, (tuple, list)) else output


def weighted_layers(model: nn.Module) -> list[nn.Module]:
    """Every Conv2d and Linear of `model`, in module order."""
    return [m for m in model.modules() if isinstance(m, WEIGHTED)]


def layer_weights(model: nn.Module) -> list[torch.Tensor]:
    """The weight tensors of :func:`weighted_layers`."""
    return [m.weight for m in weighted_layers(model)]


def first_batch(batches: Sequence[Batch], model: nn.Module) -> Batch:
    """The first batch, on the model's device."""
    if not batches:
        raise ValueError("an estimator needs at least one batch")
    device = next(model.parameters()).device
    x, y = batches[0]
    return x.to(device), y.to(device)


def loss_on(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the model's logits on one batch."""
    return F.cross_entropy(logits(model(x)), y)


def each_batch(batches: Sequence[Batch], model: nn.Module) -> Iterator[Batch]:
    """Every batch, on the model's device."""
    device = next(model.parameters()).device
    for x, y in batches:
        yield x.to(device), y.to(device)
