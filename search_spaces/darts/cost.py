"""FLOPs and latency of a genotype's eval network from per-part tables, without building the network.

The eval network is cut into parts (:class:`Part`): the stem, each cell's two input preprocessings, every op
at its position's input shape, each cell's node sums and output concatenation, and the classifier (global pool
and linear layer). A genotype's cost is a sum over its parts, so costing every REINFORCE sample is cheap.

- FLOPs are thop's count (multiply-accumulates of the leaf modules; ReLU, max pooling and the functional global
  pool, sums and concatenations count zero), the same number `nas.core.metrics.flops_millions(NetworkEval(...))`
  gives: every distinct part is profiled with thop once, alone, and cached.
- Latency comes from a table of measured milliseconds per part key (`nas-latency build`, nas/benchmarks/latency.py):
  :func:`latency_parts` lists every part any genotype of the candidate ops can have, and
  :func:`eval_latency_ms` sums a genotype's parts from the table.
"""
from __future__ import annotations

import functools
from typing import Callable, Iterator, Mapping, NamedTuple, Sequence

import torch
from torch import nn

from nas.core.arch_types import NONE_OP
from nas.core.errors import UserError
from nas.core.metrics import flops_millions
from search_spaces.darts.genotype import Genotype
from search_spaces.darts.geometry import (
    GROUPS,
    CellDims,
    cell_dims,
    check_spec,
    edge_stride,
    genotype_specs,
    group_of,
    out_channels,
    stem_conv,
)
from search_spaces.ops import FactorizedReduce, ReLUConvBN, build_op


def _cost_table(fn: Callable[..., float]) -> Callable[..., float]:
    """Cache `fn`, and keep the global RNG untouched while it builds modules: a search costs samples as it goes,
    and a resumed run, whose cache starts empty, must draw the same random numbers as an uninterrupted one."""

    @functools.cache
    @functools.wraps(fn)
    def cached(*args):
        with torch.random.fork_rng(devices=[]):
            return fn(*args)

    return cached


class Part(NamedTuple):
    """One piece of the eval network whose cost depends only on these arguments."""

    kind: str  # stem | preprocess | op | join | classifier
    args: tuple

    @property
    def key(self) -> str:
        """The part's key in a latency table: `op/sep_conv_3x3/36/1/32`."""
        return "/".join(str(a) for a in (self.kind, *self.args))


class _CellJoin(nn.Module):
    """A cell's node sums (two op outputs each) and output concatenation, on one C x size x size state."""

    def __init__(self, nodes: int, concat: int):
        super().__init__()
        self.nodes, self.concat = nodes, concat

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        states = [x + x for _ in range(self.nodes)]
        return torch.cat(states[-self.concat:], dim=1)


def _positions(C: int, layers: int, size: int, out_multiplier: Callable[[bool], int]
               ) -> Iterator[tuple[CellDims, int, int, int]]:
    """Every cell's dims with the sizes of its two inputs and of its output."""
    size_pp = size_p = size
    for d in cell_dims(C, layers, 3, out_multiplier):
        size_out = (size_p + 1) // 2 if d.reduction else size_p
        yield d, size_pp, size_p, size_out
        size_pp, size_p = size_p, size_out


def _fixed_parts(d: CellDims, size_pp: int, size_p: int, size_out: int, nodes: int, concat: int) -> list[Part]:
    return [Part("preprocess", (d.C_pp, d.C, size_pp, d.reduction_prev)),
            Part("preprocess", (d.C_p, d.C, size_p, False)), Part("join", (d.C, size_out, nodes, concat))]


def genotype_parts(genotype: Genotype, C: int = 36, layers: int = 20, num_classes: int = 10, in_channels: int = 3,
                   size: int = 32) -> list[Part]:
    """The parts of NetworkEval(genotype) without its auxiliary head, in order."""
    specs = genotype_specs(genotype)
    for group in GROUPS:
        check_spec(group, specs[group])
    parts = [Part("stem", (in_channels, 3 * C, size))]
    d = None
    for d, size_pp, size_p, size_out in _positions(C, layers, size, lambda r: len(specs[group_of(r)].concat)):
        spec = specs[group_of(d.reduction)]
        parts += _fixed_parts(d, size_pp, size_p, size_out, len(spec.nodes), len(spec.concat))
        parts += [Part("op", (name, d.C, edge_stride(d.reduction, j), size_p if j < 2 else size_out))
                  for node in spec.nodes for name, j in node]
    assert d is not None
    return parts + [Part("classifier", (out_channels(d, specs), num_classes, size_out))]


def latency_parts(ops: Sequence[str], C: int = 36, layers: int = 20, num_classes: int = 10, in_channels: int = 3,
                  size: int = 32, steps: int = 4, multiplier: int = 4) -> list[Part]:
    """Every distinct part a genotype over `ops` (`none` left out) with `steps` nodes and `multiplier` outputs can
    have: each op at every position's input shape and stride, plus the fixed parts."""
    parts = [Part("stem", (in_channels, 3 * C, size))]
    d = None
    for d, size_pp, size_p, size_out in _positions(C, layers, size, lambda r: multiplier):
        parts += _fixed_parts(d, size_pp, size_p, size_out, steps, multiplier)
        shapes = {(edge_stride(d.reduction, j), size_p if j < 2 else size_out) for j in range(1 + steps)}
        parts += [Part("op", (name, d.C, stride, at)) for name in ops if name != NONE_OP for stride, at in shapes]
    assert d is not None
    parts.append(Part("classifier", (multiplier * d.C, num_classes, size_out)))
    return list(dict.fromkeys(parts))


def part_module(part: Part) -> tuple[nn.Module, tuple[int, ...]]:
    """The part as a module of the eval network (affine ops, no BN after pools) and its input shape (batch 1)."""
    kind, args = part
    if kind == "stem":
        in_channels, C_out, size = args
        return stem_conv(in_channels, C_out), (1, in_channels, size, size)
    if kind == "preprocess":
        C_in, C_out, size, factorized = args
        module = FactorizedReduce(C_in, C_out) if factorized else ReLUConvBN(C_in, C_out, 1, 1, 0)
        return module, (1, C_in, size, size)
    if kind == "op":
        name, C, stride, size = args
        return build_op(name, C, stride, affine=True), (1, C, size, size)
    if kind == "join":
        C, size, nodes, concat = args
        return _CellJoin(nodes, concat), (1, C, size, size)
    features, num_classes, size = args
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(features, num_classes)), \
        (1, features, size, size)


@_cost_table
def part_flops(part: Part) -> float:
    """MACs (millions) of one part, profiled alone with thop; the classifier's global pool is functional in the
    network, so only its linear layer counts."""
    if part.kind == "classifier":
        features, num_classes, _ = part.args
        return flops_millions(nn.Linear(features, num_classes), (1, features))
    return flops_millions(*part_module(part))


def eval_flops_millions(genotype: Genotype, C: int = 36, layers: int = 20, num_classes: int = 10,
                        in_channels: int = 3, size: int = 32) -> float:
    """MACs (millions) of NetworkEval(genotype) without its auxiliary head on one size x size image."""
    return sum(part_flops(p) for p in genotype_parts(genotype, C, layers, num_classes, in_channels, size))


def eval_latency_ms(genotype: Genotype, table: Mapping[str, float], C: int = 36, layers: int = 20,
                    num_classes: int = 10, in_channels: int = 3, size: int = 32) -> float:
    """Milliseconds of NetworkEval(genotype) on one image: the sum of its parts' entries in a latency table;
    UserError naming a part the table lacks."""
    total = 0.0
    for part in genotype_parts(genotype, C, layers, num_classes, in_channels, size):
        if part.key not in table:
            raise UserError(f"the latency table has no entry {part.key!r}; rebuild it with that op "
                            f"(nas-latency build --ops ...)")
        total += table[part.key]
    return total
