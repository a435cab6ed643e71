"""DARTS space: supernet modes, eval network, parameter table, derivation, op dropping, the space API."""
from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from nas.core.errors import UserError
from search_spaces.darts.genotype import Genotype
from search_spaces.darts.geometry import GROUPS, edges_per_cell
from search_spaces.darts.networks import NetworkEval, SearchNetwork, eval_param_count
from search_spaces.darts.space import DartsSpace, derive_genotype
from search_spaces.ops import DARTS_OPS, EXTENDED_OPS

E = edges_per_cell(4)
CONCAT = [2, 3, 4, 5]
DARTS_V1 = Genotype(
    normal=[("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 0), ("sep_conv_3x3", 1),
            ("skip_connect", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 2)],
    normal_concat=CONCAT,
    reduce=[("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 0),
            ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("avg_pool_3x3", 0)],
    reduce_concat=CONCAT,
)
DARTS_V2 = Genotype(
    normal=[("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
            ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)],
    normal_concat=CONCAT,
    reduce=[("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
            ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1)],
    reduce_concat=CONCAT,
)
PDARTS = Genotype(
    normal=[("skip_connect", 0), ("dil_conv_3x3", 1), ("skip_connect", 0), ("sep_conv_3x3", 1),
            ("sep_conv_3x3", 1), ("sep_conv_3x3", 3), ("sep_conv_3x3", 0), ("dil_conv_5x5", 4)],
    normal_concat=CONCAT,
    reduce=[("avg_pool_3x3", 0), ("sep_conv_5x5", 1), ("sep_conv_3x3", 0), ("dil_conv_5x5", 2),
            ("max_pool_3x3", 0), ("dil_conv_3x3", 1), ("dil_conv_3x3", 1), ("dil_conv_5x5", 3)],
    reduce_concat=CONCAT,
)


def all_ops_kept() -> dict[str, list[list[str]]]:
    return {group: [list(DARTS_OPS) for _ in range(E)] for group in GROUPS}


def random_path(net: SearchNetwork, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {group: torch.randint(0, net.n_ops[group], (E,), generator=gen) for group in GROUPS}


def one_hot(path: dict[str, torch.Tensor], net: SearchNetwork) -> dict[str, torch.Tensor]:
    return {group: F.one_hot(path[group], net.n_ops[group]).float().requires_grad_() for group in GROUPS}


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


@pytest.fixture(scope="module")
def small_net() -> SearchNetwork:
    torch.manual_seed(0)
    return SearchNetwork(4, 10, 3, 1, all_ops_kept())


# ---------------------------------------------------------------------------- supernet


@pytest.mark.parametrize("in_channels,size", [(1, 8), (1, 28), (3, 32), (1, 7)])
def test_supernet_shapes_both_modes(in_channels: int, size: int) -> None:
    torch.manual_seed(0)
    net = SearchNetwork(4, 7, 3, in_channels, all_ops_kept())
    x = torch.randn(2, in_channels, size, size)
    weights = {group: torch.softmax(torch.randn(E, 8), -1) for group in GROUPS}
    assert net(x, weights=weights).shape == (2, 7)
    assert net(x, path=random_path(net, 0)).shape == (2, 7)


def test_mixture_with_one_hot_weights_equals_path(small_net: SearchNetwork) -> None:
    x = torch.randn(3, 1, 8, 8)
    path = random_path(small_net, 3)
    torch.testing.assert_close(small_net(x, weights=one_hot(path, small_net)), small_net(x, path=path))


def test_path_gradients_reach_exactly_the_ops_that_ran(small_net: SearchNetwork) -> None:
    small_net.zero_grad(set_to_none=True)
    path = random_path(small_net, 1)
    small_net(torch.randn(2, 1, 8, 8), path=path).sum().backward()
    ran = not_ran = 0
    for cell in small_net.cells:
        chosen = path["reduce" if cell.reduction else "normal"]
        for e, edge in enumerate(cell.edges):
            for k, op in enumerate(edge):
                for param in op.parameters():
                    if k == chosen[e]:
                        assert param.grad is not None and param.grad.abs().sum() > 0
                        ran += 1
                    else:
                        assert param.grad is None or not param.grad.any()
                        not_ran += 1
    assert ran > 0 and not_ran > 0
    assert all(p.grad is not None for p in small_net.cells[0].preprocess1.parameters())


def test_mixture_backprops_into_zero_weights(small_net: SearchNetwork) -> None:
    weights = {group: torch.softmax(torch.randn(E, 8), -1) for group in GROUPS}
    weights["normal"][:, 4] = 0.0  # sep_conv_3x3 switched off by its weight
    weights = {group: w.requires_grad_() for group, w in weights.items()}
    small_net(torch.randn(2, 1, 8, 8), weights=weights).pow(2).sum().backward()
    grad = weights["normal"].grad
    assert grad is not None and (grad[:, 4] != 0).all()
    assert (grad[:, 0] == 0).all()  # `none` contributes nothing
    assert (weights["reduce"].grad[:, 1:] != 0).all()


def test_different_kept_ops_per_edge() -> None:
    rng = random.Random(0)
    candidates = list(DARTS_OPS) + ["conv_3x3", "max_pool_5x5"]
    kept = {group: [rng.sample(candidates, 3) for _ in range(E)] for group in GROUPS}
    kept["normal"][0] = ["none", "skip_connect", "conv 3x3"]  # old spelling accepted
    net = SearchNetwork(4, 10, 3, 1, kept)
    assert net.kept_ops["normal"][0] == ["none", "skip_connect", "conv_3x3"]
    assert [len(edge) for edge in net.cells[0].edges] == [3] * E
    x = torch.randn(2, 1, 8, 8)
    path = random_path(net, 2)
    torch.testing.assert_close(net(x, weights=one_hot(path, net)), net(x, path=path))


def test_path_with_all_none_node_gives_zeros() -> None:
    kept = {group: [["none", "sep_conv_3x3"] for _ in range(E)] for group in GROUPS}
    net = SearchNetwork(4, 10, 2, 1, kept)
    path = {group: torch.zeros(E, dtype=torch.long) for group in GROUPS}  # every edge runs `none`
    out = net(torch.randn(2, 1, 7, 7), path=path)
    assert out.shape == (2, 10)
    assert torch.allclose(out, net.classifier.bias.expand(2, -1))  # all cell outputs are zero


def test_skip_dropout_only_in_training() -> None:
    kept = {group: [["skip_connect"] for _ in range(E)] for group in GROUPS}
    net = SearchNetwork(4, 10, 1, 1, kept)  # a single reduction cell: its node-to-node edges are identities
    path = {group: torch.zeros(E, dtype=torch.long) for group in GROUPS}
    x = torch.randn(4, 1, 8, 8)
    net.eval()
    reference = net(x, path=path)
    net.set_skip_dropout(0.5)
    torch.testing.assert_close(net(x, path=path), reference)
    net.train()
    torch.manual_seed(0)
    assert not torch.allclose(net(x, path=path), net(x, path=path))
    with pytest.raises(UserError, match="skip dropout"):
        net.set_skip_dropout(1.5)


def test_supernet_rejects_bad_input(small_net: SearchNetwork) -> None:
    x = torch.randn(1, 1, 8, 8)
    with pytest.raises(UserError, match="exactly one"):
        small_net(x)
    with pytest.raises(UserError, match="shape"):
        small_net(x, weights={group: torch.ones(E, 3) for group in GROUPS})
    with pytest.raises(UserError, match="op indices"):
        small_net(x, path={group: torch.full((E,), 8) for group in GROUPS})
    with pytest.raises(UserError, match="same non-zero number"):
        SearchNetwork(4, 10, 3, 1, {"normal": [["none"]] * (E - 1) + [["none", "skip_connect"]],
                                    "reduce": [["none"]] * E})
    with pytest.raises(UserError, match="unknown op"):
        SearchNetwork(4, 10, 3, 1, {"normal": [["conv_9x9"]] * E, "reduce": [["none"]] * E})


# ---------------------------------------------------------------------------- eval network


@pytest.mark.parametrize("genotype,expected", [(DARTS_V1, 3_169_414), (DARTS_V2, 3_349_342), (PDARTS, 3_433_798)])
def test_eval_param_counts_match_published(genotype: Genotype, expected: int) -> None:
    model = NetworkEval(genotype, 36, 10, 20, 3, auxiliary=True)
    built = sum(p.numel() for name, p in model.named_parameters() if not name.startswith("auxiliary_head"))
    assert abs(built - expected) < 10_000
    assert eval_param_count(genotype) == built


def random_genotype(rng: random.Random, ops: list[str]) -> Genotype:
    def cell() -> list[tuple[str, int]]:
        return [(rng.choice(ops), rng.randrange(2 + i)) for i in range(4) for _ in range(2)]

    return Genotype(cell(), [2, 3, 4, 5], cell(), [2, 3, 4, 5])


@pytest.mark.parametrize("seed", range(4))
def test_eval_param_count_matches_built_model(seed: int) -> None:
    rng = random.Random(seed)
    genotype = random_genotype(rng, [op for op in DARTS_OPS + EXTENDED_OPS if op != "none"])
    C, layers = rng.choice([8, 12, 16]), rng.choice([5, 6, 8])
    classes, channels = rng.choice([10, 100]), rng.choice([1, 3])
    model = NetworkEval(genotype, C, classes, layers, channels, auxiliary=False)
    assert eval_param_count(genotype, C, layers, classes, channels) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("size", [32, 28, 8])
def test_aux_head_shapes(size: int) -> None:
    model = NetworkEval(DARTS_V2, 4, 10, 3, 3, auxiliary=True).train()  # aux head after cell 2, at size / 4
    logits, aux = model(torch.randn(2, 3, size, size))
    assert logits.shape == aux.shape == (2, 10)
    model.eval()
    assert model(torch.randn(2, 3, size, size))[1] is None


def test_drop_path_only_in_training() -> None:
    torch.manual_seed(0)
    model = NetworkEval(PDARTS, 4, 10, 3, 1, auxiliary=False)
    x = torch.randn(4, 1, 8, 8)
    model.eval()
    reference = model(x)[0]
    model.drop_path_prob = 0.5
    torch.testing.assert_close(model(x)[0], reference)
    model.train()
    model.drop_path_prob = 0.0
    torch.testing.assert_close(model(x)[0], model(x)[0])
    model.drop_path_prob = 0.5
    assert not torch.allclose(model(x)[0], model(x)[0])


def test_eval_network_rejects_bad_genotype() -> None:
    bad_input = DARTS_V2._replace(normal=[("sep_conv_3x3", 3)] + DARTS_V2.normal[1:])
    with pytest.raises(UserError, match="node 0"):
        NetworkEval(bad_input, 8, 10, 3, 3, auxiliary=False)
    with pytest.raises(UserError, match="unknown op"):
        eval_param_count(DARTS_V2._replace(reduce=[("conv_9x9", 0)] + DARTS_V2.reduce[1:]))


# ---------------------------------------------------------------------------- derivation


def scores_for(choices: dict[int, dict[str, float]], kept: list[list[str]]) -> torch.Tensor:
    """A [E, K] score table with small noise and the given (edge -> op -> score) entries."""
    table = torch.full((E, len(kept[0])), 0.01)
    for e, ops in choices.items():
        for name, score in ops.items():
            table[e, kept[e].index(name)] = score
    return table


def test_derive_genotype_known_answer() -> None:
    kept = all_ops_kept()
    normal = scores_for({
        0: {"none": 0.9, "sep_conv_3x3": 0.5}, 1: {"dil_conv_3x3": 0.6},  # node 0: `none` ignored
        2: {"max_pool_3x3": 0.2}, 3: {"sep_conv_5x5": 0.7}, 4: {"skip_connect": 0.4},  # node 1: edges 3, 4
        5: {"avg_pool_3x3": 0.3}, 6: {"dil_conv_5x5": 0.35}, 7: {"sep_conv_3x3": 0.8}, 8: {"none": 0.99},
        9: {"sep_conv_3x3": 0.5}, 13: {"dil_conv_3x3": 0.6},
    }, kept["normal"])
    reduce = scores_for({0: {"max_pool_3x3": 0.5}, 1: {"max_pool_3x3": 0.6}}, kept["reduce"])
    genotype = derive_genotype({"normal": normal, "reduce": reduce}, kept)
    assert genotype.normal == [("dil_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_5x5", 1), ("skip_connect", 2),
                               ("sep_conv_3x3", 2), ("dil_conv_5x5", 1), ("dil_conv_3x3", 4), ("sep_conv_3x3", 0)]
    assert genotype.reduce[:2] == [("max_pool_3x3", 1), ("max_pool_3x3", 0)]
    assert genotype.normal_concat == genotype.reduce_concat == [2, 3, 4, 5]


def test_skip_restriction_replaces_weakest_skips() -> None:
    kept = all_ops_kept()
    normal = scores_for({
        0: {"skip_connect": 0.9}, 1: {"skip_connect": 0.8},
        2: {"skip_connect": 0.5, "sep_conv_3x3": 0.3}, 3: {"sep_conv_5x5": 0.6},
        5: {"skip_connect": 0.7}, 6: {"dil_conv_3x3": 0.65}, 7: {"max_pool_3x3": 0.2},
        9: {"sep_conv_3x3": 0.5}, 10: {"sep_conv_3x3": 0.4},
    }, kept["normal"])
    scores = {"normal": normal, "reduce": torch.rand(E, 8)}
    unrestricted = derive_genotype(scores, kept, max_skip=None)
    assert [name for name, _ in unrestricted.normal].count("skip_connect") == 4
    genotype = derive_genotype(scores, kept, max_skip=2)
    # the weakest skips (edge 2 at 0.5, then edge 5 at 0.7) give way: edge 2 falls back to sep_conv_3x3,
    # node 2 picks edge 7 instead of edge 5
    assert genotype.normal[:6] == [("skip_connect", 0), ("skip_connect", 1), ("sep_conv_5x5", 1),
                                   ("sep_conv_3x3", 0), ("dil_conv_3x3", 1), ("max_pool_3x3", 2)]
    assert torch.equal(scores["normal"], normal)  # the caller's scores are untouched
    assert [name for name, _ in derive_genotype(scores, kept, max_skip=0).normal].count("skip_connect") == 0


def test_derive_from_sampled_path_scores() -> None:
    kept = all_ops_kept()
    path = torch.randint(1, 8, (E,), generator=torch.Generator().manual_seed(0))
    scores = F.one_hot(path, 8).float() * 0.3
    genotype = derive_genotype({"normal": scores, "reduce": scores}, kept, max_skip=None)
    edges = [0, 1], [2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12, 13]
    chosen = [kept["normal"][edges[i][j]][path[edges[i][j]]] for i in range(4) for j in range(2)]
    assert [name for name, _ in genotype.normal] == chosen  # ties keep the lower input index


drop_weakest = DartsSpace(4, 10, 1, list(DARTS_OPS), list(DARTS_OPS)).prune  # P-DARTS op dropping


def test_drop_weakest_schedule() -> None:
    kept = all_ops_kept()
    probs = {group: torch.softmax(torch.randn(E, 8, generator=torch.Generator().manual_seed(1)), -1)
             for group in GROUPS}
    stage2 = drop_weakest(probs, kept, 5, drop_none_first=False)
    assert all(len(edge) == 5 for group in GROUPS for edge in stage2[group])
    expected = [DARTS_OPS[k] for k in sorted(probs["normal"][0].argsort(descending=True)[:5].tolist())]
    assert stage2["normal"][0] == expected  # original order kept
    probs3 = {group: torch.rand(E, 5) for group in GROUPS}
    stage3 = drop_weakest(probs3, stage2, 3, drop_none_first=False)
    assert all(len(edge) == 3 and set(edge) <= set(prev) for edge, prev in zip(stage3["normal"], stage2["normal"]))
    final = drop_weakest({group: torch.rand(E, 3) for group in GROUPS}, stage3, 1, drop_none_first=True)
    assert all(len(edge) == 1 and edge[0] != "none" for group in GROUPS for edge in final[group])


def test_drop_none_first() -> None:
    kept = {group: [["none", "skip_connect", "sep_conv_3x3"] for _ in range(E)] for group in GROUPS}
    probs = {group: torch.tensor([[0.7, 0.2, 0.1]]).repeat(E, 1) for group in GROUPS}
    assert drop_weakest(probs, kept, 1, drop_none_first=False)["normal"][0] == ["none"]
    assert drop_weakest(probs, kept, 2, drop_none_first=True)["normal"][0] == ["skip_connect", "sep_conv_3x3"]
    with pytest.raises(UserError, match="cannot keep 3"):
        drop_weakest(probs, kept, 3, drop_none_first=True)


# ---------------------------------------------------------------------------- the space


def test_darts_space_api() -> None:
    normal_ops = list(DARTS_OPS[1:]) + ["conv 1x1", "conv_3x3", "max_pool_5x5"]
    reduce_ops = ["max_pool_3x3", "avg_pool_3x3", "skip_connect", "max_pool_5x5", "max_pool_7x7", "none"]
    space = DartsSpace(4, 10, 1, normal_ops, reduce_ops)
    kept = space.initial_kept_ops()
    assert space.name == "darts"
    assert len(kept["normal"]) == E and kept["normal"][0][-3] == "conv_1x1" and len(kept["reduce"][0]) == 6
    net = space.build_supernet(kept, 3)
    x = torch.randn(2, 1, 8, 8)
    weights = {group: torch.full((E, len(kept[group][0])), 0.1) for group in GROUPS}
    assert net(x, weights=weights).shape == (2, 10)
    probs = {group: torch.rand(E, len(kept[group][0])) for group in GROUPS}
    genotype = space.derive(probs, kept)
    assert len(genotype.normal) == len(genotype.reduce) == 8
    assert sum(name == "skip_connect" for name, _ in genotype.normal) <= 2
    assert space.params_millions(genotype) == pytest.approx(eval_param_count(genotype, 36, 20, 10, 1) / 1e6)
    with pytest.raises(UserError, match="unknown op"):
        DartsSpace(4, 10, 1, ["sep_conv_3x3", "bogus"], reduce_ops)
    with pytest.raises(UserError, match="each once"):
        DartsSpace(4, 10, 1, ["sep_conv_3x3", "sep_conv_3x3"], reduce_ops)
