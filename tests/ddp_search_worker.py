"""torchrun entry of tests/test_ddp_search.py: search.py's main with two probes, set by environment variables.

DDP_TRACE=DIR  every rank writes DIR/rank{r}.pt: its architecture logits after every architecture step and the
               forward arguments (the path) of every weight step
DDP_KILL=R:S   rank R kills itself with SIGKILL as it starts weight step S (counted over the whole search)
DDP_NAN=R:S    rank R's batch of weight step S is all NaN (its loss alone diverges)
"""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import search  # noqa: E402
from nas.engine import search_loop as loop  # noqa: E402

RANK = int(os.environ.get("RANK", "0"))
TRACE: dict[str, list[Any]] = {"logits": [], "paths": []}
_arch_step, _weight_step = loop.StageRunner._arch_step, loop.StageRunner._weight_step


def arch_step(self: loop.StageRunner, train_batch: Any, step: int) -> dict[str, float]:
    metrics = _arch_step(self, train_batch, step)
    TRACE["logits"].append(torch.cat([p.detach().flatten() for p in self.controller.parameters()]))
    return metrics


def weight_step(self: loop.StageRunner, x: torch.Tensor, y: torch.Tensor, forward_kwargs: dict[str, Any]):
    if os.environ.get("DDP_KILL") == f"{RANK}:{self.search.progress.global_step}":
        os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get("DDP_NAN") == f"{RANK}:{self.search.progress.global_step}":
        x = x * float("nan")
    TRACE["paths"].append(forward_kwargs.get("path"))
    return _weight_step(self, x, y, forward_kwargs)


if __name__ == "__main__":
    loop.StageRunner._arch_step, loop.StageRunner._weight_step = arch_step, weight_step
    code = search.main(sys.argv[1:])
    if os.environ.get("DDP_TRACE"):
        torch.save(TRACE, Path(os.environ["DDP_TRACE"]) / f"rank{RANK}.pt")
    sys.exit(code)
