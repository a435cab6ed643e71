"""Operation registry: op name -> factory(C, stride, affine) building an nn.Module.

Every op maps C channels to C channels; stride 2 halves height and width (ceil for odd sizes).
Ops whose first layer is a ReLU derive from :class:`PreActivated`, so a mixed op can compute the
ReLU once per edge and call :meth:`PreActivated.body` on it for each such op.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from search_spaces.depthwise import Depthwise

OpFactory = Callable[[int, int, bool], nn.Module]

DARTS_OPS: tuple[str, ...] = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)
EXTENDED_OPS: tuple[str, ...] = (
    "conv_1x1",
    "conv_3x3",
    "conv_5x5",
    "conv_7x7",
    "conv_3x1_1x3",
    "max_pool_5x5",
    "max_pool_7x7",
)
# Also in DARTS's op table: the ops of its NASNet and AmoebaNet genotypes (trainable; no default search set has them).
NASNET_OPS: tuple[str, ...] = (
    "sep_conv_7x7",
    "conv_7x1_1x7",
)


class PreActivated(nn.Module):
    """An op of the form body(relu(x)); `body` is exposed so the ReLU can be shared."""

    body: nn.Module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(F.relu(x))


class ReLUConvBN(PreActivated):
    """ReLU -> Conv(k x k) -> BN."""

    def __init__(self, C_in: int, C_out: int, kernel: int, stride: int, padding: int, affine: bool = True):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(C_in, C_out, kernel, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )


class AsymmetricConv(PreActivated):
    """ReLU -> Conv(1 x k) -> Conv(k x 1) -> BN: a factorised k x k conv (conv_3x1_1x3, conv_7x1_1x7)."""

    def __init__(self, C: int, kernel: int, stride: int, affine: bool = True):
        super().__init__()
        pad = kernel // 2
        self.body = nn.Sequential(
            nn.Conv2d(C, C, (1, kernel), stride=(1, stride), padding=(0, pad), bias=False),
            nn.Conv2d(C, C, (kernel, 1), stride=(stride, 1), padding=(pad, 0), bias=False),
            nn.BatchNorm2d(C, affine=affine),
        )


class DilConv(PreActivated):
    """ReLU -> depthwise k x k (dilated) -> pointwise 1x1 -> BN."""

    def __init__(self, C_in: int, C_out: int, kernel: int, stride: int, padding: int, dilation: int,
                 affine: bool = True):
        super().__init__()
        if padding == dilation * (kernel // 2):
            depthwise: nn.Module = Depthwise(C_in, kernel, stride, dilation)
        else:
            depthwise = nn.Conv2d(C_in, C_in, kernel, stride=stride, padding=padding, dilation=dilation,
                                  groups=C_in, bias=False)
        self.body = nn.Sequential(
            depthwise,
            nn.Conv2d(C_in, C_out, 1, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )


class SepConv(PreActivated):
    """Two stacked DilConv(dilation 1) blocks; only the first has the stride."""

    def __init__(self, C_in: int, C_out: int, kernel: int, stride: int, padding: int, affine: bool = True):
        super().__init__()
        second = DilConv(C_in, C_out, kernel, 1, padding, 1, affine)
        self.body = nn.Sequential(
            *DilConv(C_in, C_in, kernel, stride, padding, 1, affine).body,
            nn.ReLU(inplace=True),  # on the BN output, which BN backward does not need: saves a tensor
            *second.body,
        )


class Identity(nn.Module):
    """skip_connect at stride 1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class Zero(nn.Module):
    """The `none` op: zeros of the output shape (supernets skip it instead of calling it)."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


class FactorizedReduce(PreActivated):
    """ReLU -> two 1x1 stride-2 convs of C_out/2 on x and x shifted by one pixel -> concat -> BN."""

    def __init__(self, C_in: int, C_out: int, affine: bool = True):
        super().__init__()
        if C_out % 2:
            raise ValueError(f"FactorizedReduce needs an even channel count, got {C_out}")
        # A 1x1 stride-2 conv is a 1x1 conv of the even pixels: it runs as that, because oneDNN's CPU backward of
        # 1x1 stride-2 convs on channels_last maps corrupts the heap at small channel counts (torch 2.14: 2-8
        # channels at 56x56, the ImageNet network at small C). Same weights, outputs and FLOPs.
        self.conv_1 = nn.Conv2d(C_in, C_out // 2, 1, bias=False)
        self.conv_2 = nn.Conv2d(C_in, C_out - C_out // 2, 1, bias=False)
        self.bn = nn.BatchNorm2d(C_out, affine=affine)
        self.body = self._reduce

    def _reduce(self, x: torch.Tensor) -> torch.Tensor:
        shifted = x[:, :, 1:, 1:]
        h, w = x.shape[-2:]
        if h % 2 or w % 2:  # keep both halves the same size on odd inputs
            shifted = F.pad(shifted, (0, w % 2, 0, h % 2))
        return self.bn(torch.cat([self.conv_1(x[:, :, ::2, ::2]), self.conv_2(shifted[:, :, ::2, ::2])], dim=1))


def _pool(kind: str, kernel: int) -> OpFactory:
    def build(C: int, stride: int, affine: bool) -> nn.Module:
        if kind == "max":
            return nn.MaxPool2d(kernel, stride=stride, padding=kernel // 2)
        return nn.AvgPool2d(kernel, stride=stride, padding=kernel // 2, count_include_pad=False)

    return build


def _conv(kernel: int) -> OpFactory:
    return lambda C, stride, affine: ReLUConvBN(C, C, kernel, stride, kernel // 2, affine)


OPS: dict[str, OpFactory] = {
    "none": lambda C, stride, affine: Zero(stride),
    "max_pool_3x3": _pool("max", 3),
    "avg_pool_3x3": _pool("avg", 3),
    "skip_connect": lambda C, stride, affine: Identity() if stride == 1 else FactorizedReduce(C, C, affine),
    "sep_conv_3x3": lambda C, stride, affine: SepConv(C, C, 3, stride, 1, affine),
    "sep_conv_5x5": lambda C, stride, affine: SepConv(C, C, 5, stride, 2, affine),
    "dil_conv_3x3": lambda C, stride, affine: DilConv(C, C, 3, stride, 2, 2, affine),
    "dil_conv_5x5": lambda C, stride, affine: DilConv(C, C, 5, stride, 4, 2, affine),
    "conv_1x1": _conv(1),
    "conv_3x3": _conv(3),
    "conv_5x5": _conv(5),
    "conv_7x7": _conv(7),
    "conv_3x1_1x3": lambda C, stride, affine: AsymmetricConv(C, 3, stride, affine),
    "max_pool_5x5": _pool("max", 5),
    "max_pool_7x7": _pool("max", 7),
    "sep_conv_7x7": lambda C, stride, affine: SepConv(C, C, 7, stride, 3, affine),
    "conv_7x1_1x7": lambda C, stride, affine: AsymmetricConv(C, 7, stride, affine),
}


def is_pool(name: str) -> bool:
    """True for the pooling ops (they get a BatchNorm(affine=False) in search supernets)."""
    return "pool" in name


def canonical_op_name(name: str) -> str:
    """The registry spelling of an op name; old logs write `conv 3x3` for `conv_3x3`.

    Raises ValueError naming the known ops when the name is not in the registry.
    """
    canonical = "_".join(str(name).strip().split())
    if canonical not in OPS:
        raise ValueError(f"unknown op {name!r}; known ops: {', '.join(OPS)}")
    return canonical


def build_op(name: str, C: int, stride: int, affine: bool = True) -> nn.Module:
    """Build the op called `name` (any accepted spelling) for C channels at `stride`."""
    if stride not in (1, 2):
        raise ValueError(f"stride must be 1 or 2, got {stride}")
    return OPS[canonical_op_name(name)](C, stride, affine)
