"""Genotype: the discrete architecture of a DARTS-style cell pair."""
from __future__ import annotations

from typing import NamedTuple


class Genotype(NamedTuple):
    """Per cell type, (op, input index) pairs (two per node) and the node indices concatenated at the output.

    Input index 0 is c_{k-2}, 1 is c_{k-1}, j >= 2 is intermediate node j-2.
    """

    normal: list[tuple[str, int]]
    normal_concat: list[int]
    reduce: list[tuple[str, int]]
    reduce_concat: list[int]
