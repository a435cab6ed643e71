"""NAS-Bench-201's cell space: architecture strings, a supernet (mixture, single path, scaled single path), the
benchmark's network and its exact costs.

The cell has 4 nodes; node i sums one op of every earlier node, so there are 6 edges, in the order
(1<-0), (2<-0), (2<-1), (3<-0), (3<-1), (3<-2), and node 3 is the output. The architecture string
writes node by node, ``|op~j|`` per incoming edge: ``|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|...|``.
Every cell of a network shares one architecture, so kept ops, paths and probabilities have one group, "cell";
a path is ``{"cell": LongTensor[6]}``: per edge, the index of its op among the ops kept on that edge.

The network (the benchmark's): stem conv3x3 + BN, three stages of N cells at C, 2C, 4C channels with a
residual reduction block between stages, BN + ReLU, global pool, linear. The benchmark trains every cell at
C=16, N=5; a search's supernet has `model.C` channels and `stages.layers[k]` cells per stage.

The tabular benchmark and the black-box searches on it live in nas/benchmarks/nb201_table.py; it reaches the encoding
below (architecture codes) through the registry, as attributes of :class:`NB201Space`.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nas.core.arch_types import NONE_OP, OpIndices
from nas.core.errors import UserError
from search_spaces.base import DataShape, KeptOps, SearchSpace
from search_spaces.ops import Identity, PreActivated, ReLUConvBN, build_op
from search_spaces.partial_channels import KeptOp, PartialNode, check_mixture, check_partial_k

NB201_OPS: tuple[str, ...] = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
NODES = 4  # node 0 is the cell's input, node 3 its output
EDGES: tuple[tuple[int, int], ...] = tuple((i, j) for i in range(1, NODES) for j in range(i))  # (to, from)
INCOMING: tuple[tuple[tuple[int, int], ...], ...] = tuple(  # per node 1..3, its (edge, source node) pairs
    tuple((e, j) for e, (i, j) in enumerate(EDGES) if i == node) for node in range(1, NODES))
GROUP = "cell"  # the one group of kept ops, paths and probabilities
NUM_ARCHS = len(NB201_OPS) ** len(EDGES)  # 15,625
CHANNEL_STAGES = 3  # C, 2C, 4C channels, with a stride-2 residual block between consecutive stages
EVAL_C, EVAL_N = 16, 5  # the benchmark's network: C=16 and 5 cells per stage
MIN_IMAGE_SIZE = 4  # the two residual reductions halve the map twice
OFF = -1  # a path entry for an edge that runs nothing
_REGISTRY_NAME = {"nor_conv_1x1": "conv_1x1", "nor_conv_3x3": "conv_3x3"}  # both are ReLU-Conv-BN
_KERNEL = {"nor_conv_1x1": 1, "nor_conv_3x3": 3}
_EXAMPLE = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"


# ----------------------------------------------------------------------------------------------
# Architecture strings, paths and codes
# ----------------------------------------------------------------------------------------------

def parse_arch(arch: str) -> tuple[str, ...]:
    """The 6 op names (edge order) of an architecture string; UserError when it is malformed."""
    def bad(why: str) -> UserError:
        return UserError(f"malformed NAS-Bench-201 architecture {arch!r}: {why}; expected e.g. {_EXAMPLE!r} "
                         f"with ops from {', '.join(NB201_OPS)}")

    nodes = str(arch).strip().split("+")
    if len(nodes) != NODES - 1:
        raise bad(f"{len(nodes)} nodes separated by '+', need {NODES - 1}")
    ops: list[str] = []
    for node, text in enumerate(nodes, start=1):
        if len(text) < 2 or text[0] != "|" or text[-1] != "|":
            raise bad(f"node {node} must be enclosed in '|'")
        tokens = text[1:-1].split("|")
        if len(tokens) != node:
            raise bad(f"node {node} has {len(tokens)} inputs, needs {node}")
        for source, token in enumerate(tokens):
            op, _, index = token.partition("~")
            if op not in NB201_OPS:
                raise bad(f"unknown op {op!r}")
            if index != str(source):
                raise bad(f"input {source + 1} of node {node} must read '~{source}', got {token!r}")
            ops.append(op)
    return tuple(ops)


def ops_to_arch(ops: Sequence[str]) -> str:
    """The architecture string of 6 op names in edge order."""
    if len(ops) != len(EDGES) or any(op not in NB201_OPS for op in ops):
        raise UserError(f"a NAS-Bench-201 cell needs {len(EDGES)} ops from {', '.join(NB201_OPS)}, got {list(ops)}")
    return "+".join("|" + "|".join(f"{ops[e]}~{j}" for e, j in pairs) + "|" for pairs in INCOMING)


def _edge_ops(kept_ops: KeptOps | None) -> list[list[str]]:
    return [list(NB201_OPS)] * len(EDGES) if kept_ops is None else _checked_kept(kept_ops)


def arch_to_path(arch: str, kept_ops: KeptOps | None = None) -> OpIndices:
    """{"cell": LongTensor[6]}: the index of each edge's op among its kept ops (default: all 5 ops)."""
    per_edge = _edge_ops(kept_ops)
    ops = parse_arch(arch)
    if any(op not in kept for op, kept in zip(ops, per_edge)):
        raise UserError(f"architecture {arch!r} uses an op that is not kept on its edge")
    return {GROUP: torch.tensor([kept.index(op) for op, kept in zip(ops, per_edge)])}


def path_to_arch(path: OpIndices, kept_ops: KeptOps | None = None) -> str:
    """The architecture string of a path (op indices into each edge's kept ops; default: all 5 ops)."""
    indices = path[GROUP].tolist()
    if OFF in indices:
        raise UserError(f"an NB201 cell runs every edge, but path {indices} turns an edge off")
    return ops_to_arch([kept[i] for kept, i in zip(_edge_ops(kept_ops), indices)])


def index_code(indices: Sequence[int]) -> int:
    """A unique integer in [0, 15625) for the op indices (into NB201_OPS) of the 6 edges: sum_e i_e * 5**e."""
    return sum(int(i) * len(NB201_OPS) ** e for e, i in enumerate(indices))


def code_indices(code: int) -> list[int]:
    """Inverse of :func:`index_code`."""
    return [code // len(NB201_OPS) ** e % len(NB201_OPS) for e in range(len(EDGES))]


def arch_code(arch: str) -> int:
    """The code of an architecture string."""
    return index_code([NB201_OPS.index(op) for op in parse_arch(arch)])


def code_to_arch(code: int) -> str:
    """The architecture string of a code."""
    return ops_to_arch([NB201_OPS[i] for i in code_indices(code)])


def _checked_kept(kept_ops: KeptOps) -> list[list[str]]:
    """The ops kept on the cell's 6 edges; UserError unless every edge keeps the same number of distinct ops."""
    if set(kept_ops) != {GROUP} or len(kept_ops[GROUP]) != len(EDGES):
        raise UserError(f"NB201 kept ops are {{{GROUP!r}: [ops of each of the {len(EDGES)} edges]}}, got "
                        f"{ {group: len(edges) for group, edges in kept_ops.items()} } edges per group")
    edges = kept_ops[GROUP]
    if len({len(ops) for ops in edges}) != 1 or not edges[0]:
        raise UserError(f"every NB201 edge must keep the same non-zero number of ops, got {edges}")
    for ops in edges:
        if len(set(ops)) != len(ops) or any(op not in NB201_OPS for op in ops):
            raise UserError(f"an NB201 edge keeps distinct ops from {', '.join(NB201_OPS)}, got {ops}")
    return edges


# ----------------------------------------------------------------------------------------------
# Networks: the search supernet and the benchmark's network
# ----------------------------------------------------------------------------------------------

class NB201Cell(nn.Module):
    """4 nodes, 6 edges holding their kept ops; returns node 3. `none` is never computed. With `partial_k` > 1
    (PC-DARTS) the edges' ops are built for C/K channels and the mixture runs them on a random C/K of each input."""

    def __init__(self, kept: list[list[str]], C: int, affine: bool, partial_k: int = 1):
        super().__init__()
        self.partial_k = partial_k
        self.edges = nn.ModuleList(
            nn.ModuleList(build_op(_REGISTRY_NAME.get(op, op), C // partial_k, 1, affine) for op in ops)
            for ops in kept)
        # Plain views for the hot loops: per edge, the op of each kept index (None for `none`).
        self._ops = [[None if name == NONE_OP else op for op, name in zip(edge, names)]
                     for edge, names in zip(self.edges, kept)]
        kept_ops = [[None if op is None else KeptOp(name, op, isinstance(op, PreActivated), isinstance(op, Identity))
                     for op, name in zip(ops, names)] for ops, names in zip(self._ops, kept)]
        self._partial_nodes = [PartialNode([(e, j, 1) for e, j in pairs], kept_ops)
                               for pairs in INCOMING] if partial_k > 1 else []

    def forward_mixture(self, x: torch.Tensor, w: list[Sequence[torch.Tensor]],
                        edge_w: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """Every node sums w[e][k] * op_k(input) over its edges' kept ops; ReLU-first ops share one ReLU. With
        partial channels (K > 1) each edge's sum runs on C/K channels, times edge_w[e] if given (PartialNode)."""
        nodes = [x]
        for n, pairs in enumerate(INCOMING):
            if self.partial_k > 1:
                nodes.append(self._partial_nodes[n](nodes, self.partial_k, w, edge_w))
                continue
            acc = None
            for e, j in pairs:
                acc = self._mix(nodes[j], e, w[e], acc)
            nodes.append(torch.zeros_like(x) if acc is None else acc)
        return nodes[-1]

    def _mix(self, source: torch.Tensor, e: int, w_e: Sequence[torch.Tensor],
             acc: torch.Tensor | None) -> torch.Tensor | None:
        """acc + sum_k w_e[k] * op_k(source) over edge e's non-none ops, in place (None: no op ran, acc was None)."""
        relu_source = None
        for k, op in enumerate(self._ops[e]):
            if op is None:
                continue
            if isinstance(op, PreActivated):
                relu_source = F.relu(source) if relu_source is None else relu_source
                y = op.body(relu_source)
            else:
                y = op(source)
            acc = y * w_e[k] if acc is None else acc.addcmul_(y, w_e[k])
        return acc

    def forward_path(self, x: torch.Tensor, path: list[int], scale: Sequence[torch.Tensor] | None) -> torch.Tensor:
        """Every node sums the chosen op of each of its edges, times scale[e] if given; `none` and off edges add
        nothing."""
        nodes = [x]
        for pairs in INCOMING:
            acc = None
            for e, j in pairs:
                op = None if path[e] == OFF else self._ops[e][path[e]]
                if op is None:
                    continue
                y = op(nodes[j]) if scale is None else op(nodes[j]) * scale[e]
                acc = y if acc is None else acc + y
            nodes.append(torch.zeros_like(x) if acc is None else acc)
        return nodes[-1]


class ResidualReduction(nn.Module):
    """The benchmark's stride-2 residual block: ReLUConvBN 3x3 s2 -> ReLUConvBN 3x3, plus avgpool + 1x1 conv.

    The shortcut's pool rounds up (ceil_mode), so odd sizes (MNIST's 7x7 after one reduction) match the conv branch;
    on even sizes it is the benchmark's pool."""

    def __init__(self, C_in: int, C_out: int):
        super().__init__()
        self.conv_a = ReLUConvBN(C_in, C_out, 3, 2, 1)
        self.conv_b = ReLUConvBN(C_out, C_out, 3, 1, 1)
        self.shortcut = nn.Sequential(nn.AvgPool2d(2, 2, ceil_mode=True), nn.Conv2d(C_in, C_out, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_b(self.conv_a(x)) + self.shortcut(x)


def _stem(in_channels: int, C: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, C, 3, padding=1, bias=False), nn.BatchNorm2d(C))


def _head(C_top: int) -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm2d(C_top), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())


def _top_channels(C: int) -> int:
    return C * 2 ** (CHANNEL_STAGES - 1)


class NB201Network(nn.Module):
    """Stem, 3 x N cells with residual reductions, classifier; every cell shares one architecture.

    forward(x, weights=None, path=None, path_scale=None, edge_weights=None): `weights={"cell": [6, K]}` mixes every
    kept op, `path={"cell": LongTensor[6]}` runs one op per edge (-1: the edge is off), `path_scale={"cell": [6]}`
    (with `path`) multiplies each edge's output by a differentiable weight of its op (GDAS); neither is needed when
    every edge keeps a single op (the benchmark's network). `edge_weights={"cell": [6]}` (PC-DARTS edge
    normalisation) multiplies each edge's output too: folded into the op weights of the full mixture and into the
    path's scale. `partial_k` > 1 runs the mixture's ops on a random 1/K of every edge's channels (PC-DARTS,
    search_spaces/partial_channels.py); such a supernet runs no single path. On CPU the input goes channels_last,
    which every layer keeps (a search step runs about 1.7x faster).
    """

    def __init__(self, kept_ops: KeptOps, C: int = 16, cells_per_stage: int = 1, num_classes: int = 10,
                 in_channels: int = 3, affine: bool = False, partial_k: int = 1):
        super().__init__()
        check_partial_k(C, partial_k, multiple=1)
        self.partial_k = partial_k
        kept = _checked_kept(kept_ops)
        self.n_ops = len(kept[0])
        self.stem = _stem(in_channels, C)
        blocks: list[nn.Module] = []
        for stage in range(CHANNEL_STAGES):
            width = C * 2 ** stage
            if stage:
                blocks.append(ResidualReduction(width // 2, width))
            blocks.extend(NB201Cell(kept, width, affine, partial_k) for _ in range(cells_per_stage))
        self.blocks = nn.ModuleList(blocks)
        self._is_cell = [isinstance(block, NB201Cell) for block in blocks]
        self.head = _head(_top_channels(C))
        self.classifier = nn.Linear(_top_channels(C), num_classes)

    def forward(self, x: torch.Tensor, weights: dict[str, torch.Tensor] | None = None, path: OpIndices | None = None,
                path_scale: dict[str, torch.Tensor] | None = None,
                edge_weights: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        if weights is not None and path is not None:
            raise UserError("pass weights= (mixture) or path= (single path), not both")
        if path_scale is not None and (path is None or tuple(path_scale[GROUP].shape) != (len(EDGES),)):
            raise UserError(f"path_scale= goes with path= and holds one value per edge ({len(EDGES)})")
        if weights is None and path is None and self.n_ops != 1:
            raise UserError("this supernet keeps several ops per edge: pass weights= or path=")
        if weights is None and self.partial_k > 1:
            raise UserError("an NB201 supernet with model.mixture: partial runs no single path; use the gradient "
                            "controller, or model.mixture: full with a sampling controller")
        if x.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        edge_w = self._checked_edge_weights(edge_weights)
        partial_edge_w = None if edge_w is None or self.partial_k == 1 else edge_w.unbind(0)
        rows = None if weights is None else [row.unbind(0) for row in self._mixture_weights(weights, edge_w).unbind(0)]
        choice = [0] * len(EDGES) if path is None else self._path_list(path)
        if edge_w is not None and path is not None:  # the edge weight multiplies the output as the scale does
            path_scale = {GROUP: edge_w if path_scale is None else path_scale[GROUP] * edge_w}
        scale = None if path_scale is None else path_scale[GROUP].unbind(0)
        x = self.stem(x)
        for block, is_cell in zip(self.blocks, self._is_cell):
            if not is_cell:
                x = block(x)
            elif rows is not None:
                x = block.forward_mixture(x, rows, partial_edge_w)
            else:
                x = block.forward_path(x, choice, scale)
        return self.classifier(self.head(x))

    @staticmethod
    def _checked_edge_weights(edge_weights: dict[str, torch.Tensor] | None) -> torch.Tensor | None:
        if edge_weights is None:
            return None
        if tuple(edge_weights[GROUP].shape) != (len(EDGES),):
            raise UserError(f"edge_weights= holds one value per edge ({len(EDGES)}), got "
                            f"{tuple(edge_weights[GROUP].shape)}")
        return edge_weights[GROUP]

    def _mixture_weights(self, weights: dict[str, torch.Tensor], edge_w: torch.Tensor | None) -> torch.Tensor:
        """The checked mixture weights; without partial channels the edge weights fold into them (w[e] * b[e])."""
        w = self._checked_weights(weights)
        return w if edge_w is None or self.partial_k > 1 else w * edge_w[:, None]

    def _checked_weights(self, weights: dict[str, torch.Tensor]) -> torch.Tensor:
        w = weights[GROUP]
        if tuple(w.shape) != (len(EDGES), self.n_ops):
            raise UserError(f"weights[{GROUP!r}] must have shape ({len(EDGES)}, {self.n_ops}), got {tuple(w.shape)}")
        return w

    def _path_list(self, path: OpIndices) -> list[int]:
        choice = path[GROUP].tolist()
        if len(choice) != len(EDGES) or not all(OFF <= k < self.n_ops for k in choice):
            raise UserError(f"path[{GROUP!r}] must hold {len(EDGES)} op indices in [0, {self.n_ops}) or -1 (off), "
                            f"got {choice}")
        return choice


def build_network(arch: str, C: int = EVAL_C, cells_per_stage: int = EVAL_N, num_classes: int = 10,
                  in_channels: int = 3) -> NB201Network:
    """The stand-alone network of an architecture string (the benchmark trains C=16, N=5)."""
    kept = {GROUP: [[op] for op in parse_arch(arch)]}
    return NB201Network(kept, C, cells_per_stage, num_classes, in_channels, affine=True)


# ----------------------------------------------------------------------------------------------
# Costs of the benchmark's network, without building it
# ----------------------------------------------------------------------------------------------

def _conv_bn_params(kernel: int, C_in: int, C_out: int) -> int:
    """A bias-free k x k conv and an affine BatchNorm."""
    return kernel * kernel * C_in * C_out + 2 * C_out


def count_params(arch: str, C: int = EVAL_C, cells_per_stage: int = EVAL_N, num_classes: int = 10,
                 in_channels: int = 3) -> int:
    """Parameters of :func:`build_network` (same arguments), from per-op formulas without building it."""
    ops = parse_arch(arch)
    total = _conv_bn_params(3, in_channels, C)  # stem
    for stage in range(CHANNEL_STAGES):
        width = C * 2 ** stage
        if stage:  # residual reduction: two 3x3 ReLUConvBN + a 1x1 shortcut conv
            total += _conv_bn_params(3, width // 2, width) + _conv_bn_params(3, width, width) + width // 2 * width
        total += cells_per_stage * sum(_conv_bn_params(_KERNEL[op], width, width) for op in ops if op in _KERNEL)
    top = _top_channels(C)
    return total + 2 * top + top * num_classes + num_classes  # head BN + classifier


def _profiled(build: Callable[[], nn.Module], shape: tuple[int, ...]) -> float:
    """thop's MACs (millions) of a module built alone. The global RNG is left as it was: a search costs samples as
    it goes, and a resumed run, whose caches start empty, must draw the same random numbers."""
    from nas.core.metrics import flops_millions

    with torch.random.fork_rng(devices=[]):
        return flops_millions(build(), shape)


@functools.cache
def _op_flops(op: str, C: int, size: int) -> float:
    if op == NONE_OP:
        return 0.0
    return _profiled(lambda: build_op(_REGISTRY_NAME.get(op, op), C, 1, affine=True), (1, C, size, size))


@functools.cache
def _stem_flops(in_channels: int, C: int, size: int) -> float:
    return _profiled(lambda: _stem(in_channels, C), (1, in_channels, size, size))


@functools.cache
def _reduction_flops(C_in: int, C_out: int, size: int) -> float:
    return _profiled(lambda: ResidualReduction(C_in, C_out), (1, C_in, size, size))


@functools.cache
def _head_flops(C_top: int, size: int, num_classes: int) -> float:
    return _profiled(lambda: nn.Sequential(_head(C_top), nn.Linear(C_top, num_classes)), (1, C_top, size, size))


def eval_flops_millions(arch: str, C: int = EVAL_C, cells_per_stage: int = EVAL_N, num_classes: int = 10,
                        in_channels: int = 3, size: int = 32) -> float:
    """thop's MACs (millions) of :func:`build_network` on one size x size image, summed from per-part tables (each
    part is profiled once), so costing every REINFORCE sample is cheap."""
    ops = parse_arch(arch)
    total = _stem_flops(in_channels, C, size)
    for stage in range(CHANNEL_STAGES):
        width = C * 2 ** stage
        if stage:
            total += _reduction_flops(width // 2, width, size)
            size = (size + 1) // 2
        total += cells_per_stage * sum(_op_flops(op, width, size) for op in ops)
    return total + _head_flops(_top_channels(C), size, num_classes)


# ----------------------------------------------------------------------------------------------
# The space
# ----------------------------------------------------------------------------------------------

def _check_image_size(size: int) -> None:
    if size < MIN_IMAGE_SIZE:
        raise UserError(f"the dataset's images are {size}x{size}: too small for NB201's two residual reductions, "
                        f"which need at least {MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE}; use a dataset with larger images")


@dataclass
class NB201ModelConfig:
    """The `model:` section of an NB201 search: the supernet's width C (its cells per stage are `stages.layers`),
    its mixture (PC-DARTS partial channels and edge normalisation, as in the DARTS space), and the network whose
    parameters and FLOPs the search reports and rewards (the benchmark's: C=16, N=5)."""

    C: int = 16
    eval_C: int = EVAL_C
    eval_N: int = EVAL_N
    mixture: str = "full"  # "partial": PC-DARTS, every edge's ops run on 1/partial_k of its channels
    partial_k: int = 4  # C must be divisible by K (NB201 never halves a cell's width)
    edge_norm: bool = False  # PC-DARTS edge normalisation: learned weights of a node's input edges

    def validate(self) -> None:
        for key in ("C", "eval_C", "eval_N"):
            value = getattr(self, key)
            if value < 1:
                raise UserError(f"model.{key} must be a positive integer, got {value}")
        check_mixture(self.mixture, self.C, self.partial_k, multiple=1)


class NB201Space(SearchSpace):
    """The NAS-Bench-201 cell space; `layers` of build_supernet is the number of cells per stage (N).

    Derivation takes the most probable op of every edge, `none` included (the benchmark's convention), so op
    dropping never drops `none` first either. A search's cell has no skip limit; the record also reports the cell
    under every limit M (P-DARTS's restriction, `derive(..., max_skip=M)`). There is no regulariser (`regularise`
    returns {}: stages.skip_dropout does nothing here). A cell runs every edge, so there is no cell layout:
    REINFORCE samples NB201 cells with `reinforce.sample: edges`. With `model.edge_norm` each node's input edges
    get learned weights (a softmax over the node's inputs; node 1 has one input, so its edge weighs 1); the
    derivation then ranks alpha times beta, which picks the same op per edge as alpha alone, since every edge is kept.
    """

    name = "nb201"
    config_sections = {"model": NB201ModelConfig}
    min_layers = 1
    # The architecture encoding, which the tabular benchmark (nas/benchmarks/nb201_table.py) reaches through the
    # registry.
    ops = NB201_OPS
    edges = EDGES
    group = GROUP
    num_archs = NUM_ARCHS
    parse_arch = staticmethod(parse_arch)
    arch_code = staticmethod(arch_code)
    code_to_arch = staticmethod(code_to_arch)
    index_code = staticmethod(index_code)
    code_indices = staticmethod(code_indices)

    def __init__(self, C: int = 16, num_classes: int = 10, in_channels: int = 3, eval_C: int = EVAL_C,
                 eval_N: int = EVAL_N, image_size: int = 32, partial_k: int = 1, edge_norm: bool = False):
        self.C, self.num_classes, self.in_channels = C, num_classes, in_channels
        self.eval_C, self.eval_N, self.image_size = eval_C, eval_N, image_size
        self.partial_k, self.edge_normalised = partial_k, edge_norm

    @classmethod
    def ops_per_edge(cls, sections: dict[str, Any]) -> int:
        return len(NB201_OPS)

    @classmethod
    def from_config(cls, sections: dict[str, Any], data: DataShape) -> NB201Space:
        _check_image_size(data.size)
        m = sections["model"]
        return cls(C=m.C, num_classes=data.num_classes, in_channels=data.in_channels, eval_C=m.eval_C,
                   eval_N=m.eval_N, image_size=data.size, partial_k=m.partial_k if m.mixture == "partial" else 1,
                   edge_norm=m.edge_norm)

    @classmethod
    def eval_network(cls, arch: str, data: DataShape, C: int = EVAL_C, layers: int = EVAL_N,
                     auxiliary: bool = False) -> NB201Network:
        """The benchmark's network of an architecture (`layers`: cells per stage); it has no auxiliary head, so
        `auxiliary` (which search.select=probe passes) must be false."""
        if auxiliary:
            raise UserError("the NB201 network has no auxiliary head; set auxiliary off")
        _check_image_size(data.size)
        return build_network(arch, C, layers, data.num_classes, data.in_channels)

    def scoring_network(self, arch: str) -> NB201Network:
        """The benchmark's network at `model.eval_C` and `model.eval_N`."""
        return build_network(arch, self.eval_C, self.eval_N, self.num_classes, self.in_channels)

    def initial_kept_ops(self) -> KeptOps:
        return {GROUP: [list(NB201_OPS) for _ in EDGES]}

    def build_supernet(self, kept_ops: KeptOps, layers: int) -> NB201Network:
        return NB201Network(kept_ops, self.C, layers, self.num_classes, self.in_channels, partial_k=self.partial_k)

    def node_edges(self, kept_ops: KeptOps) -> dict[str, list[list[int]]]:
        """Per node 1..3, its input edges."""
        return {GROUP: [[e for e, _ in pairs] for pairs in INCOMING]}

    def prune(self, probs: dict[str, torch.Tensor], kept_ops: KeptOps, n_keep: int, drop_none_first: bool) -> KeptOps:
        """P-DARTS op dropping; `none` is an NB201 op like any other, so it is never dropped first."""
        return super().prune(probs, kept_ops, n_keep, drop_none_first=False)

    def derive(self, probs: dict[str, torch.Tensor], kept_ops: KeptOps, max_skip: int | None = None) -> str:
        """The architecture string of the most probable op on every edge. With `max_skip` (P-DARTS's restriction,
        which searches use only when asked: None by default) the cell keeps at most that many skip_connects: while it
        has more, the chosen skip with the lowest probability gives way to its edge's next most probable op."""
        scores = probs[GROUP].detach().double().cpu().clone()
        per_edge = _edge_ops(kept_ops)
        while True:
            chosen = scores.argmax(dim=-1)
            skips = [e for e, i in enumerate(chosen.tolist()) if per_edge[e][i] == "skip_connect"]
            movable = [e for e in skips if len(per_edge[e]) > 1]  # a skip alone on its edge cannot give way
            if max_skip is None or len(skips) <= max_skip or not movable:
                return path_to_arch({GROUP: chosen}, kept_ops)
            weakest = min(movable, key=lambda e: scores[e, chosen[e]].item())
            scores[weakest, chosen[weakest]] = -math.inf

    def max_skip_choices(self) -> list[int]:
        """The skip limits a final cell is reported for: every M from 6 (one per edge, no limit) down to 0."""
        return list(range(len(EDGES), -1, -1))

    def path_architecture(self, path: OpIndices, kept_ops: KeptOps) -> str:
        return path_to_arch(path, kept_ops)

    def architecture_path(self, arch: str, kept_ops: KeptOps) -> OpIndices:
        return arch_to_path(arch, kept_ops)

    def params_millions(self, arch: str) -> float:
        return count_params(arch, self.eval_C, self.eval_N, self.num_classes, self.in_channels) / 1e6

    def flops_millions(self, arch: str) -> float:
        return eval_flops_millions(arch, self.eval_C, self.eval_N, self.num_classes, self.in_channels, self.image_size)

    def arch_to_record(self, arch: str) -> str:
        return ops_to_arch(parse_arch(arch))

    def arch_from_record(self, data: Any) -> str:
        return ops_to_arch(parse_arch(data))
