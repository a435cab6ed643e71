"""REINFORCE: importance weights, the estimator against the exact policy gradient, convergence on a
synthetic reward, the search-loop entry, checkpoint round trip and config validation."""
from __future__ import annotations

import io
import itertools
import math

import pytest
import torch
from torch import nn

from controllers.base import ArchStepContext
from controllers.reinforce import (
    ReinforceConfig,
    ReinforceController,
    entropy_gradient,
    importance_weights,
    reinforce_gradient,
)
from controllers.sampling import edge_log_probs, make_behaviour
from nas.core.arch_types import OpIndices as Path
from nas.core.errors import UserError

# pi on edge 0 = [1/4, 1/2, 1/4], on edge 1 = [3/5, 1/5, 1/5]
LOGITS = {"cell": torch.tensor([[0.0, math.log(2.0), 0.0], [math.log(3.0), 0.0, 0.0]])}
HAND_PATHS = {"cell": torch.tensor([[1, 0], [0, 2]])}  # pi = 0.3 and 0.05


@pytest.mark.parametrize("name, expected", [
    ("uniform", [0.3 * 9, 0.05 * 9]),
    ("epsilon_greedy", [0.3 / 0.64, 4.0]),  # eps 0.3: mu = 0.64 and 0.01, the second 0.05/0.01 = 5 clipped at 4
    ("multinomial", [1.0, 1.0]),
    ("argmax", [0.3]),  # the greedy path is scored with pi(a*)/1 (argmax never samples the second path)
])
def test_importance_weights_hand_computed(name: str, expected: list[float]) -> None:
    paths = {"cell": HAND_PATHS["cell"][: len(expected)]}
    log_mu = make_behaviour(name, epsilon=0.3).log_prob(LOGITS, paths)
    _, weights = reinforce_gradient(LOGITS, paths, log_mu, torch.ones(len(expected)), 0.0, truncation=4.0)
    torch.testing.assert_close(weights, torch.tensor(expected), rtol=1e-5, atol=1e-7)


def test_self_normalised_weights_have_mean_one() -> None:
    log_mu = make_behaviour("uniform").log_prob(LOGITS, HAND_PATHS)
    log_pi = torch.log(torch.tensor([0.3, 0.05]))
    torch.testing.assert_close(importance_weights(log_pi, log_mu, self_normalize=True),
                               torch.tensor([2 * 0.3 / 0.35, 2 * 0.05 / 0.35]))


SHAPES = {"a": (2, 3), "b": (1, 4)}
ALL_PATHS = {"a": torch.tensor([[x, y] for x, y, _ in itertools.product(range(3), range(3), range(4))]),
             "b": torch.tensor([[z] for _, _, z in itertools.product(range(3), range(3), range(4))])}


def _path_index(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return batch["a"][:, 0] * 12 + batch["a"][:, 1] * 4 + batch["b"][:, 0]


def _exact_gradient(logits: dict[str, torch.Tensor], table: torch.Tensor) -> list[torch.Tensor]:
    """grad of E_pi[R] = sum_a pi(a) R(a), by enumerating all 36 paths."""
    thetas = {g: t.clone().requires_grad_(True) for g, t in logits.items()}
    log_pi = sum(torch.log_softmax(thetas[g], -1).gather(1, ALL_PATHS[g].T).sum(0) for g in thetas)
    return list(torch.autograd.grad((log_pi.exp() * table[_path_index(ALL_PATHS)]).sum(), list(thetas.values())))


def _estimate(logits: dict[str, torch.Tensor], table: torch.Tensor, behaviour: str, per_edge: bool,
              self_normalize: bool = False, n: int = 200_000) -> list[torch.Tensor]:
    policy = make_behaviour(behaviour, epsilon=0.5)
    batch = policy.sample(logits, n, torch.Generator().manual_seed(0))
    log_mu = policy.edge_log_prob(logits, batch) if per_edge else policy.log_prob(logits, batch)
    grads, _ = reinforce_gradient(logits, batch, log_mu, table[_path_index(batch)], baseline=0.4, truncation=None,
                                  self_normalize=self_normalize)
    return list(grads.values())


def _relative_error(estimate: list[torch.Tensor], exact: list[torch.Tensor]) -> float:
    diff = torch.cat([(e - x).flatten() for e, x in zip(estimate, exact)])
    return (diff.norm() / torch.cat([x.flatten() for x in exact]).norm()).item()


@pytest.fixture
def problem() -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    logits = {g: 0.7 * torch.randn(*shape, generator=gen) for g, shape in SHAPES.items()}
    return logits, torch.rand(36, generator=gen)  # a non-additive reward per path


@pytest.mark.parametrize("behaviour", ["uniform", "epsilon_greedy", "multinomial"])
def test_off_policy_estimator_matches_exact_gradient(problem, behaviour: str) -> None:
    logits, table = problem
    exact = _exact_gradient(logits, table)
    assert _relative_error(_estimate(logits, table, behaviour, per_edge=False), exact) < 0.05
    assert _relative_error(_estimate(logits, table, behaviour, per_edge=False, self_normalize=True), exact) < 0.05


def test_estimator_is_biased_by_truncation_and_not_without(problem) -> None:
    logits, table = problem
    policy = make_behaviour("epsilon_greedy", epsilon=0.5)
    batch = policy.sample(logits, 200_000, torch.Generator().manual_seed(0))
    log_mu = policy.log_prob(logits, batch)
    clipped, weights = reinforce_gradient(logits, batch, log_mu, table[_path_index(batch)], 0.4, truncation=1.5)
    assert weights.max().item() == pytest.approx(1.5) and (weights == 1.5).float().mean() > 0.05
    assert _relative_error(list(clipped.values()), _exact_gradient(logits, table)) > 0.1


@pytest.mark.parametrize("per_edge, truncation, self_normalize", [
    (False, 2.0, False), (True, 2.0, False), (False, None, True), (True, None, True)])
def test_closed_form_gradient_equals_autograd_of_the_surrogate(problem, per_edge: bool, truncation: float | None,
                                                               self_normalize: bool) -> None:
    logits, table = problem
    policy = make_behaviour("epsilon_greedy", epsilon=0.4)
    batch = policy.sample(logits, 16, torch.Generator().manual_seed(4))
    log_mu = policy.edge_log_prob(logits, batch) if per_edge else policy.log_prob(logits, batch)
    rewards = table[_path_index(batch)]
    grads, weights = reinforce_gradient(logits, batch, log_mu, rewards, 0.3, truncation, self_normalize)
    thetas = {g: t.clone().requires_grad_(True) for g, t in logits.items()}
    log_pi = edge_log_probs({g: torch.log_softmax(t, -1) for g, t in thetas.items()}, batch)
    log_pi = log_pi if per_edge else log_pi.sum(dim=1)
    surrogate = (weights * ((rewards - 0.3)[:, None] if per_edge else rewards - 0.3) * log_pi).sum() / 16
    for got, want in zip(grads.values(), torch.autograd.grad(surrogate, list(thetas.values()))):
        torch.testing.assert_close(got, want)


def test_entropy_gradient_equals_autograd(problem) -> None:
    logits, _ = problem
    entropy, grads = entropy_gradient(logits)
    thetas = {g: t.clone().requires_grad_(True) for g, t in logits.items()}
    want_entropy = torch.cat([torch.distributions.Categorical(logits=t).entropy() for t in thetas.values()])
    torch.testing.assert_close(entropy, want_entropy.detach())
    for got, want in zip(grads.values(), torch.autograd.grad(want_entropy.sum(), list(thetas.values()))):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("behaviour", ["uniform", "epsilon_greedy", "multinomial"])
def test_per_edge_estimator_is_exact_for_an_additive_reward(problem, behaviour: str) -> None:
    logits, _ = problem
    per_op = torch.rand(3, 4, generator=torch.Generator().manual_seed(5))  # reward of op k on edge e, summed
    table = (per_op[0, ALL_PATHS["a"][:, 0]] + per_op[1, ALL_PATHS["a"][:, 1]] + per_op[2, ALL_PATHS["b"][:, 0]])
    assert _relative_error(_estimate(logits, table, behaviour, per_edge=True), _exact_gradient(logits, table)) < 0.05


BEST = {"normal": torch.tensor([2, 0, 3, 1]), "reduce": torch.tensor([1, 3, 0])}


def _synthetic_reward(path: Path, gen: torch.Generator) -> float:
    """Fraction of edges on their best op, plus validation-batch-like noise."""
    hits = sum((path[g] == BEST[g]).sum().item() for g in BEST)
    return hits / 7 + 0.05 * torch.randn(1, generator=gen).item()


def _min_best_prob(controller: ReinforceController) -> float:
    return min(p.gather(1, BEST[g][:, None]).min().item() for g, p in controller.probs().items())


@pytest.mark.parametrize("behaviour, importance, max_updates", [
    ("multinomial", "path", 300),
    ("epsilon_greedy", "path", 1000),
    ("multinomial", "edge", 300),
    ("uniform", "edge", 300),
    ("epsilon_greedy", "edge", 400),
])
def test_policy_finds_the_best_op_on_every_edge(behaviour: str, importance: str, max_updates: int) -> None:
    cfg = ReinforceConfig(sample="edges", behaviour=behaviour, importance=importance)
    controller = ReinforceController({"normal": (4, 4), "reduce": (3, 4)}, cfg, 0, torch.Generator().manual_seed(0))
    noise = torch.Generator().manual_seed(1)
    for update in range(1, max_updates + 1):
        paths = controller.sample(cfg.samples_per_update)
        controller.update(paths, [_synthetic_reward(p, noise) for p in paths])
        if update % 10 == 0 and _min_best_prob(controller) >= 0.9:
            break
    assert _min_best_prob(controller) >= 0.9


def test_argmax_behaviour_never_explores() -> None:
    """Greedy sampling scores only the current argmax path, so it does not find the best ops (rich get richer).

    With an EMA baseline its expected advantage is zero; only reward noise moves the logits.
    """
    cfg = ReinforceConfig(sample="edges", behaviour="argmax")
    controller = ReinforceController({"normal": (4, 4), "reduce": (3, 4)}, cfg, 0, torch.Generator().manual_seed(0))
    noise = torch.Generator().manual_seed(1)
    for _ in range(300):
        greedy = controller.argmax_path()
        paths = controller.sample(cfg.samples_per_update)
        assert all(torch.equal(p[g], greedy[g]) for p in paths for g in greedy)
        controller.update(paths, [_synthetic_reward(p, noise) for p in paths])
    assert _min_best_prob(controller) < 0.5


class _PathNet(nn.Module):
    """Predicts class 0 with a margin that grows with the number of op-1 choices; records its calls."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[Path, bool]] = []

    def forward(self, x: torch.Tensor, path: Path) -> torch.Tensor:
        self.calls.append((path, torch.is_grad_enabled()))
        score = float(sum((ops == 1).sum().item() for ops in path.values()))
        return torch.stack([x[:, 0] + score, x[:, 1]], dim=1)


def test_arch_step_scores_samples_on_the_validation_batch() -> None:
    cfg = ReinforceConfig(sample="edges", samples_per_update=3, rl_interval_steps=5)
    controller = ReinforceController({"normal": (4, 3), "reduce": (2, 3)}, cfg, 1, torch.Generator().manual_seed(0))
    model = _PathNet()
    x, y = torch.randn(64, 2), torch.zeros(64, dtype=torch.long)
    ctx = ArchStepContext(model=model, criterion=nn.functional.cross_entropy, train_batch=(x, y), val_batch=(x, y),
                          w_optimizer=torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1), lr=0.1, stage=1, step=0)
    controller.path_architecture = lambda space, kept_ops, path: path  # no space: a path is its own architecture
    controller.reward_fn = lambda arch, acc: (0.5 * acc, {"params": 2.0 + acc, "flops": 30.0 + acc})
    tagged = controller.arch_step(ctx)
    assert controller.update_interval == 5 and len(model.calls) == 3
    assert not any(grad for _, grad in model.calls)
    assert set(tagged) == {"arch/entropy"} | {f"reinforce/{key}" for key in (
        "reward_mean", "reward_max", "baseline", "iw_mean", "iw_max", "params_mean", "flops_mean", "acc_mean")}
    assert all(f"stage{{s}}/{key}" in {**ReinforceController.tags, "stage{s}/arch/entropy": ""} for key in tagged)
    metrics = {key.split("/")[1]: value for key, value in tagged.items()}
    assert 0.0 <= metrics["acc_mean"] <= 1.0
    assert metrics["reward_mean"] == pytest.approx(0.5 * metrics["acc_mean"])
    assert metrics["params_mean"] == pytest.approx(2.0 + metrics["acc_mean"])
    assert metrics["flops_mean"] == pytest.approx(30.0 + metrics["acc_mean"])
    best_path, best_reward = controller.best_recent()
    assert best_reward == pytest.approx(metrics["reward_max"])
    assert set(best_path) == {"normal", "reduce"}


def test_forward_kwargs_paths() -> None:
    controller = ReinforceController({"normal": (4, 3)}, ReinforceConfig(sample="edges"), 0,
                                     torch.Generator().manual_seed(0))
    path = controller.weight_forward_kwargs()["path"]
    assert path["normal"].shape == (4,) and path["normal"].dtype == torch.long
    assert torch.equal(controller.eval_forward_kwargs()["path"]["normal"], controller.argmax_path()["normal"])
    assert controller.best_recent() is None


def _run(controller: ReinforceController, updates: int, seed: int) -> list[Path]:
    noise = torch.Generator().manual_seed(seed)
    sampled = []
    for _ in range(updates):
        paths = controller.sample(4)
        controller.update(paths, [_synthetic_reward(p, noise) for p in paths])
        sampled += paths
    return sampled


def test_state_dict_round_trip_continues_identically() -> None:
    cfg = ReinforceConfig(sample="edges", last_n=10)
    shapes = {"normal": (4, 4), "reduce": (3, 4)}
    original = ReinforceController(shapes, cfg, 0, torch.Generator().manual_seed(0))
    _run(original, 20, seed=1)
    buffer = io.BytesIO()
    torch.save(original.state_dict(), buffer)
    buffer.seek(0)
    restored = ReinforceController(shapes, cfg, 0)  # no generator: the checkpoint brings one
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert restored.samples_seen == 80 and restored.baseline == original.baseline and len(restored.recent) == 10
    continued, resumed = _run(original, 10, seed=2), _run(restored, 10, seed=2)
    assert all(torch.equal(a[g], b[g]) for a, b in zip(continued, resumed) for g in shapes)
    for group in shapes:
        assert torch.equal(original.alphas[group], restored.alphas[group])
    assert original.baseline == restored.baseline
    assert original.best_recent()[1] == restored.best_recent()[1]


@pytest.mark.parametrize("change, message", [
    ({"behaviour": "greedy"}, "reinforce.behaviour is 'greedy'; choose one of: multinomial, uniform, epsilon_greedy"),
    ({"epsilon": [0.2, 0.2]}, "reinforce.epsilon has 2 values but the search has 3 stages"),
    ({"epsilon": [0.2, 1.2, 0.2]}, r"reinforce.epsilon values must lie in \[0, 1\]"),
    ({"truncation": 0.0}, "reinforce.truncation must be > 0"),
    ({"samples_per_update": 0}, "reinforce.samples_per_update must be a positive integer"),
    ({"rl_interval_steps": 1.5}, "reinforce.rl_interval_steps must be a positive integer"),
    ({"last_n": -3}, "reinforce.last_n must be a positive integer"),
    ({"mode": "joint"}, "reinforce.mode is 'joint'; choose one of: interleaved, separate"),
    ({"weight_sampling": "argmax"}, "reinforce.weight_sampling is 'argmax'; choose one of: uniform, behaviour"),
    ({"importance": "step"}, "reinforce.importance is 'step'; choose one of: path, decision"),
    ({"sample": "paths"}, "reinforce.sample is 'paths'; choose one of: genotype, edges"),
    ({"baseline_decay": 1.0}, r"reinforce.baseline_decay must lie in \[0, 1\)"),
    ({"lr": 0}, "reinforce.lr must be > 0"),
    ({"betas": [0.9]}, "reinforce.betas must be two values"),
    ({"entropy_weight": -1e-4}, "reinforce.entropy_weight must be >= 0"),
])
def test_config_validation_messages(change: dict, message: str) -> None:
    ReinforceConfig().validate(3)
    with pytest.raises(UserError, match=message):
        ReinforceConfig(**change).validate(3)
