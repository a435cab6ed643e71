"""torchrun support shared by the search and the eval trainer: which rank this process is, the process group,
and the few collectives the engine and the controllers need. Every function is a no-op for a single process,
so callers need no branch on the world size.

Collectives run on CPU tensors under gloo and on the current CUDA device under nccl.
"""
from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
import torch.distributed as tdist
from torch import nn

from nas.core.errors import UserError


@dataclass(frozen=True)
class DistInfo:
    """This process's place in a torchrun job (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_info() -> DistInfo:
    """Rank, world size and local rank from the torchrun environment."""
    def read(name: str, default: int) -> int:
        try:
            return int(os.environ.get(name, default))
        except ValueError:
            raise UserError(f"environment variable {name}={os.environ[name]!r} must be an integer") from None

    info = DistInfo(read("RANK", 0), read("WORLD_SIZE", 1), read("LOCAL_RANK", 0))
    if not 0 <= info.rank < info.world_size:
        raise UserError(f"RANK={info.rank} is outside WORLD_SIZE={info.world_size}; start the job with torchrun")
    return info


def world() -> DistInfo:
    """This process's place in the process group it has joined (rank 0 of 1 outside one)."""
    if not (tdist.is_available() and tdist.is_initialized()):
        return DistInfo()
    return DistInfo(tdist.get_rank(), tdist.get_world_size(), dist_info().local_rank)


def backend_for(device: torch.device) -> str:
    """The process group backend for a rank on `device`: nccl on CUDA, gloo on the CPU."""
    return "nccl" if device.type == "cuda" else "gloo"


@contextlib.contextmanager
def process_group(info: DistInfo, device: torch.device) -> Iterator[None]:
    """Join the torchrun job for the duration of the block (backend_for(device); under nccl the group is bound to
    this rank's GPU); alone, do nothing."""
    if info.world_size == 1:
        yield
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
        tdist.init_process_group(backend_for(device), device_id=device)
    else:
        tdist.init_process_group(backend_for(device))
    try:
        yield
    finally:
        tdist.destroy_process_group()


def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if tdist.get_backend() == "nccl" else torch.device("cpu")


def all_sum(values: Sequence[float]) -> list[float]:
    """Each value summed over the ranks (float64)."""
    if world().world_size == 1:
        return [float(v) for v in values]
    totals = torch.tensor(values, dtype=torch.float64, device=_comm_device())
    tdist.all_reduce(totals)
    return totals.tolist()


def barrier() -> None:
    """Wait until every rank gets here."""
    all_sum([0.0])


def all_mean(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The mean of each tensor over the ranks, from one all-reduce of their concatenation, on their own devices.

    The reduction runs in the widest floating dtype among the tensors (at least float32), so float64 values keep
    their precision. Every rank receives the same bits (the reduced buffer is computed once per chunk and copied to
    all ranks).
    """
    n = world().world_size
    if n == 1:
        return list(tensors)
    dtype = functools.reduce(torch.promote_types, (t.dtype for t in tensors), torch.float32)
    flat = torch.cat([t.detach().reshape(-1).to(_comm_device(), dtype) for t in tensors])
    tdist.all_reduce(flat)
    flat /= n
    out, start = [], 0
    for t in tensors:
        out.append(flat[start:start + t.numel()].view(t.shape).to(t.device, t.dtype))
        start += t.numel()
    return out


def average_gradients(params: Sequence[nn.Parameter], loss: torch.Tensor) -> list[int]:
    """Replace every parameter's gradient by its mean over the ranks, in one all-reduce; returns the ranks whose
    `loss` (the one these gradients came from) is not finite, the same list on every rank, so that all of them stop
    together when one diverges.

    A rank that did not run a parameter (an op off its sampled path) contributes zeros; a parameter that no rank
    ran keeps `grad=None`, so SGD leaves it, its momentum and its weight decay alone, as in one process.
    """
    info = world()
    finite = bool(torch.isfinite(loss.detach()).all())
    if info.world_size == 1:
        return [] if finite else [0]
    flags = torch.zeros(len(params) + info.world_size, dtype=torch.float32)
    flags[:len(params)] = torch.tensor([p.grad is not None for p in params], dtype=torch.float32)
    flags[len(params) + info.rank] = 0.0 if finite else 1.0
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    *grads, flags = all_mean([*grads, flags.to(params[0].device)])
    flags = flags.tolist()
    for p, grad, anywhere in zip(params, grads, flags):
        p.grad = grad if anywhere > 0 else None
    return [rank for rank, bad in enumerate(flags[len(params):]) if bad > 0]


def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's `tensor` (same shape everywhere) concatenated along dim 0 in rank order."""
    n = world().world_size
    if n == 1:
        return tensor
    local = tensor.detach().to(_comm_device())
    parts = [torch.empty_like(local) for _ in range(n)]
    tdist.all_gather(parts, local)
    return torch.cat(parts).to(tensor.device)


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's picklable `obj`, in rank order."""
    n = world().world_size
    if n == 1:
        return [obj]
    objects: list[Any] = [None] * n
    tdist.all_gather_object(objects, obj)
    return objects


def broadcast_object(obj: Any) -> Any:
    """Rank 0's picklable `obj` on every rank."""
    if world().world_size == 1:
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_buffers(module: nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank, one broadcast per dtype (a supernet has
    thousands of them, and every collective costs a round trip)."""
    if world().world_size == 1:
        return
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for buffer in module.buffers():
        by_dtype.setdefault(buffer.dtype, []).append(buffer)
    for buffers in by_dtype.values():
        flat = torch.cat([b.reshape(-1).to(_comm_device()) for b in buffers])
        tdist.broadcast(flat, 0)
        start = 0
        for b in buffers:
            b.copy_(flat[start:start + b.numel()].view(b.shape))
            start += b.numel()
