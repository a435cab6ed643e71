"""The DARTS / P-DARTS space plugin: its config section, derivation of a Genotype, and the SearchSpace class."""
from __future__ import annotations

import functools
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from nas.core.arch_types import CellLayout, skips_needed
from nas.core.errors import UserError
from search_spaces.base import DataShape, KeptOps, PartFactory, SearchSpace
from search_spaces.darts.genotype import Genotype, genotype_from_dict
from search_spaces.darts.geometry import (
    GROUPS,
    NONE,
    OFF,
    SKIP,
    canonical,
    canonical_kept,
    check_positive,
    edges_per_cell,
    genotype_specs,
    node_edges,
)
from search_spaces.darts.networks import (
    NETWORKS,
    NetworkEval,
    SearchNetwork,
    eval_param_count,
)
from search_spaces.ops import DARTS_OPS, canonical_op_name
from search_spaces.partial_channels import check_mixture, check_partial_k

# ----------------------------------------------------------------------------------------------
# Derivation and op dropping
# ----------------------------------------------------------------------------------------------

def _derive_cell(scores: list[list[float]], kept: list[list[str]], steps: int,
                 group: str) -> list[tuple[str, int, int]]:
    """Per node the two edges with the strongest non-none op, each with that op: (op, input, edge)."""
    gene = []
    for i, edges in enumerate(node_edges(steps)):
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
    kept = canonical_kept(kept_ops, steps)
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
        check_mixture(self.mixture, self.C, self.partial_k)
        nodes = [list(edges) for edges in node_edges(self.steps)]
        forced = skips_needed(CellLayout(nodes, [self.normal_ops] * edges_per_cell(self.steps), self.max_skip))[0]
        if forced > self.max_skip:
            raise UserError(f"no normal cell fits model.max_skip={self.max_skip}: with normal_ops {self.normal_ops} "
                            f"every chosen edge is a skip_connect ({forced} per cell); raise model.max_skip or add ops")


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
        check_positive(C=C, num_classes=num_classes, in_channels=in_channels, steps=steps, multiplier=multiplier,
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
        CIFAR network's FLOPs come from the per-op table (search_spaces/darts/cost.py, equal to thop on the built
        network and much faster); the table does not know the ImageNet stems, so that network is profiled."""
        from nas.core.metrics import flops_millions
        from search_spaces.darts.cost import eval_flops_millions

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
        ops = [canonical(name) for name in names]
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
        nodes = [list(edges) for edges in node_edges(self.steps)]
        kept = canonical_kept(kept_ops, self.steps)
        return {group: CellLayout(nodes, kept[group], self.max_skip if group == "normal" else None)
                for group in GROUPS}

    def path_architecture(self, path: dict[str, torch.Tensor], kept_ops: KeptOps) -> Genotype:
        """The genotype of a path that runs exactly two edges per node (-1 elsewhere), inputs in index order."""
        kept = canonical_kept(kept_ops, self.steps)
        cells = {}
        for group in GROUPS:
            row = path[group].tolist()
            cells[group] = []
            for i, edges in enumerate(node_edges(self.steps)):
                pairs = [(kept[group][e][row[e]], j) for j, e in enumerate(edges) if row[e] != OFF]
                if len(pairs) != 2:
                    raise ValueError(f"{group} node {i}: a genotype path runs exactly 2 input edges, got {len(pairs)}")
                cells[group] += pairs
        concat = list(range(2 + self.steps - self.multiplier, 2 + self.steps))
        return Genotype(normal=cells["normal"], normal_concat=concat, reduce=cells["reduce"], reduce_concat=concat)

    def architecture_path(self, genotype: Genotype, kept_ops: KeptOps) -> dict[str, torch.Tensor]:
        """The supernet path that runs exactly a genotype's edges and ops (the inverse of path_architecture)."""
        kept = canonical_kept(kept_ops, self.steps)
        specs = genotype_specs(genotype)
        path = {}
        for group in GROUPS:
            row = [OFF] * edges_per_cell(self.steps)
            for node, edges in zip(specs[group].nodes, node_edges(self.steps)):
                for name, j in node:
                    if name not in kept[group][edges[j]]:
                        raise UserError(f"{group} edge {edges[j]} does not keep {name!r} (it keeps "
                                        f"{kept[group][edges[j]]})")
                    row[edges[j]] = kept[group][edges[j]].index(name)
            path[group] = torch.tensor(row)
        return path

    def scoring_network(self, arch: Genotype) -> NetworkEval:
        """The CIFAR eval network at the eval scale (`model.eval_C`, `model.eval_layers`), no auxiliary head."""
        return NetworkEval(arch, self.eval_C, self.num_classes, self.eval_layers, self.in_channels, auxiliary=False)

    def params_millions(self, arch: Genotype) -> float:
        return eval_param_count(arch, self.eval_C, self.eval_layers, self.num_classes, self.in_channels) / 1e6

    def flops_millions(self, arch: Genotype) -> float:
        from search_spaces.darts.cost import eval_flops_millions  # the cost tables build this module's networks

        return eval_flops_millions(arch, self.eval_C, self.eval_layers, self.num_classes, self.in_channels,
                                   self.image_size)

    def latency_scale(self) -> dict[str, int]:
        return {"C": self.eval_C, "layers": self.eval_layers, "size": self.image_size,
                "in_channels": self.in_channels, "num_classes": self.num_classes}

    @classmethod
    def latency_parts(cls, scale: dict[str, int], ops: Sequence[str] | None = None) -> dict[str, PartFactory]:
        """The CIFAR eval network's parts (search_spaces/darts/cost.py) over `ops` (default: DARTS_OPS), cells of
        4 nodes concatenated at the output."""
        from search_spaces.darts.cost import latency_parts, part_module

        parts = latency_parts([canonical(op) for op in (ops or DARTS_OPS)], **scale)
        return {part.key: functools.partial(part_module, part) for part in parts}

    @classmethod
    def latency_ms(cls, arch: Genotype, table: Mapping[str, float], scale: dict[str, int]) -> float:
        from search_spaces.darts.cost import eval_latency_ms

        return eval_latency_ms(arch, table, **scale)

    @classmethod
    def random_architecture(cls, rng: random.Random, ops: Sequence[str] | None = None) -> Genotype:
        """Per node two distinct inputs, each with an op drawn uniformly from `ops` without `none`."""
        names = [canonical(op) for op in (ops or DARTS_OPS) if canonical(op) != NONE]
        cells = {group: [(rng.choice(names), j) for i in range(4) for j in sorted(rng.sample(range(2 + i), 2))]
                 for group in GROUPS}
        return Genotype(normal=cells["normal"], normal_concat=[2, 3, 4, 5], reduce=cells["reduce"],
                        reduce_concat=[2, 3, 4, 5])

    def arch_to_record(self, arch: Genotype) -> dict[str, Any]:
        return arch.to_dict()

    def arch_from_record(self, data: Any) -> Genotype:
        return genotype_from_dict(data)

    def draw(self, arch: Genotype, out_prefix: Path) -> dict[str, np.ndarray]:
        from search_spaces.darts.drawing import (  # graphviz, only where drawings are wanted
            cell_image_array,
            plot_genotype,
        )

        plot_genotype(arch, out_prefix, fmt="png")
        return {cell: cell_image_array(arch, cell) for cell in GROUPS}
