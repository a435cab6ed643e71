"""BatchNorm on batch statistics for scoring supernet paths."""
from __future__ import annotations

import contextlib
from typing import Iterator

from torch import nn


@contextlib.contextmanager
def batch_stat_eval(model: nn.Module) -> Iterator[None]:
    """Evaluate a supernet path: no dropout, BatchNorm on batch statistics, running statistics untouched."""
    was_training = model.training
    model.eval()
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.train()
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in zip(norms, saved):
            m.momentum = momentum
        model.train(was_training)
