"""The parameter-penalised reward and the search's reward function."""
from __future__ import annotations

from typing import Any

import pytest
import torch

from controllers.reinforce import ReinforceConfig, ReinforceController
from controllers.reward import RewardConfig, make_reward_fn, param_penalty_reward
from nas.core.arch_types import KeptOps
from nas.core.errors import UserError


def test_formula_on_known_numbers() -> None:
    assert param_penalty_reward(0.9, 3.2, 6.4, -0.5) == pytest.approx(0.9 * 2 ** 0.5)
    assert param_penalty_reward(0.8, 8.0, 4.0, -1.0) == pytest.approx(0.4)
    assert param_penalty_reward(0.8, 4.0, 4.0, -0.45) == pytest.approx(0.8)


@pytest.mark.parametrize("params_m", [0.5, 3.3, 12.0])
def test_alpha_zero_gives_the_accuracy(params_m: float) -> None:
    assert param_penalty_reward(0.73, params_m, 6.4, 0.0) == 0.73


class _FakeSpace:
    """The two space methods the reward uses (duck-typed, as controllers see spaces): derive takes per group the op
    chosen on every edge and records the scores it got; params: 1 + 0.5 per op index."""

    def __init__(self) -> None:
        self.scores: list[dict[str, torch.Tensor]] = []

    def initial_kept_ops(self) -> KeptOps:
        return {"normal": [["a", "b", "c"]] * 2}

    def derive(self, probs: dict[str, torch.Tensor], kept_ops: KeptOps, max_skip: int | None = None) -> Any:
        self.scores.append(probs)
        return [kept_ops["normal"][e][k] for e, k in enumerate(probs["normal"].argmax(dim=-1).tolist())]

    def params_millions(self, arch: Any) -> float:
        return 1.0 + sum(0.5 * "abc".index(op) for op in arch)


def test_make_reward_fn_charges_the_stage_metric_and_reports_every_cost() -> None:
    space = _FakeSpace()
    cfg = RewardConfig(metric=["params", "flops"], alpha=[0.0, -1.0], p_base=[1.0, 2.0])
    costs = {"params": space.params_millions, "flops": len}
    arch = ["c", "b"]
    reward, values = make_reward_fn(cfg, stage=1, costs=costs)(arch, 0.8)
    assert values == {"params": pytest.approx(2.5), "flops": 2}  # every cost gets the architecture
    assert reward == pytest.approx(0.8 * (2 / 2.0) ** -1.0)  # stage 2 charges FLOPs
    unpenalised = make_reward_fn(cfg, stage=0, costs=costs)
    assert unpenalised(arch, 0.8)[0] == pytest.approx(0.8)


def test_hard_mode_is_free_under_the_budget_and_penalised_past_it() -> None:
    cfg = RewardConfig(metric=["params"], mode="hard", alpha=[-0.5], beta=[-1.0], p_base=[2.0])
    reward_fn = make_reward_fn(cfg, 0, {"params": float})
    assert reward_fn(1.5, 0.9)[0] == pytest.approx(0.9)  # alpha is ignored: MnasNet's hard form has alpha = 0
    assert reward_fn(2.0, 0.9)[0] == pytest.approx(0.9)
    assert reward_fn(4.0, 0.9)[0] == pytest.approx(0.9 * (4.0 / 2.0) ** -1.0)


def test_edge_sampling_charges_the_genotype_derived_from_the_path() -> None:
    """The original design: the sampled op on every edge, edges ranked by the policy's probability of that op."""
    space = _FakeSpace()
    controller = ReinforceController({"normal": (2, 3)}, ReinforceConfig(sample="edges"), 0)
    with torch.no_grad():
        controller.alphas["normal"].copy_(torch.tensor([[0.2, 0.5, 0.3], [0.6, 0.1, 0.3]]).log())
    arch = controller.path_architecture(space, space.initial_kept_ops(), {"normal": torch.tensor([2, 1])})
    torch.testing.assert_close(space.scores[-1]["normal"], torch.tensor([[0.0, 0.0, 0.3], [0.0, 0.1, 0.0]]))
    assert arch == ["c", "b"]


@pytest.mark.parametrize("change, message", [
    ({"alpha": [0.0, -0.2]}, "reward.alpha has 2 values but the search has 3 stages"),
    ({"p_base": [1.0]}, "reward.p_base has 1 values but the search has 3 stages"),
    ({"alpha": [-0.45, 0.25, -0.2]}, "reward.alpha values must be <= 0"),
    ({"p_base": [6.4, 0.0, 4.4]}, "reward.p_base values must be > 0"),
    ({"metric": ["params", "macs", "params"]}, "reward.metric values must be params, flops, latency"),
    ({"mode": "strict"}, "reward.mode is 'strict'"),
    ({"beta": [-1.0, 0.0, -1.0]}, "reward.beta values must be < 0"),
    ({"metric": ["params", "latency", "params"]}, "reward.metric latency needs reward.latency_table"),
    ({"latency_table": "/nonexistent/table.json"}, "cannot read the latency table"),
])
def test_config_validation(change: dict, message: str) -> None:
    RewardConfig(alpha=[-0.45, -0.25, -0.2], p_base=[6.4, 5.4, 4.4]).validate(3)
    with pytest.raises(UserError, match=message):
        RewardConfig(**change).validate(3)
