"""The interface a cell search space offers the search engine (nas/search.py)."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import nn

from nas.arch_types import KeptOps


class SearchSpace(ABC):
    """Builds supernets for a set of kept ops, and turns op probabilities into a final architecture."""

    name: str

    @abstractmethod
    def initial_kept_ops(self) -> KeptOps:
        """Every candidate op on every edge of every group."""

    @abstractmethod
    def build_supernet(self, kept_ops: KeptOps, layers: int) -> nn.Module:
        """A supernet whose forward(x, weights=None, path=None) runs the mixture or one path."""

    @abstractmethod
    def derive(self, probs: dict[str, torch.Tensor], kept_ops: KeptOps, max_skip: int | None = None) -> Any:
        """The final architecture (a Genotype for cell spaces) from op probabilities; `max_skip` replaces the
        space's own limit on skip_connects in the normal cell where it has one."""

    @abstractmethod
    def params_millions(self, arch: Any) -> float:
        """Parameters (millions) of the eval-scale network of an architecture, without building it."""
