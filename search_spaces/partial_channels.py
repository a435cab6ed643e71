"""PC-DARTS partial channels (Xu et al., ICLR 2020): an edge runs its ops on 1/K of its input channels. Any cell
space can use it (the DARTS and NB201 spaces do).

On every forward each edge draws C/K of its C input channels at random (torch's global CPU generator, which the
search seeds and checkpoints, and which the second-order step replays, so a resumed or replayed pass draws the
same channels). The drawn channels go through the edge's ops (built for C/K channels); the other channels bypass
them (max-pooled 2x2 on a stride-2 edge); the edge outputs [ops output, bypass] after a channel shuffle with K
groups. K=1 runs the ops on every channel in order: the plain DARTS edge.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from nas.core.errors import UserError

EdgeOps = Callable[[torch.Tensor], "torch.Tensor | None"]  # the ops of an edge on the drawn channels (None: zero)
MIXTURES: tuple[str, ...] = ("full", "partial")  # model.mixture: every channel, or PC-DARTS's 1/K


def check_partial_k(C: int, partial_k: int, multiple: int = 2) -> None:
    """An edge's 1/K share of C channels must be a multiple of `multiple` channels (DARTS: 2, since its
    FactorizedReduce halves a cell's width)."""
    if partial_k < 1 or C % (multiple * partial_k):
        need = "K" if multiple == 1 else f"{multiple}K"
        raise UserError(f"the partial channel fraction 1/K needs C divisible by {need}; got C={C}, K={partial_k}")


def check_mixture(mixture: str, C: int, partial_k: int, multiple: int = 2) -> None:
    """UserError unless `model.mixture` is one of MIXTURES and, when partial, K fits C (check_partial_k)."""
    if mixture not in MIXTURES:
        raise UserError(f"model.mixture must be one of {list(MIXTURES)}, got {mixture!r}")
    if mixture == "partial":
        check_partial_k(C, partial_k, multiple)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's shuffle: channel g * (C / groups) + i moves to i * groups + g; x's memory format is kept (a
    channels_last x is shuffled as the NHWC tensor it is, so the gradient stays channels_last too)."""
    n, c, h, w = x.shape
    if _channels_last(x):
        nhwc = x.permute(0, 2, 3, 1).view(n, h, w, groups, c // groups)
        return nhwc.transpose(3, 4).reshape(n, h, w, c).permute(0, 3, 1, 2)
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def _channels_last(x: torch.Tensor) -> bool:
    """True for a channels_last x that is not also NCHW-contiguous (C or H * W of 1 is both)."""
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def draw_channels(channels: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(drawn, bypass): C/K channel indices drawn uniformly without replacement, and the others, both sorted."""
    order = torch.randperm(channels)
    return order[: channels // k].sort().values, order[channels // k:].sort().values


def split_channels(x: torch.Tensor, k: int, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(drawn, bypass): x's channels drawn for an edge's ops (draw_channels) and the others, max-pooled 2x2 on a
    stride-2 edge."""
    drawn, bypass = (i.to(x.device, non_blocking=True) for i in draw_channels(x.shape[1], k))
    rest = select_channels(x, bypass)
    if stride == 2:
        rest = F.max_pool2d(rest, 2, 2, ceil_mode=True)
    return select_channels(x, drawn), rest


def select_channels(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x[:, index] in x's memory format. A channels_last x is gathered by a one-hot matmul of its NHWC view (exact
    for finite values, and on a CPU 1.5-4x faster than index_select, which also returns NCHW: the ops after it
    would then run NCHW, several times slower for pools and depthwise convs); under autocast, which would round
    that matmul, by index_select."""
    if not _channels_last(x):
        return x.index_select(1, index)
    if torch.is_autocast_enabled(x.device.type):
        return x.index_select(1, index).contiguous(memory_format=torch.channels_last)
    one_hot = torch.zeros(x.shape[1], len(index), dtype=x.dtype, device=x.device)
    one_hot[index, torch.arange(len(index), device=x.device)] = 1
    return (x.permute(0, 2, 3, 1) @ one_hot).permute(0, 3, 1, 2)


def merge_channels(y: torch.Tensor | None, rest: torch.Tensor, k: int) -> torch.Tensor:
    """An edge's output from its ops' output on the drawn channels (None: zeros) and the bypass: the channel
    shuffle of [y, rest]."""
    if y is None:
        y = rest.new_zeros(rest.shape[0], rest.shape[1] // (k - 1), rest.shape[2], rest.shape[3])
    return channel_shuffle(torch.cat([y, rest], dim=1), k)


def partial_edge(x: torch.Tensor, k: int, stride: int, ops: EdgeOps) -> torch.Tensor | None:
    """An edge's output with its ops on a random C/K of x's channels; K=1 is `ops(x)`."""
    if k == 1:
        return ops(x)
    drawn, rest = split_channels(x, k, stride)
    return merge_channels(ops(drawn), rest, k)
