"""PC-DARTS: partial channels (the edge, the shuffle, the seeded draw, K=1 against the plain mixture) and edge
normalisation (the node softmax, the derivation with alpha times beta, the config)."""
from __future__ import annotations

import copy
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import same_seed_outputs
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import search
from controllers.edge_weights import edge_nodes, node_softmax
from controllers.gradient import GradientConfig, GradientController
from nas.core.config import build_dataclass, load_config
from nas.core.errors import UserError
from nas.core.records import read_record
from nas.engine.search_config import SearchConfig
from search_spaces.darts.geometry import GROUPS
from search_spaces.darts.space import DartsModelConfig, DartsSpace
from search_spaces.ops import DARTS_OPS
from search_spaces.partial_channels import channel_shuffle, draw_channels, partial_edge, select_channels

DIGITS = SimpleNamespace(in_channels=1, size=8, num_classes=10)


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


def space(**model: object) -> DartsSpace:
    cfg = build_dataclass(DartsModelConfig, {"C": 4, **model}, "model")
    cfg.validate()
    return DartsSpace.from_config({"model": cfg}, DIGITS)


def test_channel_shuffle_interleaves_the_groups() -> None:
    x = torch.arange(6.0).view(1, 6, 1, 1)
    assert channel_shuffle(x, 2).flatten().tolist() == [0, 3, 1, 4, 2, 5]
    assert torch.equal(channel_shuffle(x, 1), x)


def test_the_gather_and_the_shuffle_keep_channels_last_and_the_values() -> None:
    x = torch.randn(2, 8, 3, 3)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    index = torch.tensor([1, 4, 6])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = select_channels(x_cl, index)  # index_select: no rounding either
    for y, expected in ((select_channels(x_cl, index), x[:, index]), (under_autocast, x[:, index]),
                        (channel_shuffle(x_cl, 4), channel_shuffle(x, 4))):
        assert y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous()
        assert torch.equal(y, expected)
    assert select_channels(x, index).is_contiguous()  # NCHW stays NCHW


def test_partial_edge_runs_the_ops_on_the_drawn_channels_and_passes_the_rest() -> None:
    x = torch.randn(2, 8, 4, 4)
    torch.manual_seed(5)
    drawn, bypass = draw_channels(8, 4)
    torch.manual_seed(5)
    y = partial_edge(x, 4, 1, lambda part: 10 * part)
    expected = torch.cat([10 * x[:, drawn], x[:, bypass]], dim=1)
    assert torch.equal(y, channel_shuffle(expected, 4))
    assert sorted(drawn.tolist() + bypass.tolist()) == list(range(8)) and len(drawn) == 2
    pooled = partial_edge(x, 4, 2, lambda part: None)  # a stride-2 edge with only `none`: zeros + pooled bypass
    assert pooled.shape == (2, 8, 2, 2) and int((pooled.abs().sum((0, 2, 3)) == 0).sum()) == 2
    assert torch.equal(partial_edge(x, 1, 1, lambda part: 2 * part), 2 * x)  # K=1: the plain edge


def test_the_channel_draw_is_seeded() -> None:
    torch.manual_seed(1)
    first = [draw_channels(16, 4)[0] for _ in range(3)]
    torch.manual_seed(1)
    again = [draw_channels(16, 4)[0] for _ in range(3)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, first[0]) for a in first[1:])  # a new draw on every forward


def reference_mixture(net: torch.nn.Module, x: torch.Tensor, weights: dict[str, torch.Tensor]) -> torch.Tensor:
    """The DARTS mixture written out: every node sums w[e][k] * op_k(input) over every op (`none` adds zero)."""
    s0 = s1 = net.stem(x.contiguous(memory_format=torch.channels_last))
    for cell, group in zip(net.cells, net._groups):
        states = [cell.preprocess0(s0), cell.preprocess1(s1)]
        for node in cell.nodes:
            states.append(sum(weights[group][e][k] * op(states[j]) for e, j in node for k, op in
                              enumerate(cell.edges[e])))
        s0, s1 = s1, torch.cat(states[-cell.multiplier:], dim=1)
    return net.classifier(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(s1, 1), 1))


def test_partial_with_k1_and_no_edge_norm_equals_the_plain_mixture() -> None:
    torch.manual_seed(0)
    net = space(mixture="partial", partial_k=1).build_supernet(space().initial_kept_ops(), layers=3).eval()
    x = torch.randn(3, 1, 8, 8)
    weights = {g: torch.softmax(torch.randn(14, len(DARTS_OPS)), -1) for g in GROUPS}
    with torch.no_grad():
        assert torch.allclose(net(x, weights=weights), reference_mixture(net, x, weights), rtol=1e-5, atol=1e-6)


def reference_partial_mixture(net: torch.nn.Module, x: torch.Tensor, weights: dict[str, torch.Tensor],
                              edge_weights: dict[str, torch.Tensor]) -> torch.Tensor:
    """The PC-DARTS mixture written out edge by edge: partial_edge runs every kept op (`none` adds zero) of the
    edge on its drawn channels, and the edge's output is scaled by its edge weight."""
    s0 = s1 = net.stem(x.contiguous(memory_format=torch.channels_last))
    for cell, group in zip(net.cells, net._groups):
        states = [cell.preprocess0(s0), cell.preprocess1(s1)]
        for node in cell.nodes:
            states.append(sum(edge_weights[group][e] * partial_edge(
                states[j], net.partial_k, cell.strides[e],
                lambda part, ops=cell.edges[e], w=weights[group][e]: sum(w[k] * op(part) for k, op in enumerate(ops))
            ) for e, j in node))
        s0, s1 = s1, torch.cat(states[-cell.multiplier:], dim=1)
    return net.classifier(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(s1, 1), 1))


@pytest.mark.parametrize("train", [False, True])
def test_the_grouped_partial_node_equals_the_mixture_written_out_edge_by_edge(train: bool) -> None:
    """Edges keep different ops (as after a P-DARTS drop), so a node's grouped calls run on subsets of its edges;
    in training the batch statistics, the running statistics and the gradients match too."""
    torch.manual_seed(0)
    kept = {g: [sorted((DARTS_OPS[(e + i) % 8] for i in range(4)), key=DARTS_OPS.index) for e in range(14)]
            for g in GROUPS}
    net = space(mixture="partial", partial_k=2).build_supernet(kept, layers=3).train(train)
    reference = copy.deepcopy(net)
    x = torch.randn(4, 1, 8, 8)
    alphas = {g: torch.randn(14, 4, requires_grad=True) for g in GROUPS}
    betas = {g: torch.rand(14, requires_grad=True) for g in GROUPS}
    outputs, grads = [], []
    for model, forward in ((net, lambda w, b: net(x, weights=w, edge_weights=b)),
                           (reference, lambda w, b: reference_partial_mixture(reference, x, w, b))):
        torch.manual_seed(1)
        out = forward({g: torch.softmax(a, -1) for g, a in alphas.items()}, betas)
        outputs.append(out)
        grads.append(torch.autograd.grad(out.square().sum(), [*alphas.values(), *betas.values(),
                                                             *model.parameters()]))
    assert torch.allclose(outputs[0], outputs[1], rtol=1e-4, atol=1e-5)
    assert all(torch.allclose(a, b, rtol=1e-3, atol=1e-5) for a, b in zip(*grads))
    for (name, mine), theirs in zip(net.named_buffers(), reference.buffers()):
        assert torch.allclose(mine.float(), theirs.float(), rtol=1e-4, atol=1e-6), name


def test_edge_weights_scale_every_edge_of_the_full_and_the_partial_mixture() -> None:
    for model in ({}, {"mixture": "partial", "partial_k": 2}):
        torch.manual_seed(0)
        net = space(**model).build_supernet(space().initial_kept_ops(), layers=3).eval()
        x = torch.randn(3, 1, 8, 8)
        weights = {g: torch.softmax(torch.randn(14, len(DARTS_OPS)), -1) for g in GROUPS}
        halves = {g: torch.full((14,), 0.5) for g in GROUPS}
        plain, halved, folded = same_seed_outputs(net, x, {"weights": weights},
                                                  {"weights": weights, "edge_weights": halves},
                                                  {"weights": {g: w * 0.5 for g, w in weights.items()}})
        assert not torch.allclose(plain, halved)
        if not model:  # the full mixture folds the edge weights into the op weights
            assert torch.allclose(halved, folded, atol=1e-6)


def test_node_softmax_normalises_over_each_nodes_inputs() -> None:
    logits = torch.tensor([0.0, math.log(3.0), 1.0, 1.0, 1.0])
    weights = node_softmax(logits, [[0, 1], [2, 3, 4]])
    assert torch.allclose(weights, torch.tensor([0.25, 0.75, 1 / 3, 1 / 3, 1 / 3]))


def test_derivation_ranks_edges_by_alpha_times_beta() -> None:
    """steps=2, ops (skip_connect, max_pool_3x3). Node 1's edges (2, 3, 4) have best-op probabilities 0.9, 0.6,
    0.55 and edge weights 0.1, 0.3, 0.6: alpha alone keeps edges 2 and 3, alpha times beta (0.09, 0.18, 0.33)
    keeps edges 4 (max_pool on node 0) and 3 (skip on input 1)."""
    ops = ["skip_connect", "max_pool_3x3"]
    darts = space(steps=2, multiplier=2, normal_ops=ops, reduce_ops=ops, edge_norm=True, max_skip=4)
    kept = darts.initial_kept_ops()
    controller = GradientController(GradientController.shapes(kept), GradientConfig(), edge_nodes(darts, kept))
    best = {0: (0, 0.7), 1: (1, 0.8), 2: (0, 0.9), 3: (0, 0.6), 4: (1, 0.55)}  # edge -> (best op, probability)
    with torch.no_grad():
        for group in GROUPS:
            for e, (k, p) in best.items():
                controller.alphas[group][e] = torch.tensor([p, 1 - p] if k == 0 else [1 - p, p]).log()
            controller.betas[group].copy_(torch.tensor([0.0, 0.0, 0.1, 0.3, 0.6]).clamp_min(1e-9).log())
    assert torch.allclose(controller.derivation_scores()["normal"][4], torch.tensor([0.45 * 0.6, 0.55 * 0.6]))
    arch = controller.architecture(darts, kept)
    assert arch.normal == arch.reduce == [("max_pool_3x3", 1), ("skip_connect", 0),  # node 0: 0.4 over 0.35
                                          ("max_pool_3x3", 2), ("skip_connect", 1)]
    plain = darts.derive(controller.probs(), kept)
    assert plain.normal[2:] == [("skip_connect", 0), ("skip_connect", 1)]  # without beta: edges 2 and 3


def test_edge_weights_are_learned_recorded_and_absent_without_edge_norm() -> None:
    darts, plain = space(edge_norm=True), space()
    kept = darts.initial_kept_ops()
    controller = GradientController(GradientController.shapes(kept), GradientConfig(), edge_nodes(darts, kept))
    assert len(controller.optimizer.param_groups[0]["params"]) == 4  # two alphas, two betas
    entries = controller.stage_entries(darts, kept, {})
    nodes = entries["edge_weights"]["normal"]  # per node, its input edges' weights
    assert [len(node) for node in nodes] == [2, 3, 4, 5] and all(abs(sum(node) - 1) < 1e-5 for node in nodes)
    assert "gradient/edge_weights" in controller.stage_texts(entries)
    bare = GradientController(GradientController.shapes(kept), GradientConfig(), edge_nodes(plain, kept))
    assert not list(bare.betas) and bare.stage_entries(plain, kept, {}) == {}
    assert "edge_weights" not in bare.weight_forward_kwargs()


@pytest.mark.parametrize("model, message", [({"mixture": "half"}, "model.mixture"),
                                            ({"mixture": "partial", "partial_k": 3}, "divisible by 2K")])
def test_bad_partial_settings_are_one_line_errors(model: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        space(**model)


def test_pcdarts_configs_hold_the_papers_settings() -> None:
    root = Path(__file__).resolve().parents[1] / "experiments"
    paper = load_config(SearchConfig, root / "pcdarts_cifar10.yaml")
    model, gradient = paper.model, paper.gradient
    assert (model.mixture, model.partial_k, model.edge_norm) == ("partial", 4, True)
    assert (paper.data.batch_size, paper.optim.lr, gradient.lr) == (256, 0.1, 6e-4)
    assert (paper.stages.epochs, paper.stages.warmup_epochs, paper.stages.layers) == ([50], [15], [8])
    quick = load_config(SearchConfig, root / "pcdarts_digits.yaml")
    assert quick.data.dataset == "digits" and quick.model.mixture == "partial"


def test_a_partial_search_records_and_reports_its_edge_weights(tmp_path: Path) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text("data:\n  dataset: digits\n")
    settings = ["model.C=4", "model.mixture=partial", "model.partial_k=2", "model.edge_norm=true",
                "data.batch_size=96", "stages.layers=[3]", "stages.epochs=[1]", "stages.warmup_epochs=[0]",
                "stages.keep=[1]", "stages.skip_dropout=[0.0]", "run.draw=false", "run.log_every=100"]
    assert search.main(["-c", str(config), "--run-dir", str(tmp_path / "run"), "--set", *settings]) == 0
    stage = read_record(tmp_path / "run" / "genotype.json")["search"]["stages"][0]
    assert [len(node) for node in stage["edge_weights"]["reduce"]] == [2, 3, 4, 5]
    assert "Edge weights at the end of the stage" in (tmp_path / "run" / "report.md").read_text()
    events = EventAccumulator(str(tmp_path / "run" / "tb"), size_guidance={"tensors": 0})
    events.Reload()
    assert "stage1/gradient/edge_weights/text_summary" in events.Tags()["tensors"]  # TensorBoard's text tab
