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
