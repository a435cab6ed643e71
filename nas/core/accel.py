"""The GPU-path switches of a `run:` section turned into torch settings: mixed precision (autocast, and a GradScaler
for float16), the memory layout, cudnn autotuning, and how the loaders hand batches to the device.

Every switch is a no-op where it cannot help (pinned memory off CUDA, cudnn on the CPU), so CPU runs need no branch.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

AMP_MODES = ("off", "bf16", "fp16")
_AMP_DTYPES: dict[str, torch.dtype | None] = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def amp_error(amp: str, device: str) -> str | None:
    """Why `run.amp` cannot run with `run.device` here (None: it can). float16 needs CUDA: its GradScaler and its
    range are CUDA's recipe, so on the CPU it is refused, not silently turned into something else."""
    if amp not in AMP_MODES:
        return f"run.amp {amp!r} is unknown; choose one of {', '.join(AMP_MODES)}"
    if amp == "fp16" and (device == "cpu" or not torch.cuda.is_available()):
        return ("run.amp=fp16 needs a CUDA device (float16 autocast with a GradScaler); on the CPU use run.amp=bf16 "
                "or off")
    return None


class Precision:
    """Autocast and loss scaling of one run on one device for `run.amp`: bf16 autocasts, fp16 autocasts and scales
    the loss with a GradScaler (whose state belongs in the run's checkpoints), off does neither."""

    def __init__(self, amp: str, device: torch.device):
        self.dtype = _AMP_DTYPES[amp]
        self.device_type = device.type
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype is torch.float16)

    @property
    def name(self) -> str:
        """fp32, bfloat16 or float16 (records and logs)."""
        return "fp32" if self.dtype is None else str(self.dtype).removeprefix("torch.")

    def autocast(self) -> torch.autocast:
        """The context of every forward pass that the scaler guards, and of no-grad scoring."""
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.dtype is not None)

    def arch_autocast(self) -> torch.autocast:
        """The context of an architecture step: bf16 autocast, or float32 under fp16, whose architecture gradients
        no GradScaler guards against underflow. (Second-order DARTS turns autocast off inside either way.)"""
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.dtype is torch.bfloat16)

    def backward(self, loss: torch.Tensor) -> None:
        """Backpropagate the loss, scaled under fp16."""
        self.scaler.scale(loss).backward()

    def step(self, optimizer: torch.optim.Optimizer, params: list[nn.Parameter], clip: float) -> None:
        """Unscale the gradients, clip their norm to `clip` (0: no clipping) and take the optimizer step (skipped by
        the scaler when an fp16 gradient overflowed), then update the scale."""
        if clip > 0:
            self.scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(params, clip)
        self.scaler.step(optimizer)
        self.scaler.update()


def memory_format(channels_last: bool) -> torch.memory_format:
    """`run.channels_last` as the layout of the model's weights and of every input batch."""
    return torch.channels_last if channels_last else torch.contiguous_format


def set_cudnn_benchmark(enabled: bool, device: torch.device) -> None:
    """cudnn autotuning of every new convolution shape (`run.cudnn_benchmark`), on CUDA only."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = enabled


def loader_options(run: Any, device: torch.device, num_workers: int) -> dict[str, Any]:
    """DataLoader keywords from the `run:` section: pinned host memory on CUDA only (`run.pin_memory`; the engine's
    copies to the device are non-blocking, which overlaps them with compute only from pinned memory), and workers
    kept between epochs when there are workers (`run.persistent_workers`)."""
    return {"pin_memory": run.pin_memory and device.type == "cuda",
            "persistent_workers": run.persistent_workers and num_workers > 0}


def compiled(model: nn.Module, warn: Callable[[str], None]) -> nn.Module:
    """torch.compile(model) (compiled lazily, at its first forward); the model itself, after a one-line warning,
    where this torch cannot compile."""
    try:
        return torch.compile(model)
    except RuntimeError as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        warn(f"warning: torch.compile is unavailable here ({reason}); the network runs uncompiled")
        return model
