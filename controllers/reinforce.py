"""REINFORCE over architecture decisions, off-policy with a choice of behaviour policy.

What a sample is (``reinforce.sample``):

- ``genotype`` (default): a sample is a cell genotype, two distinct inputs per node and one non-`none` op per
  chosen input, with `max_skip` enforced while sampling (controllers/genotype_policy.py). The supernet runs
  exactly those edges, and the reward's accuracy, parameters and FLOPs all belong to that genotype, the one the
  search can output. Its decisions are the per-node input pair and the op of each chosen edge.
- ``edges`` (the original design): one op, `none` included, on every edge; a decision is an edge. The reward's
  size is then that of the genotype derived from the path, which is not the path that was scored.

Policy pi = the product of the decisions' categoricals (the op logits are the gradient controller's, so op
dropping and monitoring are shared). Samples a come from a behaviour policy mu applied to every decision (see
controllers/sampling.py); the update ascends

    g = mean_i w_i (R_i - b) grad log pi(a_i) + beta * grad H(pi),

with w_i = pi(a_i) / mu(a_i) truncated at c, or self-normalised (w_i = n pi/mu / sum_j pi/mu), b an EMA
of the rewards and H the entropy of pi (genotypes: exact, each chosen edge's op entropy weighted by the
probability that the edge is chosen; edges: the sum over edges). Adam takes the step.
With the ``argmax`` behaviour mu puts mass 1 on the greedy decisions, so they are scored with
w = pi(a*) / 1, their exact importance weight, and nothing else is ever sampled.

The path weight pi(a)/mu(a) is a product over all decisions, so with many of them and mu far from pi it
collapses below Adam's eps and the policy does not move (docs/controllers.md has the weights measured on the
DARTS shape).
``importance="decision"`` (the default) weights the score of decision d by its own truncated ratio
pi_d(a_d)/mu_d(a_d) instead. Its bias: each decision is valued in the context that the behaviour policy builds
for the others (it is the exact gradient of E[R] with a_d ~ pi_d and the other decisions ~ mu), so it equals the
policy gradient when R is additive over decisions or mu = pi.

:class:`ReinforceController` is usable without a supernet: :meth:`ReinforceController.sample` and
:meth:`ReinforceController.update` take any rewards (the NAS-Bench-201 benchmark feeds table
accuracies); :meth:`ReinforceController.arch_step` is the search-loop entry that evaluates samples on
a validation batch.

Under torchrun (N ranks) the generator, seeded alike on every rank, draws the samples of all ranks, so it stays
in step everywhere: each rank scores its own `samples_per_update` on its shard of the validation batch, the
accuracies are gathered, and every rank applies the same update from all N x samples_per_update samples. Each
weight step trains a different sampled path on every rank.
"""
from __future__ import annotations

import functools
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from controllers.base import ArchStepContext, Controller, Evaluate, StageContext
from controllers.genotype_policy import GenotypePolicy
from controllers.reward import ONESHOT, RewardConfig, RewardFn, make_reward_fn
from controllers.sampling import (
    BEHAVIOURS,
    BatchedPaths,
    BehaviourPolicy,
    edge_log_probs,
    log_softmax,
    make_behaviour,
    stack_paths,
    unstack_paths,
)
from nas.core.arch_types import CellLayout, KeptOps, OpIndices
from nas.core.batchnorm import batch_stat_eval
from nas.core.distributed import all_gather_cat, world
from nas.core.errors import UserError
from nas.core.estimators.reward import EstimatorReward, reward_members

INIT_STD = 1e-3
IMPORTANCE = ("path", "decision")
SAMPLES = ("genotype", "edges")
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

    sample: str = "genotype"  # genotype: a sample is a genotype | edges: one op on every edge (the original design)
    behaviour: str = "epsilon_greedy"  # multinomial | uniform | epsilon_greedy | argmax
    epsilon: list[float] = field(default_factory=lambda: [0.2, 0.2, 0.2])  # per stage (epsilon_greedy)
    truncation: float = 5.0  # importance weights are clipped at this value
    self_normalize: bool = False  # normalise the weights to mean 1 over a batch instead of truncating
    importance: str = "decision"  # decision: one ratio pi_d/mu_d per decision; path: w = pi(a)/mu(a) (module doc)
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
        _choice("sample", self.sample, SAMPLES)
        if self.importance == "edge":  # the first version's name: with per-edge sampling an edge is a decision
            if self.sample == "genotype":
                raise UserError("reinforce.importance=edge (one ratio per edge) belongs to reinforce.sample=edges; a "
                                "genotype's decisions are input pairs and ops: choose decision or path")
            self.importance = "decision"
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


TAGS = {
    "reward_mean": "mean reward of the samples of one policy update (accuracy 0..1 times the size penalty); flat "
                   "while the baseline matches it is a stuck policy",
    "reward_max": "best reward of the samples of one policy update",
    "baseline": "EMA reward baseline the advantages are taken against",
    "iw_mean": "mean importance weight pi/mu (after truncation); near 0 means the off-policy updates vanish",
    "iw_max": "largest importance weight pi/mu (after truncation)",
    "acc_mean": "mean accuracy (0..1) of the sampled architectures on one validation batch",
    "params_mean": "mean eval-scale parameters (M) of the sampled architectures",
    "flops_mean": "mean eval-scale FLOPs (M multiply-adds, thop) of the sampled architectures at the dataset's "
                  "image size",
    "latency_mean": "mean eval-scale latency (ms, batch 1) of the sampled architectures from reward.latency_table "
                    "(only with a table)",
    "best_recent_reward": "max reward among the last N samples, end of epoch",
    "best_recent_acc": "validation top-1 (%) of that max-reward sample on the whole architecture half, end of "
                       "epoch; against argmax_acc it tells whether the policy's mode is its best find",
    "argmax_acc": "validation top-1 (%) of the most probable architecture, end of epoch",
    "argmin_acc": "validation top-1 (%) of the least probable architecture, end of epoch; close to argmax_acc "
                  "means the supernet does not tell architectures apart",
}


class ReinforceController(Controller):
    """Off-policy REINFORCE with an EMA baseline, an entropy bonus and Adam on the logits."""

    name = "reinforce"
    config_sections = {"reinforce": ReinforceConfig, "reward": RewardConfig}
    tags = {f"stage{{s}}/reinforce/{key}": meaning for key, meaning in TAGS.items()}
    text_tags = {"stage{s}/reinforce/best_recent_arch": "the max-reward architecture among the last N samples",
                 "stage{s}/reinforce/latency_table": "reward.latency_table and the device whose latency the reward "
                                                     "charged, which need not be the search's (only with a table)"}
    scores_samples = True

    def __init__(self, shapes: dict[str, tuple[int, int]], cfg: ReinforceConfig, stage: int,
                 generator: torch.Generator | None = None, layouts: dict[str, CellLayout] | None = None):
        """`generator` (CPU) drives the initial logits and every sample; without it the global RNG does.

        `layouts` (the space's cells) are needed to sample genotypes (``cfg.sample == "genotype"``).
        """
        super().__init__(shapes, INIT_STD)
        self.cfg = cfg
        self.update_interval = cfg.rl_interval_steps
        self.behaviour = make_behaviour(cfg.behaviour, cfg.epsilon[stage])
        self.weight_sampler = self.behaviour if cfg.weight_sampling == "behaviour" else make_behaviour("uniform")
        self.generator = generator
        self.cells: GenotypePolicy | None = None
        if cfg.sample == "genotype":
            if layouts is None:
                raise UserError("reinforce.sample=genotype needs a cell search space; use reinforce.sample=edges")
            self.cells = GenotypePolicy(layouts)
            self.pair_logits = nn.ParameterDict(
                {group: nn.Parameter(INIT_STD * torch.randn(n)) for group, n in self.cells.pair_shapes().items()})
        if generator is not None:
            with torch.no_grad():
                for logits in self.parameters():
                    logits.copy_(INIT_STD * torch.randn(logits.shape, generator=generator))
        self.optimizer = torch.optim.Adam(self.parameters(), lr=cfg.lr, betas=tuple(cfg.betas))
        self.baseline: float | None = None
        self.recent: deque[tuple[OpIndices, float]] = deque(maxlen=cfg.last_n)
        self.samples_seen = 0
        self.reward_fn: RewardFn | None = None  # (architecture, accuracy) -> (reward, costs); set by from_config
        self.estimator_reward: EstimatorReward | None = None  # reward.estimator other than oneshot (from_config)
        self.space: Any = None  # the search space and the kept ops that turn paths into architectures (from_config)
        self.kept_ops: KeptOps = {}
        self.latency_table: dict[str, str] | None = None  # {"path", "device"} of reward.latency_table (from_config)

    @classmethod
    def from_config(cls, ctx: StageContext) -> ReinforceController:
        """The stage's controller, rewarding samples with this stage's size penalty on the space's costs; UserError
        when it should sample genotypes of a space without a cell layout."""
        cfg = ctx.sections["reinforce"]
        layouts = ctx.space.cell_layout(ctx.kept_ops) if cfg.sample == "genotype" else None
        if cfg.sample == "genotype" and layouts is None:
            raise UserError(f"reinforce.sample=genotype samples two inputs per cell node, which the {ctx.space.name} "
                            f"space does not choose (its cells run every edge); set reinforce.sample: edges")
        controller = cls(cls.shapes(ctx.kept_ops), cfg, ctx.stage, generator=ctx.generator, layouts=layouts)
        reward_cfg = ctx.sections["reward"]
        costs = {"params": ctx.space.params_millions, "flops": ctx.space.flops_millions}
        table = reward_cfg.table()
        if table is not None:
            scale = ctx.space.latency_scale()
            table.check_search(ctx.space, ctx.kept_ops, reward_cfg.latency_table)
            costs["latency"] = functools.partial(ctx.space.latency_ms, table=table.entries, scale=scale)
            controller.latency_table = {"path": reward_cfg.latency_table, "device": table.device}
        controller.reward_fn = make_reward_fn(reward_cfg, ctx.stage, costs)
        controller.space, controller.kept_ops = ctx.space, ctx.kept_ops
        if reward_cfg.estimator != ONESHOT:
            controller.estimator_reward = EstimatorReward(reward_members(reward_cfg.estimator),
                                                          ctx.space.scoring_network, ctx.space.format_arch)
        return controller

    def _cpu_logits(self) -> dict[str, torch.Tensor]:
        return {group: alpha.detach().cpu() for group, alpha in self.alphas.items()}

    def _cpu_pairs(self) -> dict[str, torch.Tensor]:
        return {group: logits.detach().cpu() for group, logits in self.pair_logits.items()}

    def _draw(self, policy: BehaviourPolicy, n: int) -> list[OpIndices]:
        if self.cells is not None:
            return self.cells.sample(self._cpu_logits(), self._cpu_pairs(), policy, n, self.generator)
        return unstack_paths(policy.sample(self._cpu_logits(), n, self.generator))

    def sample(self, n: int) -> list[OpIndices]:
        """n architectures from the behaviour policy, as paths (CPU LongTensors; -1 marks an unused edge)."""
        return self._draw(self.behaviour, n)

    def probs(self) -> dict[str, torch.Tensor]:
        """Op probabilities per edge; when sampling genotypes, `none` (never sampled) has probability 0."""
        return super().probs() if self.cells is None else self.cells.op_probs(self._cpu_logits())

    def _genotype_gradients(self, paths: Sequence[OpIndices], rewards: torch.Tensor
                            ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """Ascent direction per parameter name, importance weights and the policy's entropy per group ([groups,
        2]: pair and op parts), by autograd through the exact log-probabilities of the sampled decisions."""
        assert self.cells is not None
        ops, pairs = self._cpu_logits(), self._cpu_pairs()
        leaves = {**{f"alphas.{g}": t.clone().requires_grad_() for g, t in ops.items()},
                  **{f"pair_logits.{g}": t.clone().requires_grad_() for g, t in pairs.items()}}
        theta = {g: leaves[f"alphas.{g}"] for g in ops}
        phi = {g: leaves[f"pair_logits.{g}"] for g in pairs}
        decisions = self.cells.decisions(list(paths))
        log_pi = self.cells.decision_log_probs(theta, phi, decisions)  # [n, D]
        log_mu = self.cells.decision_log_probs(ops, pairs, decisions, self.behaviour)
        per_decision = self.cfg.importance == "decision"
        weights = importance_weights(log_pi.detach() if per_decision else log_pi.detach().sum(dim=1),
                                     log_mu if per_decision else log_mu.sum(dim=1),
                                     self.cfg.truncation, self.cfg.self_normalize)
        advantage = rewards - self.baseline
        coef = (weights * (advantage[:, None] if per_decision else advantage)).reshape(len(log_pi), -1)
        entropy = self.cells.entropy(theta, phi)
        surrogate = (coef.expand_as(log_pi) * log_pi).sum() / len(log_pi) + self.cfg.entropy_weight * entropy.sum()
        grads = torch.autograd.grad(surrogate, list(leaves.values()))
        return dict(zip(leaves, grads)), weights, entropy.detach()

    def update(self, paths: Sequence[OpIndices], rewards: Sequence[float]) -> dict[str, float]:
        """One Adam step on the off-policy estimate from (path, reward) pairs; returns monitor scalars.

        mu is evaluated at the current logits, which are the ones the paths were sampled under as long as
        no update ran in between (sample, score, update).
        """
        reward_t = torch.tensor([float(r) for r in rewards])
        if self.baseline is None:
            self.baseline = reward_t.mean().item()
        if self.cells is not None:
            ascent, weights, entropy = self._genotype_gradients(paths, reward_t)
            entropy = entropy[:, 1].sum() / self.cells.op_decisions()  # per chosen edge, as arch/entropy is per edge
        else:
            batch = stack_paths(paths)
            logits = self._cpu_logits()
            log_mu = self.behaviour.edge_log_prob(logits, batch)
            if self.cfg.importance == "path":
                log_mu = log_mu.sum(dim=1)
            grads, weights = reinforce_gradient(logits, batch, log_mu, reward_t, self.baseline, self.cfg.truncation,
                                                self.cfg.self_normalize)
            entropy, entropy_grads = entropy_gradient(logits)
            ascent = {f"alphas.{g}": grads[g] + self.cfg.entropy_weight * entropy_grads[g] for g in logits}
        for name, logits in self.named_parameters():  # Adam minimises: descend on -(g + beta grad H)
            logits.grad = -ascent[name].to(logits.device)
        self.optimizer.step()
        self.baseline = self.cfg.baseline_decay * self.baseline + (1 - self.cfg.baseline_decay) * reward_t.mean().item()
        self.recent.extend((path, float(r)) for path, r in zip(paths, reward_t.tolist()))
        self.samples_seen += len(paths)
        return {
            "reward_mean": reward_t.mean().item(),
            "reward_max": reward_t.max().item(),
            "baseline": self.baseline,
            "entropy": entropy.mean().item(),
            "iw_mean": weights.mean().item(),
            "iw_max": weights.max().item(),
        }

    def scored_samples(self) -> list[tuple[OpIndices, float]]:
        return list(self.recent)

    def reward(self, arch: Any, accuracy: float) -> tuple[float, dict[str, float]]:
        """The stage's reward of an architecture with validation accuracy `accuracy` (0..1), and its costs."""
        if self.reward_fn is None:
            raise ValueError("ReinforceController needs reward_fn (from_config sets it)")
        return self.reward_fn(arch, accuracy)

    def rescore_accuracy(self, space: Any, kept_ops: KeptOps, arch: Any, evaluate: Evaluate) -> tuple[float, str]:
        """With a training-free reward, 100 x the estimator's rank of `arch` among the sampled architectures (what its
        reward stands on; a new one is not recorded), not the untrained supernet's accuracy."""
        if self.estimator_reward is None:
            return super().rescore_accuracy(space, kept_ops, arch, evaluate)
        rank = self.estimator_reward.rank(arch, record=False)
        return 100 * rank, f"estimator {'+'.join(self.estimator_reward.members)}"

    def best_recent(self) -> tuple[OpIndices, float] | None:
        """The max-reward (path, reward) among the last `last_n` samples; None before any update."""
        return max(self.recent, key=lambda pair: pair[1]) if self.recent else None

    # ----- the architectures the search runs, scores and outputs -----
    def mode_path(self, max_skip: int | None = None) -> OpIndices | None:
        """The policy's most probable architecture: per edge the argmax op, or, when sampling genotypes, the
        most probable genotype (exact; `max_skip` replaces the normal cell's skip limit; None if none fits)."""
        if self.cells is None:
            return self.argmax_path()
        return self.cells.mode(self._cpu_logits(), self._cpu_pairs(), max_skip)

    def least_likely_path(self) -> OpIndices:
        """The least probable architecture (per-edge argmin, or the least probable genotype)."""
        if self.cells is None:
            return {group: alpha.detach().argmin(dim=-1) for group, alpha in self.alphas.items()}
        path = self.cells.mode(self._cpu_logits(), self._cpu_pairs(), least=True)
        assert path is not None  # the space's own skip limit always admits a genotype
        return path

    def uniform_path(self) -> OpIndices:
        """One architecture drawn uniformly (separate mode trains the supernet on these)."""
        if self.cells is None:
            return {group: torch.randint(alpha.shape[1], (alpha.shape[0],), generator=self.generator)
                    for group, alpha in self.alphas.items()}
        return self._draw(make_behaviour("uniform"), 1)[0]

    def path_architecture(self, space: Any, kept_ops: KeptOps, path: OpIndices) -> Any:
        """The architecture a path stands for: the genotype itself, or (edges) the genotype derived from the
        sampled op on every edge, edges ranked by the policy's probability of that op."""
        if self.cells is not None:
            return space.path_architecture(path, kept_ops)
        scores = {group: F.one_hot(path[group].to(p.device), p.shape[-1]) * p for group, p in self.probs().items()}
        return space.derive(scores, kept_ops)

    def architecture(self, space: Any, kept_ops: KeptOps, max_skip: int | None = None) -> Any:
        if self.cells is None:
            return super().architecture(space, kept_ops, max_skip)
        path = self.mode_path(max_skip)
        return None if path is None else space.path_architecture(path, kept_ops)

    # ----- the search loop's hooks -----
    def arch_active(self, epoch: int, warmup: int) -> bool:
        return self.cfg.mode == "interleaved" and epoch >= warmup

    def weight_epochs(self, epochs: int) -> int:
        """With a training-free estimator as the reward the supernet is not trained."""
        return 0 if self.estimator_reward is not None else epochs

    def extra_epochs(self, epochs: int, warmup: int) -> int:
        """Separate mode: after training the supernet, one policy epoch per non-warm-up epoch. With a training-free
        estimator as the reward, every epoch of the stage (warm-up included) is a policy epoch."""
        if self.estimator_reward is not None:
            return epochs
        return epochs - warmup if self.cfg.mode == "separate" else 0

    def epoch_scalars(self, evaluate: Evaluate, summary: dict[str, float]) -> dict[str, float]:
        """The argmax, argmin and best recent architectures' supernet accuracies; with a training-free reward
        (an untrained supernet) only the best recent reward."""
        scalars = super().epoch_scalars(evaluate, summary)
        trained = self.estimator_reward is None
        if trained:
            scalars.update({"reinforce/argmax_acc": summary["val/acc"],
                            "reinforce/argmin_acc": evaluate(path=self.least_likely_path())[1]})
        best = self.best_recent()
        if best is not None:  # None until the first policy update
            scalars["reinforce/best_recent_reward"] = best[1]
            if trained:
                scalars["reinforce/best_recent_acc"] = evaluate(path=best[0])[1]
        return scalars

    def stage_entries(self, space: Any, kept_ops: KeptOps, summary: dict[str, float]) -> dict[str, Any]:
        """The max-reward architecture among the last samples, the most/least probable one's accuracy, and the
        latency table with its device (only with reward.latency_table)."""
        best = self.best_recent()
        recent = None if best is None else {
            "ops": {g: [kept_ops[g][e][i] if i >= 0 else None for e, i in enumerate(idx.tolist())]
                    for g, idx in best[0].items()},
            "reward": best[1], "genotype": space.format_arch(self.path_architecture(space, kept_ops, best[0]))}
        return {"best_recent": recent, "argmax_acc": summary.get("reinforce/argmax_acc"),
                "argmin_acc": summary.get("reinforce/argmin_acc"),
                "best_recent_acc": summary.get("reinforce/best_recent_acc"),
                **({"estimator_evaluations": len(self.estimator_reward.scores)} if self.estimator_reward else {}),
                **({"latency_table": self.latency_table} if self.latency_table else {})}

    def stage_texts(self, entries: dict[str, Any]) -> dict[str, str]:
        texts = {"reinforce/best_recent_arch": str(entries["best_recent"])}
        if "latency_table" in entries:
            table = entries["latency_table"]
            texts["reinforce/latency_table"] = f"{table['path']}: latency measured on {table['device']}"
        return texts

    def weight_forward_kwargs(self) -> dict[str, Any]:
        """This rank's path: under torchrun every rank draws the paths of all N ranks from the shared generator (so
        it stays in step everywhere) and trains its own, so one step trains N paths."""
        dist = world()
        if self.cfg.mode == "separate":  # the supernet trains under uniform sampling before the policy runs
            return {"path": [self.uniform_path() for _ in range(dist.world_size)][dist.rank]}
        return {"path": self._draw(self.weight_sampler, dist.world_size)[dist.rank]}

    def eval_forward_kwargs(self) -> dict[str, Any]:
        return {"path": self.mode_path()}

    def arch_step(self, ctx: ArchStepContext) -> dict[str, float]:
        """Sample, score each path on ctx.val_batch with the supernet running that path only (BatchNorm on the
        batch's statistics), update; returns the update's scalars keyed by tag suffix."""
        dist, k = world(), self.cfg.samples_per_update
        paths = self.sample(k * dist.world_size)  # under torchrun: every rank draws all ranks' samples, scores its k
        archs = [self.path_architecture(self.space, self.kept_ops, path) for path in paths]
        if self.estimator_reward is not None:  # every rank scores every sample alike (cached, deterministic)
            accuracies = [self.estimator_reward(arch, ctx.val_batch) for arch in archs]
        else:
            x, y = ctx.val_batch
            with batch_stat_eval(ctx.model), torch.no_grad():
                mine = [(ctx.model(x, path=path).argmax(dim=-1) == y).float().mean()
                        for path in paths[dist.rank * k:(dist.rank + 1) * k]]
            accuracies = all_gather_cat(torch.stack(mine)).tolist()  # every sample's accuracy on every rank
        rewards, costs = zip(*(self.reward(arch, acc) for arch, acc in zip(archs, accuracies)))
        metrics = self.update(paths, rewards)
        for metric in costs[0]:
            metrics[f"{metric}_mean"] = sum(c[metric] for c in costs) / len(costs)
        metrics["acc_mean"] = sum(accuracies) / len(accuracies)
        return {"arch/entropy": metrics.pop("entropy"), **{f"reinforce/{k}": v for k, v in metrics.items()}}

    def get_extra_state(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "baseline": self.baseline,
            "recent": list(self.recent),
            "samples_seen": self.samples_seen,
            "generator": None if self.generator is None else self.generator.get_state(),
            "estimator": None if self.estimator_reward is None else self.estimator_reward.state(),
        }

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.baseline = state["baseline"]
        self.recent = deque(state["recent"], maxlen=self.cfg.last_n)
        self.samples_seen = state["samples_seen"]
        if self.estimator_reward is not None and state.get("estimator") is not None:
            self.estimator_reward.load_state(state["estimator"])
        if state["generator"] is not None:
            if self.generator is None:
                self.generator = torch.Generator()
            self.generator.set_state(state["generator"])
