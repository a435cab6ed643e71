"""DARTS / P-DARTS cell space: the search supernet, fixed networks built from a Genotype, derivation.

Edges of a cell are ordered node by node: node 0's two inputs (c_{k-2}, c_{k-1}), node 1's three
inputs (c_{k-2}, c_{k-1}, node 0), and so on; input index j >= 2 is intermediate node j-2.
"""
from __future__ import annotations

import functools
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nas.arch_types import NONE_OP, SKIP_OP, CellLayout, OpIndices
from nas.errors import UserError
from nas.genotype import Genotype, genotype_from_dict
from search_spaces.base import DataShape, KeptOps, PartFactory, SearchSpace
from search_spaces.ops import (
    DARTS_OPS,
    FactorizedReduce,
    Identity,
    PreActivated,
    ReLUConvBN,
    build_op,
    canonical_op_name,
    is_pool,
)
from search_spaces.partial_channels import partial_edge

NONE = NONE_OP
SKIP = SKIP_OP
OFF = -1  # a path entry for an edge that runs nothing
GROUPS: tuple[str, ...] = ("normal", "reduce")

# How a supernet edge runs one of its ops (decided once at build time).
_NONE, _PRE, _SKIP, _PLAIN = range(4)

Weights = dict[str, torch.Tensor]  # group -> [E, K] mixture weights
NodeSpec = list[list[tuple[str, int]]]  # per node, the (op, input index) pairs it sums


class CellSpec(NamedTuple):
    """A fixed cell: the (op, input) pairs of every node and the states concatenated at the output."""

    nodes: NodeSpec
    concat: list[int]


# ----------------------------------------------------------------------------------------------
# Layout shared by every network of this space
# ----------------------------------------------------------------------------------------------

def edges_per_cell(steps: int) -> int:
    """Number of edges of a cell with `steps` intermediate nodes (14 for 4)."""
    return sum(2 + i for i in range(steps))


def _node_edges(steps: int) -> list[range]:
    """Per node, the range of flat edge indices entering it (edge start + j reads input j)."""
    ranges, start = [], 0
    for i in range(steps):
        ranges.append(range(start, start + 2 + i))
        start += 2 + i
    return ranges


def _edge_stride(reduction: bool, input_index: int) -> int:
    return 2 if reduction and input_index < 2 else 1


class _CellDims(NamedTuple):
    C_pp: int
    C_p: int
    C: int
    reduction: bool
    reduction_prev: bool


def _layout(C: int, layers: int, stem_multiplier: int, out_multiplier: Callable[[bool], int]) -> list[_CellDims]:
    """Channels of every cell: reductions at layers//3 and 2*layers//3 double C."""
    C_pp = C_p = stem_multiplier * C
    C_curr, reduction_prev, dims = C, False, []
    for i in range(layers):
        reduction = i in (layers // 3, 2 * layers // 3)
        C_curr = 2 * C_curr if reduction else C_curr
        dims.append(_CellDims(C_pp, C_p, C_curr, reduction, reduction_prev))
        C_pp, C_p, reduction_prev = C_p, out_multiplier(reduction) * C_curr, reduction
    return dims


def _stem(in_channels: int, C_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, C_out, 3, padding=1, bias=False), nn.BatchNorm2d(C_out))


def _check_positive(**values: int) -> None:
    for key, value in values.items():
        if not isinstance(value, int) or value < 1:
            raise UserError(f"{key} must be a positive integer, got {value!r}")


def check_partial_k(C: int, partial_k: int) -> None:
    """An edge's 1/K share of channels must be even at every cell width (FactorizedReduce halves it)."""
    if partial_k < 1 or C % (2 * partial_k):
        raise UserError(f"the partial channel fraction 1/K needs C divisible by 2K; got C={C}, K={partial_k}")


class _Cell(nn.Module):
    """Preprocessing of the two cell inputs to C channels (FactorizedReduce after a reduction)."""

    def __init__(self, dims: _CellDims, affine: bool):
        super().__init__()
        if dims.reduction_prev:
            self.preprocess0: nn.Module = FactorizedReduce(dims.C_pp, dims.C, affine)
        else:
            self.preprocess0 = ReLUConvBN(dims.C_pp, dims.C, 1, 1, 0, affine)
        self.preprocess1 = ReLUConvBN(dims.C_p, dims.C, 1, 1, 0, affine)
        self.reduction = dims.reduction
        self.C = dims.C

    def node_zeros(self, s: torch.Tensor) -> torch.Tensor:
        """Zeros shaped (and laid out) like an intermediate node, for a node none of whose edges runs an op."""
        n, _, h, w = s.shape
        if self.reduction:
            h, w = (h + 1) // 2, (w + 1) // 2
        layout = torch.channels_last if s.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        return torch.zeros(n, self.C, h, w, dtype=s.dtype, device=s.device).contiguous(memory_format=layout)


# ----------------------------------------------------------------------------------------------
# Search supernet
# ----------------------------------------------------------------------------------------------

def _search_op(name: str, C: int, stride: int) -> nn.Module:
    """A search op: affine=False, pools followed by BatchNorm(affine=False)."""
    op = build_op(name, C, stride, affine=False)
    if is_pool(name):
        return nn.Sequential(op, nn.BatchNorm2d(C, affine=False))
    return op


def _op_kind(op: nn.Module, name: str) -> int:
    if name == NONE:
        return _NONE
    if isinstance(op, Identity):
        return _SKIP
    return _PRE if isinstance(op, PreActivated) else _PLAIN


class _SearchCell(_Cell):
    """A cell whose edges hold their kept ops; runs their weighted mixture or one op per edge."""

    def __init__(self, dims: _CellDims, kept: list[list[str]], steps: int, multiplier: int, partial_k: int = 1):
        super().__init__(dims, affine=False)
        self.multiplier, self.partial_k = multiplier, partial_k
        self.nodes = [[(e, j) for j, e in enumerate(r)] for r in _node_edges(steps)]
        self.strides = [_edge_stride(dims.reduction, j) for node in self.nodes for _, j in node]
        self.edges = nn.ModuleList(nn.ModuleList(_search_op(name, dims.C // partial_k, stride) for name in names)
                                   for names, stride in zip(kept, self.strides))
        # Plain Python views for the hot loops: (kind, op) per kept op, and the non-none ops with their index.
        self._ops = [[(_op_kind(op, name), op) for op, name in zip(edge, names)]
                     for edge, names in zip(self.edges, kept)]
        self._active = [[(k, kind, op) for k, (kind, op) in enumerate(ops) if kind != _NONE] for ops in self._ops]

    def forward_mixture(self, s0: torch.Tensor, s1: torch.Tensor, w: list[Sequence[torch.Tensor]],
                        skip_p: float, edge_w: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """Every node sums w[e][k] * op_k(input) over its edges' non-none kept ops, accumulated in place; with
        partial channels (K > 1) each edge's sum runs on C/K channels (partial_edge), times edge_w[e] if given."""
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for node in self.nodes:
            acc = None
            for e, j in node:
                if self.partial_k == 1:
                    acc = self._mix(states[j], e, w[e], skip_p, acc)
                    continue
                y = partial_edge(states[j], self.partial_k, self.strides[e],
                                 functools.partial(self._mix, e=e, w_e=w[e], skip_p=skip_p, acc=None))
                y = y if edge_w is None else y * edge_w[e]
                acc = y if acc is None else acc.add_(y)
            states.append(self.node_zeros(states[1]) if acc is None else acc)
        return torch.cat(states[-self.multiplier:], dim=1)

    def _mix(self, x: torch.Tensor, e: int, w_e: Sequence[torch.Tensor], skip_p: float,
             acc: torch.Tensor | None) -> torch.Tensor | None:
        """acc + sum_k w_e[k] * op_k(x) over edge e's non-none ops, in place (None: no op ran, acc was None)."""
        relu_x = None
        for k, kind, op in self._active[e]:
            if kind == _PRE:
                relu_x = F.relu(x) if relu_x is None else relu_x
                y = op.body(relu_x)
            else:
                y = self._skip_dropout(op(x), skip_p) if kind == _SKIP else op(x)
            acc = y * w_e[k] if acc is None else acc.addcmul_(y, w_e[k])
        return acc

    def forward_path(self, s0: torch.Tensor, s1: torch.Tensor, path: list[int], skip_p: float,
                     scale: Sequence[torch.Tensor] | None = None,
                     edge_w: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """Every node sums the chosen op of each of its edges, times scale[e] if given (with partial channels, on
        C/K channels, partial_edge), times edge_w[e] if given; `none` and off (-1) edges cost nothing."""
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for node in self.nodes:
            acc = None
            for e, j in node:
                if path[e] == OFF:
                    continue
                kind, op = self._ops[e][path[e]]
                if kind == _NONE:
                    continue
                if self.partial_k == 1:
                    y = self._path_op(kind, op, skip_p, None if scale is None else scale[e], states[j])
                else:
                    y = partial_edge(states[j], self.partial_k, self.strides[e], functools.partial(
                        self._path_op, kind, op, skip_p, None if scale is None else scale[e]))
                y = y if edge_w is None else y * edge_w[e]
                acc = y if acc is None else acc + y
            states.append(self.node_zeros(states[1]) if acc is None else acc)
        return torch.cat(states[-self.multiplier:], dim=1)

    def _path_op(self, kind: int, op: nn.Module, skip_p: float, scale: torch.Tensor | None,
                 x: torch.Tensor) -> torch.Tensor:
        y = self._skip_dropout(op(x), skip_p) if kind == _SKIP else op(x)
        return y if scale is None else y * scale

    def _skip_dropout(self, y: torch.Tensor, p: float) -> torch.Tensor:
        return F.dropout(y, p, training=True) if p > 0 and self.training else y


def _canonical_kept(kept_ops: KeptOps, steps: int) -> dict[str, list[list[str]]]:
    """Validated kept ops in canonical spelling; every edge of a group keeps the same number of ops."""
    n_edges = edges_per_cell(steps)
    if sorted(kept_ops) != sorted(GROUPS):
        raise UserError(f"kept_ops must have exactly the groups {list(GROUPS)}, got {sorted(kept_ops)}")
    result = {}
    for group in GROUPS:
        edges = kept_ops[group]
        if len(edges) != n_edges:
            raise UserError(f"kept_ops[{group!r}] must list {n_edges} edges for steps={steps}, got {len(edges)}")
        sizes = {len(names) for names in edges}
        if len(sizes) != 1 or 0 in sizes:
            raise UserError(f"every edge of kept_ops[{group!r}] must keep the same non-zero number of ops, got {sizes}")
        result[group] = [[_canonical(name) for name in names] for names in edges]
        if any(len(set(names)) != len(names) for names in result[group]):
            raise UserError(f"kept_ops[{group!r}] lists an op twice on one edge; keep each op once per edge")
    return result


def _canonical(name: str) -> str:
    try:
        return canonical_op_name(name)
    except ValueError as err:
        raise UserError(str(err)) from None


class SearchNetwork(nn.Module):
    """The DARTS search supernet over per-edge kept ops (P-DARTS masks), in mixture or single-path mode.

    `channels_last` (None: on CPU only) converts the input to channels_last, which every layer then keeps;
    on CPU it makes a search step 1.6x (single path) to 2.6x (mixture) faster (depthwise convs and pools).
    `partial_k` > 1 runs every edge's ops on a random 1/K of its channels (PC-DARTS, search_spaces/partial_channels.py).
    """

    def __init__(self, C: int, num_classes: int, layers: int, in_channels: int, kept_ops: KeptOps,
                 steps: int = 4, multiplier: int = 4, stem_multiplier: int = 3, partial_k: int = 1):
        super().__init__()
        _check_positive(C=C, num_classes=num_classes, layers=layers, in_channels=in_channels, steps=steps,
                        multiplier=multiplier, stem_multiplier=stem_multiplier, partial_k=partial_k)
        check_partial_k(C, partial_k)
        if multiplier > steps:
            raise UserError(f"multiplier ({multiplier}) cannot exceed steps ({steps}): it counts concatenated nodes")
        self.kept_ops = _canonical_kept(kept_ops, steps)
        self.n_ops = {group: len(edges[0]) for group, edges in self.kept_ops.items()}
        self.n_edges = edges_per_cell(steps)
        self.partial_k = partial_k
        self.skip_dropout = 0.0
        self.channels_last: bool | None = None
        dims = _layout(C, layers, stem_multiplier, lambda reduction: multiplier)
        self.stem = _stem(in_channels, stem_multiplier * C)
        self.cells = nn.ModuleList(
            _SearchCell(d, self.kept_ops["reduce" if d.reduction else "normal"], steps, multiplier, partial_k)
            for d in dims
        )
        self._groups = ["reduce" if d.reduction else "normal" for d in dims]
        self.classifier = nn.Linear(multiplier * dims[-1].C, num_classes)

    def set_skip_dropout(self, p: float) -> None:
        """P-DARTS dropout rate after identity skip_connect ops (active in training mode only)."""
        if not 0.0 <= p < 1.0:
            raise UserError(f"skip dropout must be in [0, 1), got {p}")
        self.skip_dropout = float(p)

    def forward(self, x: torch.Tensor, weights: Weights | None = None, path: OpIndices | None = None,
                path_scale: Weights | None = None, edge_weights: Weights | None = None) -> torch.Tensor:
        """Logits of the weighted mixture (`weights`) or of the single path (`path`: per edge the index of the op
        to run, -1 for an edge that is off); give exactly one. `path_scale[group]` ([E], with `path` only)
        multiplies each edge's op output: a differentiable weight of the op that runs (GDAS). `edge_weights[group]`
        ([E]) multiplies each edge's whole output (PC-DARTS edge normalisation)."""
        if (weights is None) == (path is None):
            raise UserError("SearchNetwork.forward needs exactly one of weights= (mixture) or path= (single path)")
        if path_scale is not None and (path is None or any(path_scale[g].shape != (self.n_edges,) for g in GROUPS)):
            raise UserError(f"path_scale= goes with path= and holds one value per edge ({self.n_edges}) per group")
        if edge_weights is not None and any(edge_weights[g].shape != (self.n_edges,) for g in GROUPS):
            raise UserError(f"edge_weights= holds one value per edge ({self.n_edges}) per group")
        edge_w = {g: None if edge_weights is None else edge_weights[g].unbind(0) for g in GROUPS}
        if self.channels_last or (self.channels_last is None and x.device.type == "cpu"):
            x = x.contiguous(memory_format=torch.channels_last)
        s0 = s1 = self.stem(x)
        if weights is not None:
            rows = {group: [row.unbind(0) for row in self._folded(weights, edge_weights, group).unbind(0)]
                    for group in GROUPS}
            for cell, group in zip(self.cells, self._groups):
                s0, s1 = s1, cell.forward_mixture(s0, s1, rows[group], self.skip_dropout,
                                                  None if self.partial_k == 1 else edge_w[group])
        else:
            choice = {group: self._path_list(path, group) for group in GROUPS}
            scales = {group: None if path_scale is None else path_scale[group].unbind(0) for group in GROUPS}
            for cell, group in zip(self.cells, self._groups):
                s0, s1 = s1, cell.forward_path(s0, s1, choice[group], self.skip_dropout, scales[group], edge_w[group])
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(s1, 1), 1))

    def _folded(self, weights: Weights, edge_weights: Weights | None, group: str) -> torch.Tensor:
        """The group's mixture weights; without partial channels the edge weights fold into them (w[e] * b[e])."""
        w = self._checked(weights, group)
        return w if edge_weights is None or self.partial_k > 1 else w * edge_weights[group][:, None]

    def _checked(self, weights: Weights, group: str) -> torch.Tensor:
        w = weights[group]
        if tuple(w.shape) != (self.n_edges, self.n_ops[group]):
            raise UserError(f"weights[{group!r}] must have shape ({self.n_edges}, {self.n_ops[group]}), "
                            f"got {tuple(w.shape)}")
        return w

    def _path_list(self, path: OpIndices, group: str) -> list[int]:
        choice = path[group].tolist()
        if len(choice) != self.n_edges or not all(OFF <= k < self.n_ops[group] for k in choice):
            raise UserError(f"path[{group!r}] must hold {self.n_edges} op indices in [0, {self.n_ops[group]}) "
                            f"or -1 (off), got {choice}")
        return choice


# ----------------------------------------------------------------------------------------------
# Fixed networks: the eval network of a Genotype, and stand-alone children
# ----------------------------------------------------------------------------------------------

NETWORKS: tuple[str, ...] = ("cifar", "imagenet")  # DARTS's NetworkCIFAR and NetworkImageNet


def drop_path(x: torch.Tensor, drop_prob: float) -> torch.Tensor:
    """Zero whole samples with probability drop_prob and rescale the rest (DARTS drop path)."""
    keep = 1.0 - drop_prob
    mask = torch.empty(x.size(0), 1, 1, 1, device=x.device, dtype=x.dtype).bernoulli_(keep)
    return x * mask.div_(keep)


class _FixedCell(_Cell):
    """A cell compiled from fixed (op, input) pairs per node."""

    def __init__(self, dims: _CellDims, spec: CellSpec, affine: bool, pool_bn: bool):
        super().__init__(dims, affine)
        self.concat = list(spec.concat)
        self.inputs = [[j for _, j in node] for node in spec.nodes]
        self.node_ops = nn.ModuleList(
            nn.ModuleList(self._op(name, dims.C, _edge_stride(dims.reduction, j), affine, pool_bn) for name, j in node)
            for node in spec.nodes
        )

    @staticmethod
    def _op(name: str, C: int, stride: int, affine: bool, pool_bn: bool) -> nn.Module:
        op = build_op(name, C, stride, affine)
        return nn.Sequential(op, nn.BatchNorm2d(C, affine=affine)) if pool_bn and is_pool(name) else op

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        drop = drop_prob > 0 and self.training
        for inputs, ops in zip(self.inputs, self.node_ops):
            acc = None
            for j, op in zip(inputs, ops):
                y = op(states[j])
                y = drop_path(y, drop_prob) if drop and not isinstance(op, Identity) else y
                acc = y if acc is None else acc + y
            states.append(self.node_zeros(states[1]) if acc is None else acc)
        return torch.cat([states[i] for i in self.concat], dim=1)


class _AuxiliaryHead(nn.Module):
    """DARTS auxiliary head: ReLU, 5x5 average pool to 2x2, conv 1x1 to 128, BN, ReLU, conv 2x2 to 768, BN, ReLU, FC.

    The CIFAR head pools 8x8 maps with stride 3. The ImageNet head pools with stride 2 and has no BN after the
    768-channel conv, as in the reference (its maps are 7x7 at 224x224 input, though the reference says 14x14).
    Maps that the pool would not bring to 2x2 are pooled adaptively.
    """

    def __init__(self, C: int, num_classes: int, imagenet: bool = False):
        super().__init__()
        self.pool_stride = 2 if imagenet else 3
        self.features = nn.Sequential(
            nn.Conv2d(C, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False), *([] if imagenet else [nn.BatchNorm2d(768)]), nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x)
        h, w = x.shape[-2:]
        s = self.pool_stride
        if min(h, w) >= 5 and (h - 5) // s == 1 and (w - 5) // s == 1:
            x = F.avg_pool2d(x, 5, stride=s, count_include_pad=False)
        else:
            x = F.adaptive_avg_pool2d(x, 2)
        return self.classifier(torch.flatten(self.features(x), 1))


class _CifarStem(nn.Sequential):
    """Conv 3x3 -> BN at full resolution; its output is both inputs of the first cell."""

    def __init__(self, in_channels: int, C_out: int):
        super().__init__(*_stem(in_channels, C_out))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = super().forward(x)
        return y, y


class _ImageNetStem(nn.Module):
    """DARTS ImageNet stems: stem0 (conv 3x3 s2 to C/2, BN, ReLU, conv 3x3 s2 to C, BN) gives the first cell's
    c_{k-2} at 1/4 resolution, stem1 (ReLU, conv 3x3 s2, BN) on it gives c_{k-1} at 1/8."""

    def __init__(self, in_channels: int, C: int):
        super().__init__()
        self.stem0 = nn.Sequential(
            nn.Conv2d(in_channels, C // 2, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(C // 2),
            nn.ReLU(inplace=True),
            nn.Conv2d(C // 2, C, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(C),
        )
        self.stem1 = nn.Sequential(nn.ReLU(), nn.Conv2d(C, C, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(C))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s0 = self.stem0(x)
        return s0, self.stem1(s0)


def _network_stem(network: str, in_channels: int, C: int, stem_multiplier: int) -> nn.Module:
    """The stem of `network`; it returns the two inputs of the first cell."""
    return _ImageNetStem(in_channels, C) if network == "imagenet" else _CifarStem(in_channels, stem_multiplier * C)


def _check_network(network: str, C: int) -> None:
    if network not in NETWORKS:
        raise UserError(f"network {network!r} is unknown; choose one of {', '.join(NETWORKS)}")
    if network == "imagenet" and C % 2:
        raise UserError(f"the ImageNet network needs an even C (its first cell halves C-channel maps with "
                        f"FactorizedReduce), got C={C}")


def _network_layout(specs: dict[str, CellSpec], C: int, layers: int, network: str,
                    stem_multiplier: int) -> list[_CellDims]:
    """Channels of every cell; cells output len(concat) * C. After the ImageNet stems both inputs of the first cell
    have C channels and its c_{k-2} has twice the resolution of c_{k-1}, so it starts as after a reduction."""
    def out_multiplier(reduction: bool) -> int:
        return len(specs[_group(reduction)].concat)

    if network == "imagenet":
        dims = _layout(C, layers, 1, out_multiplier)
        return [dims[0]._replace(reduction_prev=True), *dims[1:]]
    return _layout(C, layers, stem_multiplier, out_multiplier)


def _genotype_specs(genotype: Genotype) -> dict[str, CellSpec]:
    """Per cell type, the node specs of a genotype (two pairs per node; as many nodes as pairs / 2), validated."""
    specs = {}
    for group in GROUPS:
        pairs, concat = getattr(genotype, group), list(getattr(genotype, f"{group}_concat"))
        if not pairs or len(pairs) % 2:
            raise UserError(f"genotype.{group} must list two (op, input) pairs per node, got {len(pairs)} pairs")
        nodes = [[(_canonical(name), int(j)) for name, j in pairs[i:i + 2]] for i in range(0, len(pairs), 2)]
        specs[group] = CellSpec(nodes, concat)
    return specs


def _check_spec(group: str, spec: CellSpec) -> None:
    for i, node in enumerate(spec.nodes):
        if any(not 0 <= j < 2 + i for _, j in node):
            raise UserError(f"{group} node {i} reads input {[j for _, j in node]}; inputs must be in [0, {2 + i})")
    if not spec.concat or any(not 0 <= j < 2 + len(spec.nodes) for j in spec.concat):
        raise UserError(f"{group} concat {spec.concat} must name states in [0, {2 + len(spec.nodes)})")


class FixedNetwork(nn.Module):
    """Stem, a stack of fixed cells (reductions at layers//3 and 2*layers//3), pool and classifier.

    `network` picks the stem and the auxiliary head: "cifar" (conv 3x3 to stem_multiplier * C at full resolution)
    or "imagenet" (DARTS's two stride-2 stems, input / 8, then the cells). `drop_path_prob` (set by the trainer)
    drops the non-identity op outputs of every cell in training.
    """

    def __init__(self, specs: dict[str, CellSpec], C: int, num_classes: int, layers: int, in_channels: int,
                 auxiliary: bool = False, affine: bool = True, pool_bn: bool = False, stem_multiplier: int = 3,
                 network: str = "cifar"):
        super().__init__()
        _check_positive(C=C, num_classes=num_classes, layers=layers, in_channels=in_channels,
                        stem_multiplier=stem_multiplier)
        _check_network(network, C)
        for group in GROUPS:
            _check_spec(group, specs[group])
        dims = _network_layout(specs, C, layers, network, stem_multiplier)
        self.drop_path_prob = 0.0
        self.stem = _network_stem(network, in_channels, C, stem_multiplier)
        self.cells = nn.ModuleList(_FixedCell(d, specs[_group(d.reduction)], affine, pool_bn) for d in dims)
        self.aux_index = 2 * layers // 3
        aux_channels = _out_channels(dims[min(self.aux_index, layers - 1)], specs)
        self.auxiliary_head = _AuxiliaryHead(aux_channels, num_classes, network == "imagenet") if auxiliary else None
        self.classifier = nn.Linear(_out_channels(dims[-1], specs), num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(logits, auxiliary logits in training with an auxiliary head, else None)."""
        s0, s1 = self.stem(x)
        aux = None
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i == self.aux_index and self.auxiliary_head is not None and self.training:
                aux = self.auxiliary_head(s1)
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(s1, 1), 1)), aux


def _group(reduction: bool) -> str:
    return "reduce" if reduction else "normal"


def _out_channels(dims: _CellDims, specs: dict[str, CellSpec]) -> int:
    return len(specs[_group(dims.reduction)].concat) * dims.C


class NetworkEval(FixedNetwork):
    """The DARTS eval network of a Genotype (NetworkCIFAR or NetworkImageNet): affine ops, no BN after pools,
    optional auxiliary head."""

    def __init__(self, genotype: Genotype, C: int, num_classes: int, layers: int, in_channels: int, auxiliary: bool,
                 network: str = "cifar"):
        super().__init__(_genotype_specs(genotype), C, num_classes, layers, in_channels, auxiliary=auxiliary,
                         network=network)


def _meta_params(build: Callable[[], nn.Module]) -> int:
    """Parameters of a module built on the meta device: no memory, and nothing drawn from the global RNG, so
    costing a sample mid-search leaves a resumed run sampling alike."""
    with torch.device("meta"):
        return sum(p.numel() for p in build().parameters())


@functools.cache
def _op_params(name: str, C: int, stride: int) -> int:
    """Parameters of one eval op (affine=True); each (op, C, stride) is counted once."""
    return _meta_params(lambda: build_op(name, C, stride, affine=True))


@functools.cache
def _stem_params(network: str, in_channels: int, C: int) -> int:
    return _meta_params(lambda: _network_stem(network, in_channels, C, 3))


def eval_param_count(genotype: Genotype, C: int = 36, layers: int = 20, num_classes: int = 10,
                     in_channels: int = 3, network: str = "cifar") -> int:
    """Parameters of NetworkEval(genotype) without its auxiliary head, from a per-op table (no model built)."""
    specs = _genotype_specs(genotype)
    _check_network(network, C)
    for group in GROUPS:
        _check_spec(group, specs[group])
    dims = _network_layout(specs, C, layers, network, 3)
    total = _stem_params(network, in_channels, C)
    for d in dims:
        total += (d.C_pp + d.C_p) * d.C + 4 * d.C  # two 1x1 preprocess convs (or FactorizedReduce) + BNs
        nodes = specs[_group(d.reduction)].nodes
        total += sum(_op_params(name, d.C, _edge_stride(d.reduction, j)) for node in nodes for name, j in node)
    final = _out_channels(dims[-1], specs)
    return total + final * num_classes + num_classes


# ----------------------------------------------------------------------------------------------
# Derivation and op dropping
# ----------------------------------------------------------------------------------------------

def _derive_cell(scores: list[list[float]], kept: list[list[str]], steps: int,
                 group: str) -> list[tuple[str, int, int]]:
    """Per node the two edges with the strongest non-none op, each with that op: (op, input, edge)."""
    gene = []
    for i, edges in enumerate(_node_edges(steps)):
        best = []
        for e in edges:
            options = [(scores[e][k], k) for k, name in enumerate(kept[e]) if name != NONE]
            best.append(max(options, key=lambda o: o[0], default=None))
        usable = [j for j in range(len(edges)) if best[j] is not None]
        if len(usable) < 2:
            raise UserError(f"{group} node {i} has fewer than two edges with a non-none op; keep a non-none op "
                            "on every edge before deriving")
        for j in sorted(usable, key=lambda j: -best[j][0])[:2]:
            e = edges[j]
            gene.append((kept[e][best[j][1]], j, e))
    return gene


def derive_genotype(scores: dict[str, torch.Tensor], kept_ops: KeptOps, steps: int = 4, multiplier: int = 4,
                    max_skip: int | None = 2) -> Genotype:
    """Top-2 edges per node and their best non-none op; the normal cell keeps at most max_skip skip_connects."""
    kept = _canonical_kept(kept_ops, steps)
    table = {group: scores[group].detach().double().cpu().tolist() for group in GROUPS}
    normal = _derive_cell(table["normal"], kept["normal"], steps, "normal")
    while max_skip is not None and sum(name == SKIP for name, _, _ in normal) > max_skip:
        skips = [(table["normal"][e][kept["normal"][e].index(SKIP)], e) for name, _, e in normal if name == SKIP]
        score, e = min(skips)
        if score <= 0:
            break  # every remaining selected skip is already at zero: nothing left to restrict
        table["normal"][e][kept["normal"][e].index(SKIP)] = 0.0
        normal = _derive_cell(table["normal"], kept["normal"], steps, "normal")
    reduce = _derive_cell(table["reduce"], kept["reduce"], steps, "reduce")
    concat = list(range(2 + steps - multiplier, 2 + steps))
    return Genotype(normal=[(name, j) for name, j, _ in normal], normal_concat=concat,
                    reduce=[(name, j) for name, j, _ in reduce], reduce_concat=list(concat))


# ----------------------------------------------------------------------------------------------
# The space
# ----------------------------------------------------------------------------------------------

MIN_IMAGE_SIZE = 4  # two stride-2 reduction cells
MIXTURES: tuple[str, ...] = ("full", "partial")  # model.mixture: every channel, or PC-DARTS's 1/K
SKIP_DROPOUT_DECAY = 0.2  # P-DARTS: rate * exp(-0.2 * epochs since the warm-up ended)


def check_image_size(size: int, dataset: str) -> None:
    """The networks of this space halve the map twice; refuse images smaller than MIN_IMAGE_SIZE."""
    if size < MIN_IMAGE_SIZE:
        raise UserError(f"{dataset} images are {size}x{size}: too small for the two reduction cells, which need at "
                        f"least {MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE}; use a dataset with larger images")


def skip_dropout_rate(rate: float, epoch: int, epochs: int, warmup: int) -> float:
    """P-DARTS schedule: linear decay during the warm-up, exponential decay afterwards."""
    if epoch < warmup:
        return rate * (epochs - epoch - 1) / epochs
    return rate * math.exp(-(epoch - warmup) * SKIP_DROPOUT_DECAY)


@dataclass
class DartsModelConfig:
    """The `model:` section of a DARTS search: the supernet's scale, the candidate ops, the eval scale."""

    C: int = 16
    steps: int = 4
    multiplier: int = 4
    stem_multiplier: int = 3
    normal_ops: list[str] = field(default_factory=lambda: list(DARTS_OPS))
    reduce_ops: list[str] = field(default_factory=lambda: list(DARTS_OPS))
    max_skip: int = 2
    eval_C: int = 36
    eval_layers: int = 20
    mixture: str = "full"  # "partial": PC-DARTS, every edge's ops run on 1/partial_k of its channels
    partial_k: int = 4
    edge_norm: bool = False  # PC-DARTS edge normalisation: learned weights of a node's input edges

    def validate(self) -> None:
        for name in ("normal_ops", "reduce_ops"):
            ops = getattr(self, name)
            try:
                canonical = [canonical_op_name(op) for op in ops]
            except ValueError as err:
                raise UserError(f"model.{name}: {err}") from None
            if len(set(canonical)) != len(canonical) or len(canonical) < 2:
                raise UserError(f"model.{name} must list at least 2 distinct ops, got {ops}")
            setattr(self, name, canonical)
        if self.C <= 0 or self.C % 2:
            raise UserError(f"model.C must be a positive even number (FactorizedReduce halves it), got {self.C}")
        if self.steps <= 0 or not 0 < self.multiplier <= self.steps or self.max_skip < 0:
            raise UserError("model.steps must be positive, 0 < model.multiplier <= model.steps, model.max_skip >= 0")
        if self.mixture not in MIXTURES:
            raise UserError(f"model.mixture must be one of {list(MIXTURES)}, got {self.mixture!r}")
        if self.mixture == "partial":
            check_partial_k(self.C, self.partial_k)


class DartsSpace(SearchSpace):
    """The DARTS cell space with per-group candidate ops (normal and reduce sets may differ)."""

    name = "darts"
    config_sections = {"model": DartsModelConfig}
    tags = {"stage{s}/skip_dropout": "P-DARTS dropout rate on identity skip connections"}
    min_layers = 3  # two reduction cells plus one normal cell

    def __init__(self, C: int, num_classes: int, in_channels: int, normal_ops: list[str], reduce_ops: list[str],
                 steps: int = 4, multiplier: int = 4, stem_multiplier: int = 3, max_skip: int | None = 2,
                 eval_C: int = 36, eval_layers: int = 20, image_size: int = 32, partial_k: int = 1,
                 edge_norm: bool = False):
        _check_positive(C=C, num_classes=num_classes, in_channels=in_channels, steps=steps, multiplier=multiplier,
                        stem_multiplier=stem_multiplier, eval_C=eval_C, eval_layers=eval_layers)
        if max_skip is not None and max_skip < 0:
            raise UserError(f"max_skip must be >= 0 or None (no restriction), got {max_skip}")
        self.C, self.num_classes, self.in_channels = C, num_classes, in_channels
        self.steps, self.multiplier, self.stem_multiplier = steps, multiplier, stem_multiplier
        self.max_skip, self.eval_C, self.eval_layers, self.image_size = max_skip, eval_C, eval_layers, image_size
        self.candidates = {"normal": self._ops("normal_ops", normal_ops), "reduce": self._ops("reduce_ops", reduce_ops)}
        check_partial_k(C, partial_k)
        self.partial_k, self.edge_normalised = partial_k, edge_norm

    eval_networks = NETWORKS

    @classmethod
    def eval_network(cls, arch: Genotype, data: DataShape, C: int = 36, layers: int = 20, auxiliary: bool = True,
                     network: str = "cifar") -> NetworkEval:
        check_image_size(data.size, "the dataset's")
        return NetworkEval(arch, C, data.num_classes, layers, data.in_channels, auxiliary, network)

    @classmethod
    def eval_cost(cls, arch: Genotype, data: DataShape, C: int, layers: int, network: str = "cifar"
                  ) -> tuple[int, float]:
        """Exact parameters (auxiliary head excluded) and FLOPs (M multiply-adds, thop) of the eval network. The
        CIFAR network's FLOPs come from the per-op table (search_spaces/darts_cost.py, equal to thop on the built
        network and much faster); the table does not know the ImageNet stems, so that network is profiled."""
        from nas.metrics import flops_millions
        from search_spaces.darts_cost import eval_flops_millions

        params = eval_param_count(arch, C, layers, data.num_classes, data.in_channels, network)
        if network == "cifar":
            return params, eval_flops_millions(arch, C, layers, data.num_classes, data.in_channels, data.size)
        net = NetworkEval(arch, C, data.num_classes, layers, data.in_channels, False, network)
        return params, flops_millions(net, (1, data.in_channels, data.size, data.size))

    @classmethod
    def ops_per_edge(cls, sections: dict[str, Any]) -> int:
        model = sections["model"]
        return min(len(model.normal_ops), len(model.reduce_ops))

    @classmethod
    def from_config(cls, sections: dict[str, Any], data: DataShape) -> DartsSpace:
        check_image_size(data.size, "the dataset's")
        m = sections["model"]
        return cls(C=m.C, num_classes=data.num_classes, in_channels=data.in_channels, normal_ops=m.normal_ops,
                   reduce_ops=m.reduce_ops, steps=m.steps, multiplier=m.multiplier, stem_multiplier=m.stem_multiplier,
                   max_skip=m.max_skip, eval_C=m.eval_C, eval_layers=m.eval_layers, image_size=data.size,
                   partial_k=m.partial_k if m.mixture == "partial" else 1, edge_norm=m.edge_norm)

    def regularise(self, model: nn.Module, rate: float, epoch: int, epochs: int, warmup: int) -> dict[str, float]:
        """P-DARTS dropout after identity skips, decayed within the stage."""
        p = skip_dropout_rate(rate, epoch, epochs, warmup)
        model.set_skip_dropout(p)
        return {"skip_dropout": p}

    @staticmethod
    def _ops(key: str, names: list[str]) -> list[str]:
        ops = [_canonical(name) for name in names]
        if not ops or len(set(ops)) != len(ops):
            raise UserError(f"{key} must list at least one op, each once; got {list(names)}")
        return ops

    def initial_kept_ops(self) -> KeptOps:
        n = edges_per_cell(self.steps)
        return {group: [list(ops) for _ in range(n)] for group, ops in self.candidates.items()}

    def build_supernet(self, kept_ops: KeptOps, layers: int) -> SearchNetwork:
        return SearchNetwork(self.C, self.num_classes, layers, self.in_channels, kept_ops, self.steps,
                             self.multiplier, self.stem_multiplier, self.partial_k)

    def derive(self, probs: dict[str, torch.Tensor], kept_ops: KeptOps, max_skip: int | None = None) -> Genotype:
        return derive_genotype(probs, kept_ops, self.steps, self.multiplier,
                               self.max_skip if max_skip is None else max_skip)

    def max_skip_choices(self) -> list[int]:
        """The skip limits a final genotype is reported for (P-DARTS: every M from 2 * steps down to 0)."""
        return list(range(2 * self.steps, -1, -1))

    def cell_layout(self, kept_ops: KeptOps) -> dict[str, CellLayout]:
        """The decisions of a genotype per cell type: each node's input edges, the kept ops, the skip limit."""
        nodes = [list(edges) for edges in _node_edges(self.steps)]
        kept = _canonical_kept(kept_ops, self.steps)
        return {group: CellLayout(nodes, kept[group], self.max_skip if group == "normal" else None)
                for group in GROUPS}

    def path_architecture(self, path: dict[str, torch.Tensor], kept_ops: KeptOps) -> Genotype:
        """The genotype of a path that runs exactly two edges per node (-1 elsewhere), inputs in index order."""
        kept = _canonical_kept(kept_ops, self.steps)
        cells = {}
        for group in GROUPS:
            row = path[group].tolist()
            cells[group] = []
            for i, edges in enumerate(_node_edges(self.steps)):
                pairs = [(kept[group][e][row[e]], j) for j, e in enumerate(edges) if row[e] != OFF]
                if len(pairs) != 2:
                    raise ValueError(f"{group} node {i}: a genotype path runs exactly 2 input edges, got {len(pairs)}")
                cells[group] += pairs
        concat = list(range(2 + self.steps - self.multiplier, 2 + self.steps))
        return Genotype(normal=cells["normal"], normal_concat=concat, reduce=cells["reduce"], reduce_concat=concat)

    def architecture_path(self, genotype: Genotype, kept_ops: KeptOps) -> dict[str, torch.Tensor]:
        """The supernet path that runs exactly a genotype's edges and ops (the inverse of path_architecture)."""
        kept = _canonical_kept(kept_ops, self.steps)
        specs = _genotype_specs(genotype)
        path = {}
        for group in GROUPS:
            row = [OFF] * edges_per_cell(self.steps)
            for node, edges in zip(specs[group].nodes, _node_edges(self.steps)):
                for name, j in node:
                    if name not in kept[group][edges[j]]:
                        raise UserError(f"{group} edge {edges[j]} does not keep {name!r} (it keeps "
                                        f"{kept[group][edges[j]]})")
                    row[edges[j]] = kept[group][edges[j]].index(name)
            path[group] = torch.tensor(row)
        return path

    def params_millions(self, arch: Genotype) -> float:
        return eval_param_count(arch, self.eval_C, self.eval_layers, self.num_classes, self.in_channels) / 1e6

    def flops_millions(self, arch: Genotype) -> float:
        from search_spaces.darts_cost import eval_flops_millions  # the cost tables build this module's networks

        return eval_flops_millions(arch, self.eval_C, self.eval_layers, self.num_classes, self.in_channels,
                                   self.image_size)

    def latency_scale(self) -> dict[str, int]:
        return {"C": self.eval_C, "layers": self.eval_layers, "size": self.image_size,
                "in_channels": self.in_channels, "num_classes": self.num_classes}

    @classmethod
    def latency_parts(cls, scale: dict[str, int], ops: Sequence[str] | None = None) -> dict[str, PartFactory]:
        """The CIFAR eval network's parts (search_spaces/darts_cost.py) over `ops` (default: DARTS_OPS), cells of
        4 nodes concatenated at the output."""
        from search_spaces.darts_cost import latency_parts, part_module

        parts = latency_parts([_canonical(op) for op in (ops or DARTS_OPS)], **scale)
        return {part.key: functools.partial(part_module, part) for part in parts}

    @classmethod
    def latency_ms(cls, arch: Genotype, table: Mapping[str, float], scale: dict[str, int]) -> float:
        from search_spaces.darts_cost import eval_latency_ms

        return eval_latency_ms(arch, table, **scale)

    @classmethod
    def random_architecture(cls, rng: random.Random, ops: Sequence[str] | None = None) -> Genotype:
        """Per node two distinct inputs, each with an op drawn uniformly from `ops` without `none`."""
        names = [_canonical(op) for op in (ops or DARTS_OPS) if _canonical(op) != NONE]
        cells = {group: [(rng.choice(names), j) for i in range(4) for j in sorted(rng.sample(range(2 + i), 2))]
                 for group in GROUPS}
        return Genotype(normal=cells["normal"], normal_concat=[2, 3, 4, 5], reduce=cells["reduce"],
                        reduce_concat=[2, 3, 4, 5])

    def arch_to_record(self, arch: Genotype) -> dict[str, Any]:
        return arch.to_dict()

    def arch_from_record(self, data: Any) -> Genotype:
        return genotype_from_dict(data)

    def draw(self, arch: Genotype, out_prefix: Path) -> dict[str, np.ndarray]:
        from nas.visualize import cell_image_array, plot_genotype  # graphviz, only where drawings are wanted

        plot_genotype(arch, out_prefix, fmt="png")
        return {cell: cell_image_array(arch, cell) for cell in GROUPS}
