"""REINFORCE over the per-edge architecture logits, off-policy with a choice of behaviour policy.

Policy: pi(a) = prod_e softmax(theta_e)[a_e] (the same logits as the gradient controller). Samples a
come from a behaviour policy mu (see controllers/sampling.py); the update ascends

    g = mean_i w_i (R_i - b) grad log pi(a_i) + beta * grad H(pi),

with w_i = pi(a_i) / mu(a_i) truncated at c, or self-normalised (w_i = n pi/mu / sum_j pi/mu), b an EMA
of the rewards and H the entropy of pi (the sum of the per-edge entropies). Adam takes the step.
With the ``argmax`` behaviour mu puts mass 1 on the greedy path, so the greedy path is scored with
w = pi(a*) / 1, its exact importance weight, and nothing else is ever sampled.

The path weight pi(a)/mu(a) is a product over all edges, so with many edges and mu far from pi it
collapses: on the DARTS shape (2 x 14 edges, 8 ops, near-uniform pi) the median batch-mean weight is
~1e-13 for epsilon_greedy(0.2) and ~1e-26 for argmax, below Adam's eps, and the policy does not move.
``importance="edge"`` weights the score of edge e by its own ratio pi_e(a_e)/mu_e(a_e) instead. That is
the exact gradient of E[R] with a_e ~ pi_e and the other edges ~ mu (the value of an op in the context
the behaviour policy builds), equal to the policy gradient when R is additive over edges or mu = pi.

:class:`ReinforceController` is usable without a supernet: :meth:`ReinforceController.sample` and
:meth:`ReinforceController.update` take any rewards (the NAS-Bench-201 benchmark feeds table
accuracies); :meth:`ReinforceController.arch_step` is the search-loop entry that evaluates samples on
a validation batch.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from controllers.base import ArchStepContext, Controller, Path
from controllers.sampling import (
    BEHAVIOURS,
    BatchedPaths,
    edge_log_probs,
    log_softmax,
    make_behaviour,
    stack_paths,
    unstack_paths,
)
from nas.errors import UserError

INIT_STD = 1e-3
IMPORTANCE = ("path", "edge")
MODES = ("interleaved", "separate")
WEIGHT_SAMPLING = ("uniform", "behaviour")


@dataclass
class ReinforceConfig:
    """The ``reinforce:`` section of a search config.

    lr: Adam moves each logit by about lr per update whatever the reward scale, so 0.05 takes an op
    from 1/8 to 0.9 (a logit margin of ~4.1) in ~80 consistent updates: fast enough to commit within a
    stage of a few thousand updates, slow enough that the reward noise of one validation batch averages
    out over tens of updates.
    """

    behaviour: str = "epsilon_greedy"  # multinomial | uniform | epsilon_greedy | argmax
    epsilon: list[float] = field(default_factory=lambda: [0.2, 0.2, 0.2])  # per stage (epsilon_greedy)
    truncation: float = 5.0  # importance weights are clipped at this value
    self_normalize: bool = False  # normalise the weights to mean 1 over a batch instead of truncating
    importance: str = "path"  # path: w = pi(a)/mu(a); edge: w_e = pi_e(a_e)/mu_e(a_e) per edge (see module doc)
    baseline_decay: float = 0.95
    entropy_weight: float = 1e-4
    lr: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    samples_per_update: int = 4
    rl_interval_steps: int = 1  # weight steps between policy updates
    mode: str = "interleaved"  # interleaved | separate (train the supernet first, then the policy)
    weight_sampling: str = "uniform"  # the path a weight step runs: uniform | behaviour
    last_n: int = 200  # window of recent samples for the max-reward architecture

    def validate(self, num_stages: int) -> None:
        """Raise UserError naming the first bad field."""
        _choice("behaviour", self.behaviour, tuple(BEHAVIOURS))
        _choice("importance", self.importance, IMPORTANCE)
        _choice("mode", self.mode, MODES)
        _choice("weight_sampling", self.weight_sampling, WEIGHT_SAMPLING)
        if len(self.epsilon) != num_stages:
            raise UserError(f"reinforce.epsilon has {len(self.epsilon)} values but the search has {num_stages} "
                            f"stages; give one per stage")
        if any(not 0.0 <= eps <= 1.0 for eps in self.epsilon):
            raise UserError(f"reinforce.epsilon values must lie in [0, 1], got {self.epsilon}")
        if not self.truncation > 0:
            raise UserError(f"reinforce.truncation must be > 0, got {self.truncation}")
        if not 0.0 <= self.baseline_decay < 1.0:
            raise UserError(f"reinforce.baseline_decay must lie in [0, 1), got {self.baseline_decay}")
        if not self.entropy_weight >= 0:
            raise UserError(f"reinforce.entropy_weight must be >= 0, got {self.entropy_weight}")
        if not self.lr > 0:
            raise UserError(f"reinforce.lr must be > 0, got {self.lr}")
        if len(self.betas) != 2 or any(not 0.0 <= beta < 1.0 for beta in self.betas):
            raise UserError(f"reinforce.betas must be two values in [0, 1), got {self.betas}")
        for name in ("samples_per_update", "rl_interval_steps", "last_n"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UserError(f"reinforce.{name} must be a positive integer, got {value!r}")


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise UserError(f"reinforce.{name} is {value!r}; choose one of: {', '.join(allowed)}")


def importance_weights(log_pi: torch.Tensor, log_mu: torch.Tensor, truncation: float | None = 5.0,
                       self_normalize: bool = False) -> torch.Tensor:
    """w = pi / mu elementwise, clipped at `truncation` (None: no clip), or normalised to mean 1 over dim 0.

    Shapes [n] (one weight per path) or [n, M] (one per path and edge).
    """
    log_w = log_pi - log_mu
    if self_normalize:
        return len(log_w) * (log_w - log_w.logsumexp(dim=0, keepdim=True)).exp()
    weights = log_w.exp()
    return weights if truncation is None else weights.clamp(max=truncation)


def reinforce_gradient(logits: dict[str, torch.Tensor], batch: BatchedPaths, log_mu: torch.Tensor,
                       rewards: torch.Tensor, baseline: float, truncation: float | None = 5.0,
                       self_normalize: bool = False) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The off-policy REINFORCE ascent direction g per group ([E, K] each) and the importance weights.

    `log_mu` is [n] (log mu(a_i): path weights) or [n, sum of E] (log mu_e(a_ie): per-edge weights).
    Path weights: g = mean_i w_i (R_i - b) grad log pi(a_i); with truncation=None and self_normalize=False,
    E_mu[g] is the exact gradient of E_pi[R]. Per-edge weights: g_e = mean_i w_ie (R_i - b) grad log pi_e(a_ie).
    Closed form, no autograd: grad_theta_e log pi_e(a) = onehot(a) - pi_e.
    """
    log_probs = {group: log_softmax(theta.detach()) for group, theta in logits.items()}
    log_pi = edge_log_probs(log_probs, batch)  # [n, M]
    per_edge = log_mu.dim() == 2
    weights = importance_weights(log_pi if per_edge else log_pi.sum(dim=1), log_mu, truncation, self_normalize)
    advantage = rewards - baseline
    signal = weights * (advantage[:, None] if per_edge else advantage)  # [n, M] or [n]
    coef = signal.reshape(len(log_pi), -1).expand_as(log_pi) / len(log_pi)
    grads, start = {}, 0
    for group, log_p in log_probs.items():
        edge_coef = coef[:, start:start + len(log_p)].T  # [E, n]
        chosen = torch.zeros_like(log_p).scatter_add_(1, batch[group].T, edge_coef)
        grads[group] = chosen - edge_coef.sum(dim=1, keepdim=True) * log_p.exp()
        start += len(log_p)
    return grads, weights


def entropy_gradient(logits: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Entropy (nats) of pi on every edge ([sum of E], groups concatenated) and its gradient per group.

    dH_e / dtheta_ek = -pi_ek (log pi_ek + H_e).
    """
    entropies, grads = [], {}
    for group, theta in logits.items():
        log_p = log_softmax(theta.detach())
        entropy = -(log_p.exp() * log_p).sum(dim=-1, keepdim=True)
        grads[group] = -log_p.exp() * (log_p + entropy)
        entropies.append(entropy.squeeze(-1))
    return torch.cat(entropies), grads


class ReinforceController(Controller):
    """Off-policy REINFORCE with an EMA baseline, an entropy bonus and Adam on the logits."""

    def __init__(self, shapes: dict[str, tuple[int, int]], cfg: ReinforceConfig, stage: int,
                 generator: torch.Generator | None = None):
        """`generator` (CPU) drives the initial logits and every sample; without it the global RNG does."""
        super().__init__(shapes, INIT_STD)
        self.cfg = cfg
        self.update_interval = cfg.rl_interval_steps
        self.behaviour = make_behaviour(cfg.behaviour, cfg.epsilon[stage])
        self.weight_sampler = self.behaviour if cfg.weight_sampling == "behaviour" else make_behaviour("uniform")
        self.generator = generator
        if generator is not None:
            with torch.no_grad():
                for alpha in self.alphas.values():
                    alpha.copy_(INIT_STD * torch.randn(alpha.shape, generator=generator))
        self.optimizer = torch.optim.Adam(self.alphas.parameters(), lr=cfg.lr, betas=tuple(cfg.betas))
        self.baseline: float | None = None
        self.recent: deque[tuple[Path, float]] = deque(maxlen=cfg.last_n)
        self.samples_seen = 0

    def _cpu_logits(self) -> dict[str, torch.Tensor]:
        return {group: alpha.detach().cpu() for group, alpha in self.alphas.items()}

    def sample(self, n: int) -> list[Path]:
        """n paths from the behaviour policy (CPU LongTensors)."""
        return unstack_paths(self.behaviour.sample(self._cpu_logits(), n, self.generator))

    def update(self, paths: Sequence[Path], rewards: Sequence[float]) -> dict[str, float]:
        """One Adam step on the off-policy estimate from (path, reward) pairs; returns monitor scalars.

        mu is evaluated at the current logits, which are the ones the paths were sampled under as long as
        no update ran in between (sample, score, update).
        """
        batch = stack_paths(paths)
        reward_t = torch.tensor([float(r) for r in rewards])
        if self.baseline is None:
            self.baseline = reward_t.mean().item()
        logits = self._cpu_logits()
        log_mu = self.behaviour.edge_log_prob(logits, batch)
        if self.cfg.importance == "path":
            log_mu = log_mu.sum(dim=1)
        grads, weights = reinforce_gradient(logits, batch, log_mu, reward_t, self.baseline, self.cfg.truncation,
                                            self.cfg.self_normalize)
        entropy, entropy_grads = entropy_gradient(logits)
        for group, alpha in self.alphas.items():  # Adam minimises: descend on -(g + beta grad H)
            alpha.grad = -(grads[group] + self.cfg.entropy_weight * entropy_grads[group]).to(alpha.device)
        self.optimizer.step()
        self.baseline = self.cfg.baseline_decay * self.baseline + (1 - self.cfg.baseline_decay) * reward_t.mean().item()
        self.recent.extend((path, float(r)) for path, r in zip(unstack_paths(batch), reward_t.tolist()))
        self.samples_seen += len(paths)
        return {
            "reward_mean": reward_t.mean().item(),
            "reward_max": reward_t.max().item(),
            "baseline": self.baseline,
            "entropy": entropy.mean().item(),
            "iw_mean": weights.mean().item(),
            "iw_max": weights.max().item(),
        }

    def best_recent(self) -> tuple[Path, float] | None:
        """The max-reward (path, reward) among the last `last_n` samples; None before any update."""
        return max(self.recent, key=lambda pair: pair[1]) if self.recent else None

    def weight_forward_kwargs(self) -> dict[str, Any]:
        return {"path": unstack_paths(self.weight_sampler.sample(self._cpu_logits(), 1, self.generator))[0]}

    def eval_forward_kwargs(self) -> dict[str, Any]:
        return {"path": self.argmax_path()}

    def arch_step(self, ctx: ArchStepContext) -> dict[str, float]:
        """Sample, score each path on ctx.val_batch with the supernet running that path only, update."""
        if ctx.reward_fn is None:
            raise ValueError("ReinforceController.arch_step needs ctx.reward_fn")
        paths = self.sample(self.cfg.samples_per_update)
        x, y = ctx.val_batch
        with torch.no_grad():
            accuracies = [(ctx.model(x, path=path).argmax(dim=-1) == y).float().mean().item() for path in paths]
        rewards, params, flops = zip(*(ctx.reward_fn(path, acc) for path, acc in zip(paths, accuracies)))
        metrics = self.update(paths, rewards)
        metrics["params_mean"] = sum(params) / len(params)
        metrics["flops_mean"] = sum(flops) / len(flops)
        metrics["acc_mean"] = sum(accuracies) / len(accuracies)
        return metrics

    def get_extra_state(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "baseline": self.baseline,
            "recent": list(self.recent),
            "samples_seen": self.samples_seen,
            "generator": None if self.generator is None else self.generator.get_state(),
        }

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.baseline = state["baseline"]
        self.recent = deque(state["recent"], maxlen=self.cfg.last_n)
        self.samples_seen = state["samples_seen"]
        if state["generator"] is not None:
            if self.generator is None:
                self.generator = torch.Generator()
            self.generator.set_state(state["generator"])
