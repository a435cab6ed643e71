"""The REINFORCE reward: validation accuracy with a constraint on a cost m of the architecture (MnasNet's form).

m is, per stage (`reward.metric`), the parameters (millions), the FLOPs (millions of multiply-adds, thop) or the
latency (ms, summed from a measured per-part table: nas/benchmarks/latency.py) of the eval-scale network of the sampled
architecture. With m_base the stage's `reward.p_base` (in the metric's unit):

- ``soft`` (MnasNet's soft constraint, alpha = beta): R = acc * (m / m_base) ** alpha, alpha <= 0 per stage;
  alpha = 0 gives the accuracy.
- ``hard`` (MnasNet's hard constraint: alpha = 0, beta = -1 by default): m_base is a budget; R = acc at or under
  it and R = acc * (m / m_base) ** beta past it, beta < 0 per stage (`reward.beta`).

`reward.estimator` sets what acc is: ``oneshot`` (the default), the sampled path's validation accuracy in the
supernet; or a training-free estimator (nas/core/estimators: one name, ``ensemble``, or names joined by "+"), whose
running rank among the architectures seen so far, in (0, 1], stands in for the accuracy
(nas/core/estimators/reward.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from nas.core.errors import UserError
from nas.core.estimators.reward import check_reward_name
from nas.core.latency_table import LatencyTable, load_table

METRICS = ("params", "flops", "latency")
ONESHOT = "oneshot"  # reward.estimator: the supernet's validation accuracy
MODES = ("soft", "hard")
Costs = dict[str, float]  # metric -> value of one architecture (params M, flops M, latency ms)
RewardFn = Callable[[Any, float], tuple[float, Costs]]  # (architecture, accuracy) -> (reward, its costs)


@dataclass
class RewardConfig:
    """The ``reward:`` section of a search config: the metric, alpha, beta and m_base per stage."""

    metric: list[str] | None = None  # per stage; None: params in every stage
    mode: str = "soft"
    alpha: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    beta: list[float] | None = None  # per stage (hard mode); None: -1 in every stage (MnasNet's hard constraint)
    p_base: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    latency_table: str | None = None
    estimator: str = ONESHOT  # oneshot | ensemble | an estimator name | names joined by "+"

    def validate(self, num_stages: int) -> None:
        """Raise UserError naming the first bad field (the latency table is read; a stage checks that it fits)."""
        for name in ("metric", "alpha", "beta", "p_base"):
            values = getattr(self, name)
            if values is not None and len(values) != num_stages:
                raise UserError(f"reward.{name} has {len(values)} values but the search has {num_stages} stages; "
                                f"give one per stage")
        if any(m not in METRICS for m in self.metric or ()):
            raise UserError(f"reward.metric values must be {', '.join(METRICS)}; got {self.metric}")
        if self.mode not in MODES:
            raise UserError(f"reward.mode is {self.mode!r}; choose one of: {', '.join(MODES)}")
        if any(a > 0 for a in self.alpha):
            raise UserError(f"reward.alpha values must be <= 0 (a penalty on size), got {self.alpha}")
        if any(not b < 0 for b in self.beta or ()):
            raise UserError(f"reward.beta values must be < 0 (the penalty past the budget), got {self.beta}")
        if self.mode == "hard" and any(a != 0 for a in self.alpha):
            raise UserError(f"reward.alpha {self.alpha} is the soft mode's exponent and reward.mode=hard ignores it "
                            f"(the hard mode's is reward.beta); drop reward.alpha or set reward.mode=soft")
        if self.mode == "soft" and self.beta is not None:
            raise UserError(f"reward.beta {self.beta} is the hard mode's exponent and reward.mode=soft ignores it "
                            f"(the soft mode's is reward.alpha); drop reward.beta or set reward.mode=hard")
        if any(not p > 0 for p in self.p_base):
            raise UserError(f"reward.p_base values must be > 0 (in the metric's unit: M params, M FLOPs, ms), got "
                            f"{self.p_base}")
        if "latency" in (self.metric or ()) and not self.latency_table:
            raise UserError("reward.metric latency needs reward.latency_table: PATH (build it with nas-latency build)")
        if self.latency_table:
            self.table()
        if self.estimator != ONESHOT:
            check_reward_name("reward.estimator", self.estimator, ONESHOT)

    def table(self) -> LatencyTable | None:
        """The latency table, of any device (the target whose latency the reward charges), or None without one."""
        return load_table(self.latency_table) if self.latency_table else None


def constrained_reward(accuracy: float, cost: float, base: float, alpha: float, beta: float | None = None) -> float:
    """MnasNet: accuracy * (cost / base) ** w, w = alpha at or under base, beta past it (beta None: alpha)."""
    exponent = alpha if beta is None or cost <= base else beta
    return accuracy * (cost / base) ** exponent


def param_penalty_reward(accuracy: float, params_m: float, p_base: float, alpha: float) -> float:
    """accuracy * (params_m / p_base) ** alpha (the soft form on parameters)."""
    return constrained_reward(accuracy, params_m, p_base, alpha)


def make_reward_fn(cfg: RewardConfig, stage: int, costs: dict[str, Callable[[Any], float]]) -> RewardFn:
    """The search's reward for this stage: (architecture, accuracy) -> (reward, every cost in `costs`).

    `costs` maps metric names to cost functions of an architecture at eval scale; it must hold the stage's metric.
    """
    metric, base = cfg.metric[stage] if cfg.metric else "params", cfg.p_base[stage]
    alpha, beta = (cfg.alpha[stage], None) if cfg.mode == "soft" else (0.0, cfg.beta[stage] if cfg.beta else -1.0)

    def reward_fn(arch: Any, accuracy: float) -> tuple[float, Costs]:
        values = {name: fn(arch) for name, fn in costs.items()}
        return constrained_reward(accuracy, values[metric], base, alpha, beta), values

    return reward_fn
