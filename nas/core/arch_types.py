"""Plain types that search spaces and controllers share without importing each other."""
from __future__ import annotations

from typing import NamedTuple

import torch

NONE_OP = "none"
SKIP_OP = "skip_connect"
KeptOps = dict[str, list[list[str]]]  # group -> per edge, the op names still searched on that edge
OpIndices = dict[str, torch.Tensor]  # group -> LongTensor[E]: per edge the kept-op index a path runs (-1: off)


class CellLayout(NamedTuple):
    """The decision structure of one cell type, as a genotype-sampling controller sees it.

    `node_edges[i][j]` is the flat edge index that carries input j into intermediate node i; `ops[e]` lists the
    op names still kept on edge e; the cell may hold at most `max_skip` skip_connects (None: no limit).
    """

    node_edges: list[list[int]]
    ops: list[list[str]]
    max_skip: int | None


def skips_needed(layout: CellLayout) -> list[int]:
    """Per node i (and one past the last), the fewest skips nodes i.. must hold: an edge whose only non-none op is
    skip_connect forces a skip when chosen, and each node chooses two edges with a non-none op (dynamic programme
    from the last node; a node without two such edges counts as needing none, which other checks refuse)."""
    forced = [[name for name in names if name != NONE_OP] == [SKIP_OP] for names in layout.ops]
    usable = [any(name != NONE_OP for name in names) for names in layout.ops]
    need = [0]
    for edges in reversed(layout.node_edges):
        costs = sorted(int(forced[e]) for e in edges if usable[e])
        need.insert(0, need[0] + sum(costs[:2]))
    return need
