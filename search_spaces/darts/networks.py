"""DARTS networks: the search supernet (mixture or single-path) and the fixed networks built from a Genotype.

The cell geometry (edge order, channel layout) is in geometry.py.
"""
from __future__ import annotations

import functools
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nas.core.arch_types import OpIndices
from nas.core.errors import UserError
from search_spaces.base import KeptOps
from search_spaces.darts.genotype import Genotype
from search_spaces.darts.geometry import (
    GROUPS,
    NONE,
    OFF,
    CellDims,
    CellSpec,
    canonical_kept,
    cell_dims,
    check_positive,
    check_spec,
    edge_stride,
    edges_per_cell,
    genotype_specs,
    group_of,
    node_edges,
    out_channels,
    stem_conv,
)
from search_spaces.ops import (
    FactorizedReduce,
    Identity,
    PreActivated,
    ReLUConvBN,
    build_op,
    is_pool,
)
from search_spaces.partial_channels import KeptOp, PartialNode, check_partial_k, partial_edge

# How a supernet edge runs one of its ops (decided once at build time).
_NONE, _PRE, _SKIP, _PLAIN = range(4)

Weights = dict[str, torch.Tensor]  # group -> [E, K] mixture weights


class _Cell(nn.Module):
    """Preprocessing of the two cell inputs to C channels (FactorizedReduce after a reduction)."""

    def __init__(self, dims: CellDims, affine: bool):
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

    def __init__(self, dims: CellDims, kept: list[list[str]], steps: int, multiplier: int, partial_k: int = 1):
        super().__init__(dims, affine=False)
        self.multiplier, self.partial_k = multiplier, partial_k
        self.nodes = [[(e, j) for j, e in enumerate(r)] for r in node_edges(steps)]
        self.strides = [edge_stride(dims.reduction, j) for node in self.nodes for _, j in node]
        self.edges = nn.ModuleList(nn.ModuleList(_search_op(name, dims.C // partial_k, stride) for name in names)
                                   for names, stride in zip(kept, self.strides))
        # Plain Python views for the hot loops: (kind, op) per kept op, and the non-none ops with their index.
        self._ops = [[(_op_kind(op, name), op) for op, name in zip(edge, names)]
                     for edge, names in zip(self.edges, kept)]
        self._active = [[(k, kind, op) for k, (kind, op) in enumerate(ops) if kind != _NONE] for ops in self._ops]
        kept_ops = [[None if kind == _NONE else KeptOp(name, op, kind == _PRE, kind == _SKIP)
                     for (kind, op), name in zip(ops, names)] for ops, names in zip(self._ops, kept)]
        self._partial_nodes = [PartialNode([(e, j, self.strides[e]) for e, j in node], kept_ops)
                               for node in self.nodes] if partial_k > 1 else []

    def forward_mixture(self, s0: torch.Tensor, s1: torch.Tensor, w: list[Sequence[torch.Tensor]],
                        skip_p: float, edge_w: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """Every node sums w[e][k] * op_k(input) over its edges' non-none kept ops, accumulated in place; with
        partial channels (K > 1) each edge's sum runs on C/K channels, times edge_w[e] if given (PartialNode)."""
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        skip = functools.partial(self._skip_dropout, p=skip_p)
        for n, node in enumerate(self.nodes):
            if self.partial_k > 1:
                states.append(self._partial_nodes[n](states, self.partial_k, w, edge_w, skip))
                continue
            acc = None
            for e, j in node:
                acc = self._mix(states[j], e, w[e], skip_p, acc)
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


class SearchNetwork(nn.Module):
    """The DARTS search supernet over per-edge kept ops (P-DARTS masks), in mixture or single-path mode.

    `channels_last` (None: on CPU only) converts the input to channels_last, which every layer then keeps;
    on CPU it makes a search step 1.6x (single path) to 2.6x (mixture) faster (depthwise convs and pools).
    `partial_k` > 1 runs every edge's ops on a random 1/K of its channels (PC-DARTS,
    partial_channels.py).
    """

    def __init__(self, C: int, num_classes: int, layers: int, in_channels: int, kept_ops: KeptOps,
                 steps: int = 4, multiplier: int = 4, stem_multiplier: int = 3, partial_k: int = 1):
        super().__init__()
        check_positive(C=C, num_classes=num_classes, layers=layers, in_channels=in_channels, steps=steps,
                       multiplier=multiplier, stem_multiplier=stem_multiplier, partial_k=partial_k)
        check_partial_k(C, partial_k)
        if multiplier > steps:
            raise UserError(f"multiplier ({multiplier}) cannot exceed steps ({steps}): it counts concatenated nodes")
        self.kept_ops = canonical_kept(kept_ops, steps)
        self.n_ops = {group: len(edges[0]) for group, edges in self.kept_ops.items()}
        self.n_edges = edges_per_cell(steps)
        self.partial_k = partial_k
        self.skip_dropout = 0.0
        self.channels_last: bool | None = None
        dims = cell_dims(C, layers, stem_multiplier, lambda reduction: multiplier)
        self.stem = stem_conv(in_channels, stem_multiplier * C)
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

    def __init__(self, dims: CellDims, spec: CellSpec, affine: bool, pool_bn: bool):
        super().__init__(dims, affine)
        self.concat = list(spec.concat)
        self.inputs = [[j for _, j in node] for node in spec.nodes]
        self.node_ops = nn.ModuleList(
            nn.ModuleList(self._op(name, dims.C, edge_stride(dims.reduction, j), affine, pool_bn) for name, j in node)
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
        super().__init__(*stem_conv(in_channels, C_out))

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
                    stem_multiplier: int) -> list[CellDims]:
    """Channels of every cell; cells output len(concat) * C. After the ImageNet stems both inputs of the first cell
    have C channels and its c_{k-2} has twice the resolution of c_{k-1}, so it starts as after a reduction."""
    def out_multiplier(reduction: bool) -> int:
        return len(specs[group_of(reduction)].concat)

    if network == "imagenet":
        dims = cell_dims(C, layers, 1, out_multiplier)
        return [dims[0]._replace(reduction_prev=True), *dims[1:]]
    return cell_dims(C, layers, stem_multiplier, out_multiplier)


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
        check_positive(C=C, num_classes=num_classes, layers=layers, in_channels=in_channels,
                        stem_multiplier=stem_multiplier)
        _check_network(network, C)
        for group in GROUPS:
            check_spec(group, specs[group])
        dims = _network_layout(specs, C, layers, network, stem_multiplier)
        self.drop_path_prob = 0.0
        self.stem = _network_stem(network, in_channels, C, stem_multiplier)
        self.cells = nn.ModuleList(_FixedCell(d, specs[group_of(d.reduction)], affine, pool_bn) for d in dims)
        self.aux_index = 2 * layers // 3
        aux_channels = out_channels(dims[min(self.aux_index, layers - 1)], specs)
        self.auxiliary_head = _AuxiliaryHead(aux_channels, num_classes, network == "imagenet") if auxiliary else None
        self.classifier = nn.Linear(out_channels(dims[-1], specs), num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(logits, auxiliary logits in training with an auxiliary head, else None)."""
        s0, s1 = self.stem(x)
        aux = None
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i == self.aux_index and self.auxiliary_head is not None and self.training:
                aux = self.auxiliary_head(s1)
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(s1, 1), 1)), aux


class NetworkEval(FixedNetwork):
    """The DARTS eval network of a Genotype (NetworkCIFAR or NetworkImageNet): affine ops, no BN after pools,
    optional auxiliary head."""

    def __init__(self, genotype: Genotype, C: int, num_classes: int, layers: int, in_channels: int, auxiliary: bool,
                 network: str = "cifar"):
        super().__init__(genotype_specs(genotype), C, num_classes, layers, in_channels, auxiliary=auxiliary,
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
    specs = genotype_specs(genotype)
    _check_network(network, C)
    for group in GROUPS:
        check_spec(group, specs[group])
    dims = _network_layout(specs, C, layers, network, 3)
    total = _stem_params(network, in_channels, C)
    for d in dims:
        total += (d.C_pp + d.C_p) * d.C + 4 * d.C  # two 1x1 preprocess convs (or FactorizedReduce) + BNs
        nodes = specs[group_of(d.reduction)].nodes
        total += sum(_op_params(name, d.C, edge_stride(d.reduction, j)) for node in nodes for name, j in node)
    final = out_channels(dims[-1], specs)
    return total + final * num_classes + num_classes
