"""The interface every architecture controller shares; controllers are found by name in controllers/registry.py.

A controller owns architecture logits `alphas[group]` of shape [E, K] (E edges or choice blocks of a group such
as "normal"/"reduce", K ops kept on every edge of that group). The search loop asks it how the supernet should
run during weight steps and during validation, calls `arch_step` every `update_interval` weight steps once the
warm-up is over, calls its epoch and stage hooks, and logs the scalars it returns under the tags it declares.
The space is passed in wherever the controller needs it (duck-typed: controllers never import a space).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from controllers.edge_weights import EdgeNodes, format_edge_weights, node_softmax
from nas.core.arch_types import KeptOps, OpIndices

Batch = tuple[torch.Tensor, torch.Tensor]
Evaluate = Callable[..., tuple[float, float]]  # (**supernet forward kwargs) -> (val loss, val top-1 %)


@dataclass
class ArchStepContext:
    """What a controller may use for one architecture update."""

    model: nn.Module
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    train_batch: Batch | None
    val_batch: Batch
    w_optimizer: torch.optim.Optimizer
    lr: float
    stage: int
    step: int


@dataclass
class StageContext:
    """What a controller is built from for one stage of a search."""

    sections: dict[str, Any]  # this controller's validated config sections
    space: Any  # the search space (search_spaces.base.SearchSpace)
    kept_ops: KeptOps
    stage: int
    num_stages: int
    generator: torch.Generator  # CPU; drives the controller's own randomness


class Controller(nn.Module, ABC):
    """Per-group architecture logits plus the rule that updates them."""

    name: ClassVar[str]  # the registry name, also the prefix of the tags it writes (stage{s}/<name>/...)
    config_sections: ClassVar[dict[str, type]] = {}  # YAML section -> its dataclass (validate(num_stages))
    tags: ClassVar[dict[str, str]] = {}  # every scalar tag it writes, stage{s}/<name>/<key>: meaning
    text_tags: ClassVar[dict[str, str]] = {}  # every text tag it writes
    update_interval: int = 1
    optimizer: torch.optim.Optimizer | None = None  # the architecture optimizer, if any (its lr is logged)
    scores_samples: ClassVar[bool] = False  # it rewards sampled architectures (scored_samples, reward)

    def __init__(self, shapes: dict[str, tuple[int, int]], init_std: float = 1e-3, edge_nodes: EdgeNodes | None = None):
        """`edge_nodes` (controllers/edge_weights.py; empty: none) adds PC-DARTS edge logits `betas[group]` ([E])."""
        super().__init__()
        self.alphas = nn.ParameterDict(
            {group: nn.Parameter(init_std * torch.randn(edges, ops)) for group, (edges, ops) in shapes.items()}
        )
        self.edge_nodes = edge_nodes or {}
        self.betas = nn.ParameterDict(
            {group: nn.Parameter(init_std * torch.randn(shapes[group][0])) for group in self.edge_nodes}
        )

    # ----- construction -----
    @classmethod
    def validate_config(cls, sections: dict[str, Any], num_stages: int) -> None:
        """Raise UserError for the first bad value of this controller's sections."""
        for section in sections.values():
            section.validate(num_stages)

    @classmethod
    @abstractmethod
    def from_config(cls, ctx: StageContext) -> Controller:
        """This stage's controller over the kept ops."""

    @staticmethod
    def shapes(kept_ops: KeptOps) -> dict[str, tuple[int, int]]:
        """Logit shapes [edges, ops kept per edge] per group."""
        return {group: (len(edges), len(edges[0])) for group, edges in kept_ops.items()}

    # ----- what the search asks -----
    def probs(self) -> dict[str, torch.Tensor]:
        """Softmax of every group's logits over its kept ops, detached."""
        return {group: torch.softmax(alpha.detach(), dim=-1) for group, alpha in self.alphas.items()}

    def arch_parameters(self) -> list[nn.Parameter]:
        """The logits an architecture step differentiates: every group's alphas, then its edge logits (if any)."""
        return list(self.alphas.values()) + list(self.betas.values())

    def edge_weights(self) -> dict[str, torch.Tensor]:
        """Per group the weight of every edge, softmax over each node's input edges ([E], differentiable); {}
        without edge normalisation."""
        return {group: node_softmax(beta, self.edge_nodes[group]) for group, beta in self.betas.items()}

    def edge_kwargs(self, differentiable: bool = False) -> dict[str, Any]:
        """The supernet's `edge_weights=` keyword (detached unless `differentiable`); {} without edge logits."""
        if not self.betas:
            return {}
        with torch.set_grad_enabled(differentiable and torch.is_grad_enabled()):
            return {"edge_weights": self.edge_weights()}

    def derivation_scores(self) -> dict[str, torch.Tensor]:
        """What the derivation ranks: the op probabilities, times each edge's weight with edge normalisation
        (PC-DARTS: alpha times beta)."""
        probs, edges = self.probs(), self.edge_kwargs().get("edge_weights", {})
        return {group: p * edges[group][:, None] if group in edges else p for group, p in probs.items()}

    def argmax_path(self) -> OpIndices:
        """The most probable op on every edge."""
        return {group: alpha.detach().argmax(dim=-1) for group, alpha in self.alphas.items()}

    def architecture(self, space: Any, kept_ops: KeptOps, max_skip: int | None = None) -> Any:
        """The architecture this controller outputs now: the space's derivation from `derivation_scores`."""
        return space.derive(self.derivation_scores(), kept_ops, max_skip)

    def path_architecture(self, space: Any, kept_ops: KeptOps, path: OpIndices) -> Any:
        """The architecture a sampled path stands for (default: the space's architecture of that path)."""
        return space.path_architecture(path, kept_ops)

    def scored_samples(self) -> list[tuple[OpIndices, float]]:
        """(path, reward) of the recently sampled architectures, oldest first (controllers with scores_samples)."""
        return []

    def reward(self, arch: Any, accuracy: float) -> tuple[float, dict[str, float]]:
        """The stage's reward of an architecture with validation accuracy `accuracy` (0..1), and its costs."""
        raise NotImplementedError(f"the {self.name} controller does not score architectures")

    def rescore_accuracy(self, space: Any, kept_ops: KeptOps, arch: Any, evaluate: Evaluate) -> tuple[float, str]:
        """The accuracy (%) the stage's reward of `arch` is computed from when the stage's end rescores it
        (search.select, the SBO check), and what measured it. Default: the top-1 on the whole architecture half of
        the stage's supernet running `arch`; a controller whose reward is training-free answers with its own."""
        return evaluate(path=space.architecture_path(arch, kept_ops))[1], "supernet"

    def arch_active(self, epoch: int, warmup: int) -> bool:
        """Whether training epoch `epoch` interleaves architecture steps (default: after the warm-up)."""
        return epoch >= warmup

    def weight_epochs(self, epochs: int) -> int:
        """How many of the stage's `epochs` train the supernet's weights, first (default: all of them)."""
        return epochs

    def extra_epochs(self, epochs: int, warmup: int) -> int:
        """Epochs after the weight training that update only the architecture (default: none)."""
        return 0

    def on_epoch(self, epoch: int, epochs: int) -> None:
        """Called before every epoch of the stage (0-based, out of `epochs` including extra epochs)."""

    def epoch_scalars(self, evaluate: Evaluate, summary: dict[str, float]) -> dict[str, float]:
        """Scalars for the end-of-epoch summary, keyed by tag suffix (`<name>/<key>` or `lr/arch`); `summary`
        holds the engine's (val/acc is the accuracy under eval_forward_kwargs) and `evaluate` measures others."""
        return {} if self.optimizer is None else {"lr/arch": self.optimizer.param_groups[0]["lr"]}

    def stage_entries(self, space: Any, kept_ops: KeptOps, summary: dict[str, float]) -> dict[str, Any]:
        """Extra entries of the stage record (plain data); `summary` is the stage's last epoch summary. Default: the
        edge weights, with edge normalisation (per group, per node, its input edges' weights in input order)."""
        weights = {g: w.tolist() for g, w in self.edge_kwargs().get("edge_weights", {}).items()}
        return {"edge_weights": {g: [[round(w[e], 6) for e in node] for node in self.edge_nodes[g]]
                                 for g, w in weights.items()}} if weights else {}

    def stage_texts(self, entries: dict[str, Any]) -> dict[str, str]:
        """Text summaries of the stage entries, keyed by tag suffix (declared in `text_tags`). Default: the edge
        weights, under `<name>/edge_weights`."""
        if "edge_weights" not in entries:
            return {}
        return {f"{self.name}/edge_weights": format_edge_weights(entries["edge_weights"])}

    @abstractmethod
    def weight_forward_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for the supernet forward in a weight step (`weights=` or `path=`)."""

    @abstractmethod
    def eval_forward_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for the supernet forward when measuring validation accuracy."""

    @abstractmethod
    def arch_step(self, ctx: ArchStepContext) -> dict[str, float]:
        """Update the architecture logits once; return scalars keyed by tag suffix (`arch/entropy`, `<name>/...`)."""
