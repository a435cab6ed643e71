"""The one place that turns `run.device` into a torch device."""
from __future__ import annotations

import torch

from nas.core.errors import UserError


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """cuda:LOCAL_RANK for `cuda`, or for `auto` when CUDA is visible; the CPU otherwise."""
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("run.device=cuda but no CUDA device is visible; use run.device=cpu or auto")
    if name == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    if local_rank >= torch.cuda.device_count():
        raise UserError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA devices; "
                      "start at most one process per GPU")
    return torch.device("cuda", local_rank)
