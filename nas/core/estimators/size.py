"""The size baselines: parameters and FLOPs of the network."""
from __future__ import annotations

from typing import Sequence

from torch import nn

from nas.core.estimators.common import Batch, first_batch
from nas.core.metrics import flops_millions


def params(model: nn.Module, batches: Sequence[Batch]) -> float:
    """The number of trainable parameters (the baseline of Abdelfattah et al. 2021 and NAS-Bench-Suite-Zero)."""
    return float(sum(p.numel() for p in model.parameters() if p.requires_grad))


def flops(model: nn.Module, batches: Sequence[Batch]) -> float:
    """thop's multiply-accumulates (millions) of one forward of a single image of the batch's shape (the FLOPs
    baseline of Abdelfattah et al. 2021)."""
    x, _ = first_batch(batches, model)
    return flops_millions(model, (1, *x.shape[1:]))
