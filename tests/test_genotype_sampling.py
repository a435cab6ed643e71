"""REINFORCE with `sample: genotype`: a sample is a genotype, scored and charged as exactly that genotype.

Exactness on a cell small enough to enumerate (probabilities sum to one, the mode is the argmax, the estimator's
expectation is the policy gradient), and on the DARTS cell: 200 samples charged the parameters of the genotype
the record holds, and the accuracy scored is that genotype's path on its own.
"""
from __future__ import annotations

import io
import itertools
import math

import pytest
import torch
from torch import nn

from controllers.base import ArchStepContext
from controllers.reinforce import ReinforceConfig, ReinforceController
from controllers.reward import RewardConfig, make_reward_fn
from controllers.sampling import make_behaviour
from nas.core.arch_types import CellLayout
from nas.core.batchnorm import batch_stat_eval
from search_spaces.darts.networks import eval_param_count
from search_spaces.darts.space import DartsSpace
from search_spaces.ops import DARTS_OPS

# Node 0 reads edges 0-1, node 1 edges 2-4; every edge keeps none, skip and a conv; at most one skip.
TINY = {"normal": CellLayout([[0, 1], [2, 3, 4]], [["none", "skip_connect", "conv_3x3"]] * 5, 1)}
SHAPES = {"normal": (5, 3)}
SKIP, CONV = 1, 2


def _controller(behaviour: str = "multinomial", seed: int = 0, **cfg) -> ReinforceController:
    config = ReinforceConfig(behaviour=behaviour, epsilon=[0.3], **cfg)
    controller = ReinforceController(SHAPES, config, 0, torch.Generator().manual_seed(seed), layouts=TINY)
    with torch.no_grad():  # a policy far from uniform, so that the checks below see the logits
        for logits in controller.parameters():
            logits.copy_(torch.randn(logits.shape, generator=torch.Generator().manual_seed(seed + 7)))
    return controller


def _all_genotypes() -> list[dict[str, torch.Tensor]]:
    """Every path with 2 inputs per node, a non-none op on them and at most one skip."""
    result = []
    for pair in itertools.combinations(range(3), 2):
        for ops in itertools.product((SKIP, CONV), repeat=4):
            if sum(op == SKIP for op in ops) > 1:
                continue
            row = [ops[0], ops[1], -1, -1, -1]
            row[2 + pair[0]], row[2 + pair[1]] = ops[2], ops[3]
            result.append({"normal": torch.tensor(row)})
    return result


def _log_pi(controller: ReinforceController, paths) -> torch.Tensor:
    cells = controller.cells
    return cells.decision_log_probs(controller._cpu_logits(), controller._cpu_pairs(),
                                    cells.decisions(paths)).sum(dim=1)


def test_probabilities_of_all_genotypes_sum_to_one_and_the_mode_is_the_argmax() -> None:
    controller = _controller()
    paths = _all_genotypes()
    log_pi = _log_pi(controller, paths)
    assert log_pi.exp().sum().item() == pytest.approx(1.0, abs=1e-6)
    best, worst = paths[int(log_pi.argmax())], paths[int(log_pi.argmin())]
    assert torch.equal(controller.mode_path()["normal"], best["normal"])
    assert torch.equal(controller.least_likely_path()["normal"], worst["normal"])


@pytest.mark.parametrize("behaviour", ["multinomial", "uniform", "epsilon_greedy"])
def test_samples_are_genotypes_drawn_with_the_behaviour_probabilities(behaviour: str) -> None:
    controller = _controller(behaviour)
    paths = _all_genotypes()
    cells = controller.cells
    mu = cells.decision_log_probs(controller._cpu_logits(), controller._cpu_pairs(), cells.decisions(paths),
                                  controller.behaviour).sum(dim=1).exp()
    assert mu.sum().item() == pytest.approx(1.0, abs=1e-6)
    index = {tuple(p["normal"].tolist()): i for i, p in enumerate(paths)}
    counts = torch.zeros(len(paths))
    for path in controller.sample(6000):
        counts[index[tuple(path["normal"].tolist())]] += 1  # a KeyError would be a sample that is no genotype
    assert (counts / 6000 - mu).abs().max().item() < 0.02


def test_argmax_behaviour_samples_the_greedy_decisions_only() -> None:
    controller = _controller("argmax")
    assert len({tuple(p["normal"].tolist()) for p in controller.sample(50)}) == 1


@pytest.mark.parametrize("behaviour", ["uniform", "epsilon_greedy"])
def test_path_weighted_estimator_is_unbiased_for_the_policy_gradient(behaviour: str) -> None:
    """E_mu[w (R - b) grad log pi] (untruncated path weights) equals grad E_pi[R], by enumeration."""
    controller = _controller(behaviour, importance="path", truncation=1e9, entropy_weight=0.0)
    paths = _all_genotypes()
    rewards = torch.linspace(0.1, 0.9, len(paths))
    leaves = [t.clone().requires_grad_() for t in (controller._cpu_logits()["normal"],
                                                     controller._cpu_pairs()["normal"])]
    cells = controller.cells
    decisions = cells.decisions(paths)
    log_pi = cells.decision_log_probs({"normal": leaves[0]}, {"normal": leaves[1]}, decisions).sum(dim=1)
    exact = torch.autograd.grad((log_pi.exp() * rewards).sum(), leaves)
    mu = cells.decision_log_probs(controller._cpu_logits(), controller._cpu_pairs(), decisions,
                                  controller.behaviour).sum(dim=1).exp()
    controller.baseline = 0.3
    expected = [torch.zeros_like(g) for g in exact]
    for path, reward, mu_a in zip(paths, rewards, mu):
        ascent, _, _ = controller._genotype_gradients([path], reward[None])
        expected[0] += mu_a * ascent["alphas.normal"]
        expected[1] += mu_a * ascent["pair_logits.normal"]
    for got, want in zip(expected, exact):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("behaviour", ["multinomial", "uniform", "epsilon_greedy"])
def test_policy_finds_the_best_genotype(behaviour: str) -> None:
    """Reward: the share of the target's decisions a sample matches, plus noise; the mode becomes the target."""
    target = {"normal": torch.tensor([CONV, SKIP, CONV, -1, CONV])}
    controller = ReinforceController(SHAPES, ReinforceConfig(behaviour=behaviour, epsilon=[0.3], lr=0.1), 0,
                                     torch.Generator().manual_seed(0), layouts=TINY)
    noise = torch.Generator().manual_seed(1)
    for _ in range(300):
        paths = controller.sample(4)
        rewards = [(p["normal"] == target["normal"]).float().mean().item() + 0.05 * torch.randn(1, generator=noise)
                   .item() for p in paths]
        controller.update(paths, rewards)
    assert torch.equal(controller.mode_path()["normal"], target["normal"])


def test_genotype_state_round_trip_continues_identically() -> None:
    original = _controller("epsilon_greedy")
    original.update(original.sample(4), [0.1, 0.2, 0.3, 0.4])
    buffer = io.BytesIO()
    torch.save(original.state_dict(), buffer)
    buffer.seek(0)
    restored = ReinforceController(SHAPES, original.cfg, 0, layouts=TINY)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    for controller in (original, restored):
        controller.update(controller.sample(4), [0.4, 0.3, 0.2, 0.1])
    assert all(torch.equal(a, b) for a, b in zip(original.parameters(), restored.parameters()))
    assert torch.equal(original.sample(1)[0]["normal"], restored.sample(1)[0]["normal"])


def _darts(max_skip: int = 2) -> tuple[DartsSpace, dict]:
    space = DartsSpace(C=4, num_classes=10, in_channels=1, normal_ops=list(DARTS_OPS), reduce_ops=list(DARTS_OPS),
                       max_skip=max_skip)
    return space, space.initial_kept_ops()


@pytest.mark.parametrize("behaviour", ["multinomial", "uniform", "epsilon_greedy", "argmax"])
def test_every_sample_is_charged_the_parameters_of_the_genotype_it_outputs(behaviour: str) -> None:
    space, kept = _darts()
    controller = ReinforceController({g: (14, 8) for g in kept}, ReinforceConfig(behaviour=behaviour), 0,
                                     torch.Generator().manual_seed(3), layouts=space.cell_layout(kept))
    reward_fn = make_reward_fn(RewardConfig(metric=["params"], alpha=[-0.5], beta=[-1.0], p_base=[3.0]), 0,
                               {"params": space.params_millions})
    for path in controller.sample(200):
        genotype = space.path_architecture(path, kept)
        assert all(op != "none" for op, _ in genotype.normal + genotype.reduce)
        assert sum(op == "skip_connect" for op, _ in genotype.normal) <= 2
        for cell in (genotype.normal, genotype.reduce):
            assert all(cell[i][1] != cell[i + 1][1] for i in range(0, 8, 2))  # two distinct inputs per node
        reward, costs = reward_fn(controller.path_architecture(space, kept, path), 0.5)
        params_m = costs["params"]
        assert params_m == eval_param_count(genotype, 36, 20, 10, 1) / 1e6
        assert reward == pytest.approx(0.5 * (params_m / 3.0) ** -0.5)


def test_the_final_genotype_is_the_mode_and_obeys_every_skip_limit() -> None:
    space, kept = _darts()
    controller = ReinforceController({g: (14, 8) for g in kept}, ReinforceConfig(), 0,
                                     torch.Generator().manual_seed(0), layouts=space.cell_layout(kept))
    with torch.no_grad():
        controller.alphas["normal"][:, DARTS_OPS.index("skip_connect")] += 5.0  # skips everywhere if allowed
    assert str(controller.architecture(space, kept)) == str(space.path_architecture(controller.mode_path(), kept))
    for limit in space.max_skip_choices():
        genotype = controller.architecture(space, kept, limit)
        assert sum(op == "skip_connect" for op, _ in genotype.normal) == limit


def test_the_accuracy_scored_is_that_of_the_genotype_alone() -> None:
    """Only the genotype's edges run: its path gives the scored accuracy, and the other edges do not matter."""
    space, kept = _darts()
    torch.manual_seed(0)
    model = space.build_supernet(kept, layers=3).eval()
    controller = ReinforceController({g: (14, 8) for g in kept}, ReinforceConfig(samples_per_update=3), 0,
                                     torch.Generator().manual_seed(0), layouts=space.cell_layout(kept))
    scored = []
    x, y = torch.randn(32, 1, 8, 8), torch.randint(10, (32,))
    ctx = ArchStepContext(model=model, criterion=nn.functional.cross_entropy, train_batch=(x, y), val_batch=(x, y),
                          w_optimizer=torch.optim.SGD(model.parameters(), lr=0.1), lr=0.1, stage=0, step=0)
    controller.space, controller.kept_ops = space, kept
    controller.reward_fn = lambda arch, acc: scored.append((arch, acc)) or (acc, {"params": 1.0})
    controller.arch_step(ctx)
    paths = []
    for arch, acc in scored:
        alone = space.architecture_path(arch, kept)
        with batch_stat_eval(model), torch.no_grad():  # as arch_step scores: BatchNorm on the batch's statistics
            assert (model(x, path=alone).argmax(1) == y).float().mean().item() == acc
        paths.append(alone)
    with torch.no_grad():
        before = model(x, path=paths[0])
        for cell in model.cells:  # scramble every op of every edge the first genotype does not use
            for e in range(14):
                if paths[0]["reduce" if cell.reduction else "normal"][e] == -1:
                    for p in cell.edges[e].parameters():
                        p.add_(torch.randn_like(p))
        torch.testing.assert_close(model(x, path=paths[0]), before)


def test_probabilities_give_none_zero_so_op_dropping_drops_it_first() -> None:
    space, kept = _darts()
    controller = ReinforceController({g: (14, 8) for g in kept}, ReinforceConfig(), 0, layouts=space.cell_layout(kept))
    probs = controller.probs()
    assert all((p[:, 0] == 0).all() and torch.allclose(p.sum(-1), torch.ones(14)) for p in probs.values())
    assert make_behaviour("uniform").edge_probs(torch.zeros(1, 3), torch.tensor([[False, True, True]])).tolist() == \
        [[0.0, 0.5, 0.5]]
    assert math.isclose(sum(controller.cells.entropy(controller._cpu_logits(), controller._cpu_pairs()).tolist()),
                        2 * (math.log(1) + math.log(3) + math.log(6) + math.log(10)) + 28 * math.log(7), rel_tol=1e-4)
