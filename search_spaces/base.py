"""The interface a search space offers the search engine (nas/engine/search_loop.py); spaces are found by name in
search_spaces/registry.py. See docs/extending.md for a worked example.
"""
from __future__ import annotations

import random
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Protocol, Sequence

import numpy as np
import torch
from torch import nn

from nas.core.arch_types import NONE_OP, CellLayout, KeptOps, OpIndices
from nas.core.errors import UserError

PartFactory = Callable[[], tuple[nn.Module, tuple[int, ...]]]  # a latency-table part: (module, input shape)


class DataShape(Protocol):
    """What a space needs to know of the dataset to size its networks."""

    in_channels: int
    size: int
    num_classes: int


class SearchSpace(ABC):
    """Builds supernets over kept ops, prunes and derives architectures, costs, draws and records them."""

    name: ClassVar[str]
    config_sections: ClassVar[dict[str, type]] = {}  # YAML section -> its dataclass (each may have validate())
    tags: ClassVar[dict[str, str]] = {}  # scalar tags (stage{s}/...) that `regularise` returns, with meanings
    min_layers: ClassVar[int] = 1  # the fewest cells a supernet can have
    edge_normalised: bool = False  # its supernet takes edge_weights= (PC-DARTS), which relaxing controllers learn

    # ----- construction -----
    @classmethod
    def validate_config(cls, sections: dict[str, Any]) -> None:
        """Raise UserError for the first bad value of this space's sections (default: each section's validate())."""
        for section in sections.values():
            validate = getattr(section, "validate", None)
            if validate is not None:
                validate()

    @classmethod
    @abstractmethod
    def ops_per_edge(cls, sections: dict[str, Any]) -> int:
        """How many candidate ops the first stage searches on the edge with the fewest (bounds stages.keep)."""

    @classmethod
    @abstractmethod
    def from_config(cls, sections: dict[str, Any], data: DataShape) -> SearchSpace:
        """The space for a validated config and a dataset; UserError when the data cannot fit it."""

    # ----- supernets and the search -----
    @abstractmethod
    def initial_kept_ops(self) -> KeptOps:
        """Every candidate op on every edge of every group."""

    @abstractmethod
    def build_supernet(self, kept_ops: KeptOps, layers: int) -> nn.Module:
        """A supernet whose forward(x, weights=None, path=None) runs the mixture or one path (-1: edge off)."""

    def regularise(self, model: nn.Module, rate: float, epoch: int, epochs: int, warmup: int) -> dict[str, float]:
        """Set the supernet's regularisers for a training epoch from the stage's rate; return them as scalars
        named in `tags` (default: none)."""
        return {}

    def prune(self, probs: dict[str, torch.Tensor], kept_ops: KeptOps, n_keep: int, drop_none_first: bool) -> KeptOps:
        """Per edge keep the n_keep most probable ops in their original order (P-DARTS op dropping)."""
        if n_keep < 1:
            raise UserError(f"n_keep must be at least 1, got {n_keep}")
        result: KeptOps = {}
        for group, edges in kept_ops.items():
            table = probs[group].detach().double().cpu().tolist()
            result[group] = []
            for e, names in enumerate(edges):
                candidates = [k for k, name in enumerate(names) if not (drop_none_first and name == NONE_OP)]
                if n_keep > len(candidates):
                    raise UserError(f"cannot keep {n_keep} ops on {group} edge {e}: it has {len(candidates)} "
                                    f"candidates")
                keep = sorted(sorted(candidates, key=lambda k: -table[e][k])[:n_keep])
                result[group].append([names[k] for k in keep])
        return result

    @abstractmethod
    def derive(self, probs: dict[str, torch.Tensor], kept_ops: KeptOps, max_skip: int | None = None) -> Any:
        """The final architecture from op probabilities; `max_skip` replaces the space's own limit on
        skip_connects where it has one."""

    def max_skip_choices(self) -> list[int]:
        """The skip limits a final architecture is also reported for (none by default)."""
        return []

    def cell_layout(self, kept_ops: KeptOps) -> dict[str, CellLayout] | None:
        """The decisions of a genotype per cell type, for controllers that sample genotypes (None: not a cell
        space whose nodes choose two inputs)."""
        return None

    def node_edges(self, kept_ops: KeptOps) -> dict[str, list[list[int]]]:
        """Per group, the edges entering each node, for PC-DARTS edge normalisation (default: those of
        `cell_layout`; none without one)."""
        return {group: [list(edges) for edges in layout.node_edges]
                for group, layout in (self.cell_layout(kept_ops) or {}).items()}

    @abstractmethod
    def path_architecture(self, path: OpIndices, kept_ops: KeptOps) -> Any:
        """The architecture a single path runs."""

    @abstractmethod
    def architecture_path(self, arch: Any, kept_ops: KeptOps) -> OpIndices:
        """The path that runs exactly an architecture's edges and ops (the inverse of path_architecture)."""

    # ----- cost -----
    @abstractmethod
    def params_millions(self, arch: Any) -> float:
        """Parameters (millions) of the eval-scale network of an architecture, without building it."""

    @abstractmethod
    def flops_millions(self, arch: Any) -> float:
        """Multiply-adds (millions) of the eval-scale network on one image of the dataset's size."""

    # ----- latency (nas/benchmarks/latency.py measures the table) -----
    def latency_scale(self) -> dict[str, int]:
        """The eval-scale settings (C, layers, size, ...) a latency table for this search must have been built at."""
        raise UserError(f"the {self.name} space has no latency model; use reward.metric params or flops")

    @classmethod
    def latency_parts(cls, scale: dict[str, int], ops: Sequence[str] | None = None) -> dict[str, PartFactory]:
        """Every part an eval-scale network of `ops` (default: the space's candidate ops) can have, keyed as in a
        latency table: each builds (module, input shape at batch 1)."""
        raise UserError(f"the {cls.name} space has no latency model")

    @classmethod
    def latency_ms(cls, arch: Any, table: Mapping[str, float], scale: dict[str, int]) -> float:
        """Milliseconds of the network of `arch` at `scale`: the sum of its parts' entries in a latency table."""
        raise UserError(f"the {cls.name} space has no latency model; use reward.metric params or flops")

    @classmethod
    def random_architecture(cls, rng: random.Random, ops: Sequence[str] | None = None) -> Any:
        """An architecture drawn uniformly over `ops` (default: the candidate ops), to check latency tables."""
        raise UserError(f"the {cls.name} space cannot draw random architectures")

    @classmethod
    def eval_network(cls, arch: Any, data: DataShape, **settings: Any) -> nn.Module:
        """The network that trains an architecture from scratch (the eval trainer's); UserError where the data
        cannot fit it."""
        raise UserError(f"the {cls.name} space has no eval network")

    def scoring_network(self, arch: Any) -> nn.Module:
        """The eval-scale network of an architecture, freshly initialised, which a training-free estimator scores
        (nas/core/estimators); UserError where the space builds none."""
        raise UserError(f"the {self.name} space builds no network for training-free estimators")

    # ----- records and drawings -----
    def format_arch(self, arch: Any) -> str:
        """The one-line form of an architecture (a genotype string, an architecture string)."""
        return str(arch)

    @abstractmethod
    def arch_to_record(self, arch: Any) -> Any:
        """The architecture as plain JSON data for a record."""

    @abstractmethod
    def arch_from_record(self, data: Any) -> Any:
        """The architecture back from its record form."""

    def draw(self, arch: Any, out_prefix: Path) -> dict[str, np.ndarray]:
        """Write drawings of the architecture next to `out_prefix`; return RGB images (HWC uint8) per cell for
        TensorBoard (default: no drawing)."""
        return {}

