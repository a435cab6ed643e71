"""The REINFORCE reward: validation accuracy with a soft parameter-count constraint (MnasNet form).

R = accuracy * (P / P_base) ** alpha, P the parameters (millions) of the eval-scale network of the
genotype derived from the sampled path, alpha <= 0 and P_base per stage. alpha = 0 gives the accuracy.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F

from controllers.base import Path
from nas.errors import UserError
from search_spaces.base import KeptOps, SearchSpace

RewardFn = Callable[[Path, float], tuple[float, float, float]]  # (path, accuracy) -> (reward, params M, FLOPs M)


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


def make_reward_fn(space: SearchSpace, kept_ops: KeptOps, probs_fn: Callable[[], dict[str, torch.Tensor]],
                   cfg: RewardConfig, stage: int, flops_fn: Callable[[Any], float]) -> RewardFn:
    """The search's reward: (path, accuracy) -> (reward, params_m, flops_fn(architecture)) for this stage.

    A path's architecture is space.derive(one_hot(path) * probs, kept_ops): the sampled op on every edge,
    with the edges ranked by the policy's probability of that op where the space keeps only some edges.
    """
    p_base, alpha = cfg.p_base[stage], cfg.alpha[stage]

    def reward_fn(path: Path, accuracy: float) -> tuple[float, float, float]:
        probs = probs_fn()
        scores = {group: F.one_hot(path[group].to(p.device), p.shape[-1]) * p for group, p in probs.items()}
        arch = space.derive(scores, kept_ops)
        params_m = space.params_millions(arch)
        return param_penalty_reward(accuracy, params_m, p_base, alpha), params_m, flops_fn(arch)

    return reward_fn
