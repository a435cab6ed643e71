"""PC-DARTS partial channels (Xu et al., ICLR 2020): an edge runs its ops on 1/K of its input channels. Any cell
space can use it (the DARTS and NB201 spaces do).

On every forward each edge draws C/K of its C input channels at random (torch's global CPU generator, which the
search seeds and checkpoints, and which the second-order step replays, so a resumed or replayed pass draws the
same channels). The drawn channels go through the edge's ops (built for C/K channels); the other channels bypass
them (max-pooled 2x2 on a stride-2 edge); the edge outputs [ops output, bypass] after a channel shuffle with K
groups. K=1 runs the ops on every channel in order: the plain DARTS edge. A supernet's mixture runs a node's
partial edges together (PartialNode: the same sums, each op one grouped call for the node's edges).
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nas.core.errors import UserError
from search_spaces.grouped_ops import run_grouped

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
    """x[:, index] in x's memory format (index_select alone returns NCHW, and the ops after it would then run NCHW,
    several times slower on a CPU for pools and depthwise convs). A channels_last x on the CPU is gathered by a
    one-hot matmul of its NHWC view: exact for finite values, and 1.5-4x faster there than index_select. Under
    autocast (which would round the matmul) and off the CPU (where TF32 could) it goes through index_select."""
    if not _channels_last(x):
        return x.index_select(1, index)
    if x.device.type != "cpu" or torch.is_autocast_enabled("cpu"):
        return x.index_select(1, index).contiguous(memory_format=torch.channels_last)
    one_hot = torch.zeros(x.shape[1], len(index), dtype=x.dtype)
    one_hot[index, torch.arange(len(index))] = 1
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


class KeptOp(NamedTuple):
    """An op a partial edge keeps: `pre` ops are body(relu(x)) and a group of them shares the ReLU; `skip` is the
    identity, which the node's skip function (P-DARTS's dropout) follows. Ops of one name are of one type."""
    name: str
    module: nn.Module
    pre: bool = False
    skip: bool = False


class _NodeOp(NamedTuple):
    """One op name of a stride group: per edge that keeps it, its position in the group, the edge, its index among
    the edge's kept ops, and its module."""
    op: KeptOp
    positions: list[int]
    edges: list[int]
    indices: list[int]
    modules: list[nn.Module | Callable]


class _StrideGroup(NamedTuple):
    stride: int
    edges: list[tuple[int, int]]  # (edge, input state)
    ops: list[_NodeOp]


class PartialNode:
    """A node of partial edges: the sum over its edges e of edge_w[e] * merge(sum_k w[e][k] * op_k(drawn_e),
    bypass_e), computed with the merge (the shuffle) taken once over the sums, and each op of the node's edges of
    one stride run as one grouped call on their drawn channels side by side (grouped_ops.run_grouped): on a CPU,
    ops on C/K channels cost about as much as on several times as many.

    `edges`: (edge, input state, stride) in the node's order; `kept[e]`: edge e's kept ops in index order (None
    for `none`, which adds nothing). Channels are drawn edge by edge in the node's order.
    """

    def __init__(self, edges: Sequence[tuple[int, int, int]], kept: Sequence[Sequence[KeptOp | None]]):
        self.groups = []
        for stride in dict.fromkeys(s for _, _, s in edges):
            group = [(e, j) for e, j, s in edges if s == stride]
            ops: dict[str, _NodeOp] = {}
            for position, (e, _) in enumerate(group):
                for k, op in enumerate(kept[e]):
                    if op is None:
                        continue
                    entry = ops.setdefault(op.name, _NodeOp(op, [], [], [], []))
                    entry.positions.append(position)
                    entry.edges.append(e)
                    entry.indices.append(k)
                    entry.modules.append(op.module.body if op.pre else op.module)
            self.groups.append(_StrideGroup(stride, group, list(ops.values())))
        if [e for group in self.groups for e, _ in group.edges] != [e for e, _, _ in edges]:
            raise ValueError("a partial node's edges must come grouped by stride, in the node's order")

    def __call__(self, states: Sequence[torch.Tensor], k: int, w: Sequence[Sequence[torch.Tensor]],
                 edge_w: Sequence[torch.Tensor] | None = None,
                 skip: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        blocks, bypass = [], None
        for group in self.groups:
            drawn = []
            for e, j in group.edges:
                part, rest = split_channels(states[j], k, group.stride)
                drawn.append(part)
                rest = rest if edge_w is None else rest * edge_w[e]
                bypass = rest if bypass is None else bypass.add_(rest)
            blocks.extend(self._mix(group, drawn, w, edge_w, skip))
        return merge_channels(sum(blocks[1:], blocks[0]) if blocks else None, bypass, k)

    @staticmethod
    def _mix(group: _StrideGroup, drawn: list[torch.Tensor], w: Sequence[Sequence[torch.Tensor]],
             edge_w: Sequence[torch.Tensor] | None,
             skip: Callable[[torch.Tensor], torch.Tensor] | None) -> tuple[torch.Tensor, ...]:
        """Per edge of the group, sum_k w[e][k] (* edge_w[e]) * op_k(drawn[e]); () when no op runs."""
        every, width = torch.cat(drawn, dim=1), drawn[0].shape[1]
        relu_every = acc = None
        for node_op in group.ops:
            everyone = len(node_op.positions) == len(drawn)
            x = every if everyone else torch.cat([drawn[i] for i in node_op.positions], dim=1)
            if node_op.op.pre:
                if everyone:
                    relu_every = F.relu(x) if relu_every is None else relu_every
                y = run_grouped(node_op.modules, relu_every if everyone else F.relu(x))
            elif node_op.op.skip:
                y = x if skip is None else skip(x)
            else:
                y = run_grouped(node_op.modules, x)
            weight = torch.stack([w[e][k] for e, k in zip(node_op.edges, node_op.indices)])
            if edge_w is not None:
                weight = weight * torch.stack([edge_w[e] for e in node_op.edges])
            weight = weight.repeat_interleave(width).view(1, -1, 1, 1)
            if everyone:
                acc = y * weight if acc is None else acc.addcmul_(y, weight)
                continue
            if acc is None:
                acc = y.new_zeros(y.shape[0], width * len(drawn), *y.shape[2:])
            channels = torch.cat([torch.arange(i * width, (i + 1) * width) for i in node_op.positions])
            acc = acc.index_add_(1, channels.to(y.device), y * weight)
        return () if acc is None else acc.chunk(len(drawn), dim=1)
