"""Every estimator by name, and scoring a network with several of them (timed in CPU seconds)."""
from __future__ import annotations

import math
import time
from typing import Callable, Sequence

from torch import nn

from nas.core.errors import UserError
from nas.core.estimators import activation, gradient, size
from nas.core.estimators.common import Batch
from nas.core.registry import lookup

Estimator = Callable[[nn.Module, Sequence[Batch]], float]

ESTIMATORS: dict[str, Estimator] = {
    "nwot": activation.nwot,
    "synflow": gradient.synflow,
    "snip": gradient.snip,
    "grasp": gradient.grasp,
    "fisher": gradient.fisher,
    "grad_norm": gradient.grad_norm,
    "jacob_cov": activation.jacob_cov,
    "zen": activation.zen,
    "zico": gradient.zico,
    "params": size.params,
    "flops": size.flops,
}


def estimator(name: str) -> Estimator:
    """The estimator registered as `name`; UserError listing the known ones otherwise."""
    return lookup(ESTIMATORS, "estimator", name)


def parse_names(text: str) -> list[str]:
    """Comma-separated estimator names ("all": every one), checked; UserError on an unknown or empty list."""
    names = list(ESTIMATORS) if text.strip() == "all" else [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise UserError(f"no estimator named in {text!r}; known estimators: {', '.join(ESTIMATORS)}")
    for name in names:
        estimator(name)
    return list(dict.fromkeys(names))


def score(name: str, model: nn.Module, batches: Sequence[Batch]) -> float:
    """The estimator's score of `model` (put in train mode) on `batches`; non-finite scores come back as -inf."""
    model.train()
    value = float(estimator(name)(model, batches))
    return value if math.isfinite(value) else -math.inf


def score_all(names: Sequence[str], model: nn.Module, batches: Sequence[Batch]) -> dict[str, tuple[float, float]]:
    """{name: (score, CPU seconds)} of each estimator in turn on the same network."""
    out: dict[str, tuple[float, float]] = {}
    for name in names:
        start = time.process_time()
        value = score(name, model, batches)
        out[name] = (value, time.process_time() - start)
    return out
