"""Behaviour policies: the distributions the REINFORCE controller samples architectures from.

Every policy is a product of independent per-edge categoricals mu_e over the ops kept on that edge,
computed from the controller's logits theta (group -> [E, K]):

- ``multinomial``: mu_e = softmax(theta_e), i.e. on-policy;
- ``uniform``: mu_e = 1 / K;
- ``epsilon_greedy``: mu_e = eps / K + (1 - eps) [a_e = argmax theta_e];
- ``argmax``: the greedy op with probability 1 (epsilon_greedy with eps = 0), so log mu is 0 for the
  greedy path and -inf for every other path.

Paths are sampled in batches, ``group -> LongTensor[n, E]`` (:data:`BatchedPaths`), with one
``torch.multinomial`` call per group; :func:`unstack_paths` turns a batch into the per-path dicts the
supernet takes.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Callable, ClassVar, Sequence

import torch

from nas.core.arch_types import OpIndices
from nas.core.errors import UserError

BatchedPaths = dict[str, torch.Tensor]  # group -> LongTensor[n, E]: op index per sample and edge


def stack_paths(paths: Sequence[OpIndices]) -> BatchedPaths:
    """Stack n paths (group -> LongTensor[E]) into one batch (group -> LongTensor[n, E])."""
    return {group: torch.stack([path[group] for path in paths]) for group in paths[0]}


def unstack_paths(batch: BatchedPaths) -> list[OpIndices]:
    """Split a batch (group -> LongTensor[n, E]) into n paths (group -> LongTensor[E])."""
    n = len(next(iter(batch.values())))
    return [{group: ops[i] for group, ops in batch.items()} for i in range(n)]


def log_softmax(logits: torch.Tensor) -> torch.Tensor:
    """log softmax over the last dimension, as logits - logsumexp.

    Same values as torch.log_softmax, but torch's CPU (log_)softmax kernels open a thread-parallel region
    even for a [14, 8] tensor, which costs 3-30 ms per call on a loaded 2-core machine against ~0.1 ms here.
    """
    return logits - logits.logsumexp(dim=-1, keepdim=True)


def edge_log_probs(log_probs: dict[str, torch.Tensor], batch: BatchedPaths) -> torch.Tensor:
    """log p_e(a_e) of every sampled op: [n, sum of E], groups concatenated in `log_probs` order.

    `log_probs[group]` is [E, K] (log-probabilities of every op on every edge). The log-probability of a
    whole path is the sum over the last dimension.
    """
    return torch.cat([log_p.gather(1, batch[group].to(log_p.device).T).T for group, log_p in log_probs.items()],
                     dim=1)


class BehaviourPolicy(ABC):
    """A per-edge categorical mu built from the controller's logits."""

    name: ClassVar[str]

    @abstractmethod
    def edge_probs(self, logits: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """mu_e for every row (edge or decision) of `logits` [D, K]: each row sums to 1 over the options that
        `mask` (bool [D, K], None: all) allows, and is 0 elsewhere."""

    def sample(self, logits: dict[str, torch.Tensor], n: int,
               generator: torch.Generator | None = None) -> BatchedPaths:
        """n paths drawn from mu; the generator (on the logits' device) makes the draw reproducible."""
        return {
            group: torch.multinomial(self.edge_probs(theta.detach()), n, replacement=True, generator=generator).T
            for group, theta in logits.items()
        }

    def edge_log_prob(self, logits: dict[str, torch.Tensor], batch: BatchedPaths) -> torch.Tensor:
        """log mu_e(a_e) for every path and edge of the batch: [n, sum of E] (-inf where mu_e is 0)."""
        return edge_log_probs({group: self.edge_probs(theta.detach()).log() for group, theta in logits.items()}, batch)

    def log_prob(self, logits: dict[str, torch.Tensor], batch: BatchedPaths) -> torch.Tensor:
        """log mu(path) for every path of the batch: [n] (-inf where mu gives the path no mass)."""
        return self.edge_log_prob(logits, batch).sum(dim=1)


class Multinomial(BehaviourPolicy):
    """On-policy: mu = pi = softmax(theta)."""

    name = "multinomial"

    def edge_probs(self, logits: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return log_softmax(logits if mask is None else logits.masked_fill(~mask, -math.inf)).exp()


class Uniform(BehaviourPolicy):
    """Every kept op of an edge equally likely."""

    name = "uniform"

    def edge_probs(self, logits: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is None:
            return torch.full_like(logits, 1.0 / logits.shape[-1])
        return mask.to(logits.dtype) / mask.sum(dim=-1, keepdim=True)


class EpsilonGreedy(BehaviourPolicy):
    """The greedy op with probability 1 - eps, else a uniformly random op (which may be the greedy one)."""

    name = "epsilon_greedy"

    def __init__(self, epsilon: float):
        if not 0.0 <= epsilon <= 1.0:
            raise UserError(f"epsilon must lie in [0, 1], got {epsilon}")
        self.epsilon = float(epsilon)

    def edge_probs(self, logits: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is not None:
            logits = logits.masked_fill(~mask, -math.inf)
        greedy = torch.zeros_like(logits).scatter_(-1, logits.argmax(dim=-1, keepdim=True), 1.0)
        return self.epsilon * Uniform().edge_probs(logits, mask) + (1.0 - self.epsilon) * greedy


class Argmax(EpsilonGreedy):
    """Deterministic greedy: the argmax op on every edge, no exploration."""

    name = "argmax"

    def __init__(self) -> None:
        super().__init__(0.0)


BEHAVIOURS: dict[str, Callable[[float], BehaviourPolicy]] = {
    Multinomial.name: lambda epsilon: Multinomial(),
    Uniform.name: lambda epsilon: Uniform(),
    EpsilonGreedy.name: EpsilonGreedy,
    Argmax.name: lambda epsilon: Argmax(),
}


def make_behaviour(name: str, epsilon: float = 0.0) -> BehaviourPolicy:
    """The behaviour policy called `name`; `epsilon` is used by epsilon_greedy only."""
    if name not in BEHAVIOURS:
        raise UserError(f"unknown behaviour policy {name!r}; choose one of: {', '.join(BEHAVIOURS)}")
    return BEHAVIOURS[name](epsilon)
