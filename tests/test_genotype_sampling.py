"""REINFORCE with `sample: genotype`: a sample is a genotype, scored and charged as exactly that genotype.

Checked against what the test computes itself, not against the code under test: on a cell small enough to
enumerate, with edges whose only op is skip_connect (forced skips), the behaviour probabilities mu of every
behaviour are written out by hand with their masks, the importance weights (truncated, self-normalised) follow
from them, the sampling frequencies match mu within bounds derived from the sample size, the entropy, the mode
and the constrained mode equal brute force, and the estimator's expectation under the hand-computed mu is the
policy gradient. On the DARTS cell: the scored accuracy is that of the path the supernet actually ran, and every
sample is charged the parameters of the genotype the record holds.
"""
from __future__ import annotations

import io
import itertools
import math

import pytest
import torch
from torch import nn

from controllers.base import ArchStepContext
from controllers.genotype_policy import GenotypePolicy
from controllers.reinforce import ReinforceConfig, ReinforceController
from controllers.reward import RewardConfig, make_reward_fn
from controllers.sampling import make_behaviour
from nas.core.arch_types import CellLayout
from nas.core.batchnorm import batch_stat_eval
from nas.core.errors import UserError
from search_spaces.darts.networks import eval_param_count
from search_spaces.darts.space import DartsSpace
from search_spaces.ops import DARTS_OPS

SKIP, CONV, OFF = "skip_connect", "conv_3x3", -1
# Node 0 reads edges 0-1, node 1 edges 2-4. Edges 1 and 3 can only skip (forced skips), edge 2 only convolve.
# Op index per edge: edge 0 and 4 (skip 0, conv 1); edge 1 and 3 (none 0, skip 1); edge 2 (none 0, conv 1).
TINY = {"normal": CellLayout([[0, 1], [2, 3, 4]],
                             [[SKIP, CONV], ["none", SKIP], ["none", CONV], ["none", SKIP], [SKIP, CONV]], 2)}
SHAPES = {"normal": (5, 2)}
PAIRS = [(2, 3), (2, 4), (3, 4)]  # node 1's input pairs, in the policy's order
EPSILON = 0.3


def _controller(behaviour: str = "multinomial", layouts: dict = TINY, seed: int = 0, **cfg) -> ReinforceController:
    config = ReinforceConfig(behaviour=behaviour, epsilon=[EPSILON], **cfg)
    controller = ReinforceController(SHAPES, config, 0, torch.Generator().manual_seed(seed), layouts=layouts)
    with torch.no_grad():  # a policy far from uniform, so that the checks below see the logits
        for logits in controller.parameters():
            logits.copy_(torch.randn(logits.shape, generator=torch.Generator().manual_seed(seed + 7)))
    return controller


def _skips(row: list[int]) -> int:
    names = TINY["normal"].ops
    return sum(k != OFF and names[e][k] == SKIP for e, k in enumerate(row))


def _all_genotypes(max_skip: int | None = None) -> list[dict[str, torch.Tensor]]:
    """Every path with 2 inputs per node and a non-none op on each (at most `max_skip` skips)."""
    usable = [[k for k, name in enumerate(names) if name != "none"] for names in TINY["normal"].ops]
    result = []
    for a, b in PAIRS:
        for ops in itertools.product(usable[0], usable[1], usable[a], usable[b]):
            row = [ops[0], ops[1], OFF, OFF, OFF]
            row[a], row[b] = ops[2], ops[3]
            if max_skip is None or _skips(row) <= max_skip:
                result.append({"normal": torch.tensor(row)})
    return result


def _log_pi(controller: ReinforceController, paths, ops=None, pairs=None) -> torch.Tensor:
    cells = controller.cells
    return cells.decision_log_probs(ops or controller._cpu_logits(), pairs or controller._cpu_pairs(),
                                    cells.decisions(paths)).sum(dim=1)


# ----- the behaviour probabilities, by hand -----
def _mu(behaviour: str, logits: list[float], mask: list[bool], choice: int) -> float:
    """The behaviour probability of `choice` among the options `mask` allows, from the definitions."""
    options = [k for k, allowed in enumerate(mask) if allowed]
    if behaviour == "uniform":
        return 1 / len(options)
    if behaviour == "multinomial":
        return math.exp(logits[choice]) / sum(math.exp(logits[k]) for k in options)
    greedy = max(options, key=lambda k: logits[k])
    eps = EPSILON if behaviour == "epsilon_greedy" else 0.0
    return eps / len(options) + (1 - eps) * (choice == greedy)


def _pi(logits: list[float], mask: list[bool], choice: int) -> float:
    return _mu("multinomial", logits, mask, choice)


def _hand_decisions(row: list[int]) -> list[tuple[str, int, list[bool], int]]:
    """(kind, edge or node, mask, choice) of every decision of a TINY path, the masks worked out by hand: at most
    2 skips; edge 1's skip is forced, so after a skip on edge 0 the budget is spent and node 1 may use neither
    edge 3 (a forced skip) nor a skip on edge 4."""
    after_node0 = (row[0] == 0) + 1  # edge 0's op 0 is skip, edge 1 always skips
    pair = next(i for i, (a, b) in enumerate(PAIRS) if row[a] != OFF and row[b] != OFF)
    pair_mask = [True, True, True] if after_node0 < 2 else [False, True, False]
    a, b = PAIRS[pair]
    first_skip = a == 3  # edge 3 can only skip
    decisions = [("pair", 0, [True], 0), ("op", 0, [True, True], row[0]), ("op", 1, [False, True], row[1]),
                 ("pair", 1, pair_mask, pair), ("op", a, [False, True], row[a])]
    edge4_skip_allowed = after_node0 + first_skip < 2
    decisions.append(("op", b, [False, True] if b == 3 else [edge4_skip_allowed, True], row[b]))
    return decisions


def _hand_prob(controller: ReinforceController, row: list[int], behaviour: str | None) -> list[float]:
    """Per decision, mu (or pi with behaviour None) of the path's choice, by hand."""
    ops, pairs = controller._cpu_logits()["normal"].tolist(), controller._cpu_pairs()["normal"].tolist()
    pair_logits = [pairs[:1], pairs[1:]]
    result = []
    for kind, where, mask, choice in _hand_decisions(row):
        logits = pair_logits[where] if kind == "pair" else ops[where]
        result.append(_pi(logits, mask, choice) if behaviour is None else _mu(behaviour, logits, mask, choice))
    return result


@pytest.mark.parametrize("behaviour", ["multinomial", "uniform", "epsilon_greedy", "argmax"])
def test_behaviour_probabilities_with_forced_skip_masks_match_the_hand_computed_ones(behaviour: str) -> None:
    controller = _controller(behaviour)
    paths = _all_genotypes(max_skip=2)
    cells = controller.cells
    decisions = cells.decisions(paths)
    mu = cells.decision_log_probs(controller._cpu_logits(), controller._cpu_pairs(), decisions,
                                  controller.behaviour).exp()
    pi = _log_pi(controller, paths).exp()
    order = [0, 3, 1, 2, 4, 5]  # the code's columns: pairs of every node, then the ops in decision order
    for i, path in enumerate(paths):
        row = path["normal"].tolist()
        want_mu = _hand_prob(controller, row, behaviour)
        assert mu[i].tolist() == pytest.approx([want_mu[j] for j in order], abs=1e-6)
        assert pi[i].item() == pytest.approx(math.prod(_hand_prob(controller, row, None)), abs=1e-6)
        masks = [d[2] for d in _hand_decisions(row)]
        assert decisions["normal"].pair_mask[i, 1].tolist() == masks[3]
        assert decisions["normal"].op_mask[i].tolist() == [masks[1], masks[2], masks[4], masks[5]]
    assert pi.sum().item() == pytest.approx(1.0, abs=1e-6) and len(paths) < len(_all_genotypes())  # masks bind


@pytest.mark.parametrize("behaviour", ["multinomial", "uniform", "epsilon_greedy"])
def test_sampling_frequencies_match_the_hand_computed_mu(behaviour: str) -> None:
    controller = _controller(behaviour)
    paths = _all_genotypes(max_skip=2)
    mu = [math.prod(_hand_prob(controller, p["normal"].tolist(), behaviour)) for p in paths]
    assert sum(mu) == pytest.approx(1.0)
    index = {tuple(p["normal"].tolist()): i for i, p in enumerate(paths)}
    n = 4000
    counts = [0] * len(paths)
    for path in controller.sample(n):
        counts[index[tuple(path["normal"].tolist())]] += 1  # a KeyError would be a sample that is no genotype
    for count, m in zip(counts, mu):  # 5 standard errors of a binomial frequency, plus one count of rounding
        assert abs(count / n - m) <= 5 * math.sqrt(m * (1 - m) / n) + 1 / n


def test_argmax_behaviour_samples_the_greedy_decisions_with_weight_pi() -> None:
    controller = _controller("argmax", importance="path", truncation=1e9)
    ops, pairs = controller._cpu_logits()["normal"].tolist(), controller._cpu_pairs()["normal"].tolist()
    greedy = [0 if ops[0][0] > ops[0][1] else 1, 1, OFF, OFF, OFF]  # edge 1 must skip
    spent = (greedy[0] == 0) + 1
    options = [1] if spent == 2 else [0, 1, 2]
    a, b = PAIRS[max(options, key=lambda i: pairs[1 + i])]
    greedy[a] = 1  # edges 2 and 3 have a single op
    greedy[b] = 1 if b != 4 or spent + (a == 3) >= 2 or ops[4][1] > ops[4][0] else 0
    samples = controller.sample(20)
    assert all(s["normal"].tolist() == greedy for s in samples)
    controller.baseline = 0.0
    _, weights, _ = controller._genotype_gradients(samples[:1], torch.tensor([1.0]))
    assert weights.item() == pytest.approx(math.prod(_hand_prob(controller, greedy, None)), rel=1e-5)


@pytest.mark.parametrize("self_normalize", [False, True])
def test_decision_weights_are_truncated_or_self_normalised_per_decision(self_normalize: bool) -> None:
    truncation = 1.5
    controller = _controller("uniform", truncation=truncation, self_normalize=self_normalize)
    paths = _all_genotypes(max_skip=2)[:5]
    ratios = torch.tensor([[p / m for p, m in zip(_hand_prob(controller, path["normal"].tolist(), None),
                                                   _hand_prob(controller, path["normal"].tolist(), "uniform"))]
                           for path in paths])
    ratios = ratios[:, [0, 3, 1, 2, 4, 5]]  # the code's column order
    want = len(paths) * ratios / ratios.sum(dim=0) if self_normalize else ratios.clamp(max=truncation)
    controller.baseline = 0.0
    _, weights, _ = controller._genotype_gradients(paths, torch.linspace(0, 1, len(paths)))
    torch.testing.assert_close(weights, want.float(), atol=1e-5, rtol=1e-5)
    assert (ratios > truncation).any()  # the truncation binds somewhere


@pytest.mark.parametrize("behaviour", ["uniform", "epsilon_greedy"])
def test_path_weighted_estimator_is_unbiased_under_the_hand_computed_mu(behaviour: str) -> None:
    """sum_a mu(a) g(a), with mu from the definitions (not the code's), equals grad E_pi[R], by enumeration."""
    controller = _controller(behaviour, importance="path", truncation=1e9, entropy_weight=0.0)
    paths = _all_genotypes(max_skip=2)
    rewards = torch.linspace(0.1, 0.9, len(paths))
    leaves = [t.clone().requires_grad_() for t in (controller._cpu_logits()["normal"],
                                                     controller._cpu_pairs()["normal"])]
    log_pi = _log_pi(controller, paths, {"normal": leaves[0]}, {"normal": leaves[1]})
    exact = torch.autograd.grad((log_pi.exp() * rewards).sum(), leaves)
    controller.baseline = 0.3
    expected = [torch.zeros_like(g) for g in exact]
    for path, reward in zip(paths, rewards):
        mu = math.prod(_hand_prob(controller, path["normal"].tolist(), behaviour))
        ascent, _, _ = controller._genotype_gradients([path], reward[None])
        expected[0] += mu * ascent["alphas.normal"]
        expected[1] += mu * ascent["pair_logits.normal"]
    for got, want in zip(expected, exact):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


# ----- entropy, mode, constrained mode: brute force -----
def test_entropy_is_the_policys_entropy_by_enumeration_value_and_gradient() -> None:
    controller = _controller()
    paths = _all_genotypes(max_skip=2)
    ops, pairs = (controller._cpu_logits()["normal"].clone().requires_grad_(),
                  controller._cpu_pairs()["normal"].clone().requires_grad_())
    log_pi = _log_pi(controller, paths, {"normal": ops}, {"normal": pairs})
    p = log_pi.exp()
    brute = -(p * log_pi.nan_to_num(neginf=0.0)).sum()
    got = controller.cells.entropy({"normal": ops}, {"normal": pairs}).sum()
    assert got.item() == pytest.approx(brute.item(), abs=1e-5)
    for a, b in zip(torch.autograd.grad(got, [ops, pairs]), torch.autograd.grad(brute, [ops, pairs])):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_entropy_at_uniform_logits_weights_each_edge_by_its_choice_probability() -> None:
    """DARTS cells without a binding skip limit: per node log C(n, 2) for the pair, and 16 chosen edges of 7 ops."""
    space, kept = _darts(max_skip=8)
    policy = GenotypePolicy(space.cell_layout(kept))
    entropy = policy.entropy({g: torch.zeros(14, 8) for g in kept},
                             {g: torch.zeros(n) for g, n in policy.pair_shapes().items()})
    assert entropy[:, 0].sum().item() == pytest.approx(2 * math.log(3 * 6 * 10), rel=1e-5)
    assert entropy[:, 1].sum().item() == pytest.approx(16 * math.log(7), rel=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_mode_and_constrained_mode_are_the_argmax_by_enumeration(seed: int) -> None:
    controller = _controller(seed=seed)
    with torch.no_grad():
        controller.alphas["normal"][[0, 4], 0] += 1.0  # lean towards skips, so that the limits bind
    paths = _all_genotypes(max_skip=2)
    log_pi = _log_pi(controller, paths)
    assert torch.equal(controller.mode_path()["normal"], paths[int(log_pi.argmax())]["normal"])
    assert torch.equal(controller.least_likely_path()["normal"],
                       paths[int(log_pi.masked_fill(log_pi == -math.inf, math.inf).argmin())]["normal"])
    for limit in range(5):
        allowed = log_pi.masked_fill(torch.tensor([_skips(p["normal"].tolist()) > limit for p in paths]), -math.inf)
        got = controller.mode_path(limit)
        if allowed.max() == -math.inf:
            assert got is None
        else:
            assert torch.equal(got["normal"], paths[int(allowed.argmax())]["normal"]), limit


# ----- forced skips: no dead ends, infeasible limits refused -----
def test_sampler_keeps_the_skips_that_later_nodes_are_forced_to_take() -> None:
    """Node 1's inputs can only skip: node 0 must leave both skips of max_skip=2 to it."""
    layout = {"normal": CellLayout([[0, 1], [2, 3, 4]], [[SKIP, CONV]] * 2 + [["none", SKIP]] * 3, 2)}
    controller = _controller("uniform", layouts=layout)
    for path in controller.sample(100) + [controller.mode_path(), controller.least_likely_path()]:
        assert path["normal"].tolist()[:2] == [1, 1] and (path["normal"][2:] == 1).sum() == 2
    pairs = controller._cpu_pairs()["normal"]  # every decision is forced but node 1's pair: H(pi) is its entropy
    log_p = pairs[1:].log_softmax(0)
    assert controller.cells.entropy(controller._cpu_logits(), {"normal": pairs}).sum().item() == \
        pytest.approx(-(log_p.exp() * log_p).sum().item(), abs=1e-6)


def test_a_skip_limit_no_genotype_fits_is_refused() -> None:
    layout = {"normal": CellLayout([[0, 1], [2, 3, 4]], [["none", SKIP]] * 5, 3)}
    with pytest.raises(UserError, match="force at least 4 skips"):
        GenotypePolicy(layout)


# ----- the DARTS cell -----
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
    reward_fn = make_reward_fn(RewardConfig(metric=["params"], alpha=[-0.5], p_base=[3.0]), 0,
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


def test_genotypes_by_skip_limit_never_hold_more_skips_than_the_policy_samples() -> None:
    space, kept = _darts()
    controller = ReinforceController({g: (14, 8) for g in kept}, ReinforceConfig(), 0,
                                     torch.Generator().manual_seed(0), layouts=space.cell_layout(kept))
    with torch.no_grad():
        controller.alphas["normal"][:, DARTS_OPS.index("skip_connect")] += 5.0  # skips everywhere if allowed
    for limit in space.max_skip_choices():
        genotype = controller.architecture(space, kept, limit)
        assert sum(op == "skip_connect" for op, _ in genotype.normal) == min(limit, 2)


def test_the_accuracy_scored_is_that_of_the_path_the_supernet_ran() -> None:
    """arch_step runs each sample's path (spied on the model's forward), charges that path's genotype with the
    accuracy of that run, and keeps that path in the samples it selects from; the other edges do not matter."""
    space, kept = _darts()
    torch.manual_seed(0)
    model = space.build_supernet(kept, layers=3).eval()
    controller = ReinforceController({g: (14, 8) for g in kept}, ReinforceConfig(samples_per_update=3), 0,
                                     torch.Generator().manual_seed(0), layouts=space.cell_layout(kept))
    x, y = torch.randn(32, 1, 8, 8), torch.randint(10, (32,))
    ran, forward = [], model.forward

    def spy(*args, **kwargs):
        out = forward(*args, **kwargs)
        ran.append((kwargs["path"], (out.argmax(1) == y).float().mean().item()))
        return out

    model.forward = spy
    ctx = ArchStepContext(model=model, criterion=nn.functional.cross_entropy, train_batch=(x, y), val_batch=(x, y),
                          w_optimizer=torch.optim.SGD(model.parameters(), lr=0.1), lr=0.1, stage=0, step=0)
    scored = []
    controller.space, controller.kept_ops = space, kept
    controller.reward_fn = lambda arch, acc: scored.append((arch, acc)) or (acc, {"params": 1.0})
    controller.arch_step(ctx)
    model.forward = forward
    kept_paths = [path for path, _ in controller.scored_samples()]
    assert len(ran) == len(scored) == len(kept_paths) == 3
    for (path, acc), (arch, scored_acc), kept_path in zip(ran, scored, kept_paths):
        assert scored_acc == acc
        alone = space.architecture_path(arch, kept)
        assert all(torch.equal(path[g], alone[g]) and torch.equal(kept_path[g], alone[g]) for g in path)
    with torch.no_grad(), batch_stat_eval(model):
        before = model(x, path=ran[0][0])
        for cell in model.cells:  # scramble every op of every edge the first genotype does not use
            for e in range(14):
                if ran[0][0]["reduce" if cell.reduction else "normal"][e] == OFF:
                    for p in cell.edges[e].parameters():
                        p.add_(torch.randn_like(p))
        torch.testing.assert_close(model(x, path=ran[0][0]), before)


def test_probabilities_give_none_zero_so_op_dropping_drops_it_first() -> None:
    space, kept = _darts()
    controller = ReinforceController({g: (14, 8) for g in kept}, ReinforceConfig(), 0, layouts=space.cell_layout(kept))
    probs = controller.probs()
    assert all((p[:, 0] == 0).all() and torch.allclose(p.sum(-1), torch.ones(14)) for p in probs.values())
    assert make_behaviour("uniform").edge_probs(torch.zeros(1, 3), torch.tensor([[False, True, True]])).tolist() == \
        [[0.0, 0.5, 0.5]]


# Genotypes the first (per-call, Python) sampler drew for this seed: samples 1 and 2 of sample(6), then sample 3 of
# sample(3) after one update. A faster sampler must draw the same ones from the same generator state.
PINNED = {
    "multinomial": [
        [[3, 2, 6, 4, -1, -1, 5, 7, -1, -1, 7, -1, 6, -1], [1, 2, 6, 7, -1, 4, -1, -1, 6, 2, -1, 4, -1, -1]],
        [[3, 2, 1, 4, -1, 4, -1, -1, 6, 5, -1, -1, 6, -1], [1, 2, 6, 4, -1, 4, -1, -1, 6, 4, -1, 4, -1, -1]],
        [[3, 4, 6, 4, -1, -1, 4, 7, -1, 5, -1, -1, 6, -1], [7, 2, 6, 4, -1, 4, -1, -1, 6, 3, -1, -1, 3, -1]]],
    "epsilon_greedy": [
        [[3, 2, 1, 4, -1, 4, -1, -1, 6, 5, -1, -1, 6, -1], [1, 2, 1, 4, -1, 4, -1, -1, 6, 1, -1, -1, 3, -1]],
        [[3, 2, 1, 4, -1, 4, -1, -1, 6, 5, -1, -1, 6, -1], [1, 2, 1, 4, -1, 4, -1, -1, 6, 3, -1, -1, 3, -1]],
        [[3, 7, 5, 4, -1, 4, -1, -1, 6, 5, -1, -1, 5, -1], [7, 2, 1, 4, -1, 4, -1, -1, 6, 3, -1, -1, 3, -1]]],
}


@pytest.mark.parametrize("behaviour", sorted(PINNED))
def test_sampled_genotypes_for_a_seed_are_the_pinned_ones(behaviour: str) -> None:
    space, kept = _darts(max_skip=1)  # a binding skip limit: the skip masks shape the draws
    controller = ReinforceController({g: (14, 8) for g in kept}, ReinforceConfig(behaviour=behaviour), 0,
                                     torch.Generator().manual_seed(5), layouts=space.cell_layout(kept))
    with torch.no_grad():
        for logits in controller.parameters():
            logits.copy_(2 * torch.randn(logits.shape, generator=torch.Generator().manual_seed(11)))
        controller.alphas["normal"][:, DARTS_OPS.index("skip_connect")] += 2.0
    paths = controller.sample(6)
    controller.update(paths[:4], [0.1, 0.5, 0.2, 0.9])
    paths += controller.sample(3)
    got = [[paths[i]["normal"].tolist(), paths[i]["reduce"].tolist()] for i in (0, 1, 8)]
    assert got == PINNED[behaviour]
