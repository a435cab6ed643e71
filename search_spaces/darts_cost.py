"""FLOPs of a genotype's eval network from a per-op table, without building the network.

The count is thop's (multiply-accumulates of the leaf modules; ReLU, max pooling and the functional global
pool, sums and concatenations count zero), the same number `nas.metrics.flops_millions(NetworkEval(...))`
gives. Every distinct (op, C, stride, input size), cell preprocessing, stem and classifier is profiled with
thop once, alone, and cached; a genotype's cost is then a sum over its cells, so costing every REINFORCE
sample is cheap.
"""
from __future__ import annotations

import functools
from typing import Callable

import torch
from torch import nn

from nas.genotype import Genotype
from nas.metrics import flops_millions
from search_spaces.darts import (
    GROUPS,
    _check_spec,
    _edge_stride,
    _genotype_specs,
    _group,
    _layout,
    _out_channels,
    _stem,
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


@_cost_table
def op_flops(name: str, C: int, stride: int, size: int) -> float:
    """MACs (millions) of one eval op (affine, no BN after pools) on a 1 x C x size x size input."""
    return flops_millions(build_op(name, C, stride, affine=True), (1, C, size, size))


@_cost_table
def preprocess_flops(C_in: int, C_out: int, size: int, factorized: bool) -> float:
    """MACs (millions) of a cell's input preprocessing: FactorizedReduce after a reduction, else ReLU-1x1-BN."""
    module = FactorizedReduce(C_in, C_out) if factorized else ReLUConvBN(C_in, C_out, 1, 1, 0)
    return flops_millions(module, (1, C_in, size, size))


@_cost_table
def stem_flops(in_channels: int, C_out: int, size: int) -> float:
    """MACs (millions) of the stem conv 3x3 + BN."""
    return flops_millions(_stem(in_channels, C_out), (1, in_channels, size, size))


@_cost_table
def classifier_flops(features: int, num_classes: int) -> float:
    """MACs (millions) of the final linear layer (the global pool is functional: thop counts it zero)."""
    return flops_millions(nn.Linear(features, num_classes), (1, features))


def eval_flops_millions(genotype: Genotype, C: int = 36, layers: int = 20, num_classes: int = 10,
                        in_channels: int = 3, size: int = 32) -> float:
    """MACs (millions) of NetworkEval(genotype) without its auxiliary head on one size x size image."""
    specs = _genotype_specs(genotype)
    for group in GROUPS:
        _check_spec(group, specs[group])
    dims = _layout(C, layers, 3, lambda reduction: len(specs[_group(reduction)].concat))
    total = stem_flops(in_channels, 3 * C, size)
    size_pp = size_p = size
    for d in dims:
        size_out = (size_p + 1) // 2 if d.reduction else size_p
        total += preprocess_flops(d.C_pp, d.C, size_pp, d.reduction_prev) + preprocess_flops(d.C_p, d.C, size_p, False)
        for node in specs[_group(d.reduction)].nodes:
            for name, j in node:
                total += op_flops(name, d.C, _edge_stride(d.reduction, j), size_p if j < 2 else size_out)
        size_pp, size_p = size_p, size_out
    return total + classifier_flops(_out_channels(dims[-1], specs), num_classes)

