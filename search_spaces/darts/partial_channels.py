"""PC-DARTS partial channels (Xu et al., ICLR 2020): an edge runs its ops on 1/K of its input channels.

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


def check_partial_k(C: int, partial_k: int) -> None:
    """An edge's 1/K share of channels must be even at every cell width (FactorizedReduce halves it)."""
    if partial_k < 1 or C % (2 * partial_k):
        raise UserError(f"the partial channel fraction 1/K needs C divisible by 2K; got C={C}, K={partial_k}")


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's shuffle: channel g * (C / groups) + i moves to i * groups + g."""
    n, c, h, w = x.shape
    layout = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    shuffled = x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)
    return shuffled.contiguous(memory_format=layout)


def draw_channels(channels: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(drawn, bypass): C/K channel indices drawn uniformly without replacement, and the others, both sorted."""
    order = torch.randperm(channels)
    return order[: channels // k].sort().values, order[channels // k:].sort().values


def partial_edge(x: torch.Tensor, k: int, stride: int, ops: EdgeOps) -> torch.Tensor | None:
    """An edge's output with its ops on a random C/K of x's channels; K=1 is `ops(x)`."""
    if k == 1:
        return ops(x)
    drawn, bypass = (i.to(x.device, non_blocking=True) for i in draw_channels(x.shape[1], k))
    rest = x.index_select(1, bypass)
    if stride == 2:
        rest = F.max_pool2d(rest, 2, 2, ceil_mode=True)
    y = ops(x.index_select(1, drawn))
    if y is None:
        y = rest.new_zeros(rest.shape[0], len(drawn), rest.shape[2], rest.shape[3])
    return channel_shuffle(torch.cat([y, rest], dim=1), k)
