"""Geometry of a DARTS cell and network, shared by the networks (networks.py) and the costing (cost.py).

Edges of a cell are ordered node by node: node 0's two inputs (c_{k-2}, c_{k-1}), node 1's three
inputs (c_{k-2}, c_{k-1}, node 0), and so on; input index j >= 2 is intermediate node j-2.
Cells are grouped as normal and reduce; reductions sit at layers//3 and 2*layers//3.
"""
from __future__ import annotations

import functools
from typing import Callable, NamedTuple

from torch import nn

from nas.core.arch_types import NONE_OP, SKIP_OP
from nas.core.errors import UserError
from search_spaces.base import KeptOps
from search_spaces.darts.genotype import Genotype
from search_spaces.ops import canonical_op_name

NONE = NONE_OP
SKIP = SKIP_OP
OFF = -1  # a path entry for an edge that runs nothing
GROUPS: tuple[str, ...] = ("normal", "reduce")
NodeSpec = list[list[tuple[str, int]]]  # per node, the (op, input index) pairs it sums


class CellSpec(NamedTuple):
    """A fixed cell: the (op, input) pairs of every node and the states concatenated at the output."""

    nodes: NodeSpec
    concat: list[int]


def edges_per_cell(steps: int) -> int:
    """Number of edges of a cell with `steps` intermediate nodes (14 for 4)."""
    return sum(2 + i for i in range(steps))


def node_edges(steps: int) -> list[range]:
    """Per node, the range of flat edge indices entering it (edge start + j reads input j)."""
    ranges, start = [], 0
    for i in range(steps):
        ranges.append(range(start, start + 2 + i))
        start += 2 + i
    return ranges


def edge_stride(reduction: bool, input_index: int) -> int:
    return 2 if reduction and input_index < 2 else 1


class CellDims(NamedTuple):
    C_pp: int
    C_p: int
    C: int
    reduction: bool
    reduction_prev: bool


def cell_dims(C: int, layers: int, stem_multiplier: int, out_multiplier: Callable[[bool], int]) -> list[CellDims]:
    """Channels of every cell: reductions at layers//3 and 2*layers//3 double C."""
    C_pp = C_p = stem_multiplier * C
    C_curr, reduction_prev, dims = C, False, []
    for i in range(layers):
        reduction = i in (layers // 3, 2 * layers // 3)
        C_curr = 2 * C_curr if reduction else C_curr
        dims.append(CellDims(C_pp, C_p, C_curr, reduction, reduction_prev))
        C_pp, C_p, reduction_prev = C_p, out_multiplier(reduction) * C_curr, reduction
    return dims


def stem_conv(in_channels: int, C_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, C_out, 3, padding=1, bias=False), nn.BatchNorm2d(C_out))


def check_positive(**values: int) -> None:
    for key, value in values.items():
        if not isinstance(value, int) or value < 1:
            raise UserError(f"{key} must be a positive integer, got {value!r}")


@functools.cache  # canonical_kept spells every kept op of every edge each time a path becomes a genotype
def canonical(name: str) -> str:
    try:
        return canonical_op_name(name)
    except ValueError as err:
        raise UserError(str(err)) from None


def genotype_specs(genotype: Genotype) -> dict[str, CellSpec]:
    """Per cell type, the node specs of a genotype (two pairs per node; as many nodes as pairs / 2), validated."""
    specs = {}
    for group in GROUPS:
        pairs, concat = getattr(genotype, group), list(getattr(genotype, f"{group}_concat"))
        if not pairs or len(pairs) % 2:
            raise UserError(f"genotype.{group} must list two (op, input) pairs per node, got {len(pairs)} pairs")
        nodes = [[(canonical(name), int(j)) for name, j in pairs[i:i + 2]] for i in range(0, len(pairs), 2)]
        specs[group] = CellSpec(nodes, concat)
    return specs


def check_spec(group: str, spec: CellSpec) -> None:
    for i, node in enumerate(spec.nodes):
        if any(not 0 <= j < 2 + i for _, j in node):
            raise UserError(f"{group} node {i} reads input {[j for _, j in node]}; inputs must be in [0, {2 + i})")
    if not spec.concat or any(not 0 <= j < 2 + len(spec.nodes) for j in spec.concat):
        raise UserError(f"{group} concat {spec.concat} must name states in [0, {2 + len(spec.nodes)})")


def group_of(reduction: bool) -> str:
    return "reduce" if reduction else "normal"


def out_channels(dims: CellDims, specs: dict[str, CellSpec]) -> int:
    return len(specs[group_of(dims.reduction)].concat) * dims.C


def canonical_kept(kept_ops: KeptOps, steps: int) -> dict[str, list[list[str]]]:
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
        result[group] = [[canonical(name) for name in names] for names in edges]
        if any(len(set(names)) != len(names) for names in result[group]):
            raise UserError(f"kept_ops[{group!r}] lists an op twice on one edge; keep each op once per edge")
    return result
