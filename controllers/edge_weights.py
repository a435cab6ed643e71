"""PC-DARTS edge normalisation, the controller's half: one logit per input edge of a node, and the weight of an
edge is the softmax of its logit over the edges entering the same node. The supernet multiplies each edge's output
by its weight, and the derivation ranks edges and ops by op probability times edge weight (alpha times beta).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from nas.core.arch_types import KeptOps

EdgeNodes = dict[str, list[list[int]]]  # per group, the edges entering each intermediate node


def edge_nodes(space: Any, kept_ops: KeptOps) -> EdgeNodes:
    """The node layout of every group (`space.node_edges`) when the space normalises edges (`space.edge_normalised`),
    else {}."""
    return space.node_edges(kept_ops) if getattr(space, "edge_normalised", False) else {}


def node_softmax(logits: torch.Tensor, nodes: Sequence[Sequence[int]]) -> torch.Tensor:
    """[E] edge logits -> [E] weights: a softmax over the edges of each node (differentiable; every edge belongs
    to exactly one node)."""
    index = torch.tensor([e for node in nodes for e in node], device=logits.device)
    values = torch.cat([torch.softmax(logits[list(node)], dim=0) for node in nodes])
    return torch.zeros_like(logits).index_put((index,), values)


def format_edge_weights(weights: dict[str, list[list[float]]]) -> str:
    """One line per group and node from per-node weight lists: the weights of its input edges, in input order."""
    return "\n".join(f"{group} node {i}: " + " ".join(f"{w:.3f}" for w in node)
                     for group, nodes in weights.items() for i, node in enumerate(nodes))
