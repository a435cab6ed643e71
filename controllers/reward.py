"""The REINFORCE reward: validation accuracy with a soft parameter-count constraint (MnasNet form).

R = accuracy * (P / P_base) ** alpha, P the parameters (millions) of the eval-scale network of the sampled
architecture, alpha <= 0 and P_base per stage. alpha = 0 gives the accuracy.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from nas.arch_types import OpIndices
from nas.errors import UserError

RewardFn = Callable[[OpIndices, float], tuple[float, float, float]]  # (path, accuracy) -> (reward, params M, FLOPs M)


@dataclass
class RewardConfig:
    """The ``reward:`` section of a search config: one alpha and one P_base (millions) per stage."""

    alpha: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    p_base: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])

    def validate(self, num_stages: int) -> None:
        """Raise UserError naming the first bad field."""
        for name in ("alpha", "p_base"):
            values = getattr(self, name)
            if len(values) != num_stages:
                raise UserError(f"reward.{name} has {len(values)} values but the search has {num_stages} stages; "
                                f"give one per stage")
        if any(a > 0 for a in self.alpha):
            raise UserError(f"reward.alpha values must be <= 0 (a penalty on size), got {self.alpha}")
        if any(not p > 0 for p in self.p_base):
            raise UserError(f"reward.p_base values must be > 0 (millions of parameters), got {self.p_base}")


def param_penalty_reward(accuracy: float, params_m: float, p_base: float, alpha: float) -> float:
    """accuracy * (params_m / p_base) ** alpha."""
    return accuracy * (params_m / p_base) ** alpha


def make_reward_fn(architecture_fn: Callable[[OpIndices], Any], params_fn: Callable[[Any], float], cfg: RewardConfig,
                   stage: int, flops_fn: Callable[[Any], float]) -> RewardFn:
    """The search's reward for this stage: (path, accuracy) -> (reward, params_m, flops_m).

    Size and FLOPs are those of `architecture_fn(path)`, the architecture the path stands for (with genotype
    sampling, the sampled genotype itself), at eval scale.
    """
    p_base, alpha = cfg.p_base[stage], cfg.alpha[stage]

    def reward_fn(path: OpIndices, accuracy: float) -> tuple[float, float, float]:
        arch = architecture_fn(path)
        params_m = params_fn(arch)
        return param_penalty_reward(accuracy, params_m, p_base, alpha), params_m, flops_fn(arch)

    return reward_fn
