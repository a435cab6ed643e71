"""PC-DARTS on the NB201 space: `model.mixture: partial`, `model.partial_k` and `model.edge_norm` (K=1 against the
plain mixture, the seeded channel draw, edge weights in the mixture, on a path and in the derivation, the config,
and a short search that records its edge weights)."""
from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT, same_seed_outputs

import search
from controllers.edge_weights import edge_nodes
from controllers.gradient import GradientConfig, GradientController
from nas.core.config import build_dataclass
from nas.core.errors import UserError
from nas.core.records import read_record
from search_spaces.nb201 import INCOMING, NB201_OPS, NB201ModelConfig, NB201Space
from search_spaces.partial_channels import partial_edge

DATA = SimpleNamespace(in_channels=3, size=8, num_classes=10)

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


def space(**model: object) -> NB201Space:
    cfg = build_dataclass(NB201ModelConfig, {"C": 8, **model}, "model")
    NB201Space.validate_config({"model": cfg})
    return NB201Space.from_config({"model": cfg}, DATA)


def supernet(**model: object) -> torch.nn.Module:
    torch.manual_seed(0)
    s = space(**model)
    return s.build_supernet(s.initial_kept_ops(), layers=1).eval()


def reference_mixture(net: torch.nn.Module, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The NB201 mixture written out: node i sums w[e][k] * op_k(node j) over its edges (e, j) and every op."""
    x = net.stem(x)
    for block in net.blocks:
        if not hasattr(block, "edges"):  # a residual reduction
            x = block(x)
            continue
        nodes = [x]
        for pairs in INCOMING:
            nodes.append(sum(w[e][k] * op(nodes[j]) for e, j in pairs for k, op in enumerate(block.edges[e])))
        x = nodes[-1]
    return net.classifier(net.head(x))


def mixture_weights() -> dict[str, torch.Tensor]:
    return {"cell": torch.softmax(torch.randn(6, len(NB201_OPS), generator=torch.Generator().manual_seed(3)), -1)}


def test_partial_with_k1_and_no_edge_norm_equals_the_plain_mixture() -> None:
    full, partial = supernet(), supernet(mixture="partial", partial_k=1)
    x, w = torch.randn(3, 3, 8, 8), mixture_weights()
    with torch.no_grad():
        plain = full(x, weights=w)
        assert torch.allclose(partial(x, weights=w), plain, rtol=1e-5, atol=1e-6)
        assert torch.allclose(reference_mixture(partial, x, w["cell"]), plain, rtol=1e-5, atol=1e-6)


def test_the_partial_mixture_runs_its_ops_on_drawn_channels_seeded() -> None:
    net = supernet(mixture="partial", partial_k=4)  # C=8: 2 channels go through the ops
    convs = [block.edges[0][NB201_OPS.index("nor_conv_3x3")].body[0] for block in net.blocks if hasattr(block, "edges")]
    assert [conv.in_channels for conv in convs] == [2, 4, 8]  # C/K at C, 2C and 4C channels
    x, w = torch.randn(3, 3, 8, 8), mixture_weights()
    with torch.no_grad():
        torch.manual_seed(7)
        first = net(x, weights=w)
        torch.manual_seed(7)
        assert torch.equal(net(x, weights=w), first)  # the same draw under the same seed
        assert not torch.allclose(net(x, weights=w), first)  # a new draw on the next forward
        torch.manual_seed(7)
        assert not torch.allclose(supernet()(x, weights=w), first)  # not the full mixture
    alphas = torch.zeros(6, len(NB201_OPS), requires_grad=True)
    betas = torch.ones(6, requires_grad=True)
    net(x, weights={"cell": torch.softmax(alphas, -1)}, edge_weights={"cell": betas}).sum().backward()
    assert alphas.grad.abs().sum() > 0 and betas.grad.abs().sum() > 0


def test_the_grouped_partial_nodes_equal_the_mixture_written_out_edge_by_edge() -> None:
    """Edges keep different ops (as after a drop), the supernet trains: outputs, gradients and running statistics
    match the per-edge PC-DARTS mixture (partial_edge, every kept op on the edge's drawn channels)."""
    torch.manual_seed(0)
    nb201 = space(mixture="partial", partial_k=2)
    kept = {"cell": [[NB201_OPS[(e + i) % len(NB201_OPS)] for i in range(3)] for e in range(6)]}
    net = nb201.build_supernet(kept, layers=1).train()
    reference = copy.deepcopy(net)
    x = torch.randn(4, 3, 8, 8)
    alphas, betas = torch.randn(6, 3, requires_grad=True), torch.rand(6, requires_grad=True)

    def written_out(w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        h = reference.stem(x.contiguous(memory_format=torch.channels_last))
        for block in reference.blocks:
            if not hasattr(block, "edges"):
                h = block(h)
                continue
            nodes = [h]
            for pairs in INCOMING:
                nodes.append(sum(b[e] * partial_edge(nodes[j], 2, 1, lambda part, ops=block.edges[e], w_e=w[e]: sum(
                    w_e[k] * op(part) for k, op in enumerate(ops))) for e, j in pairs))
            h = nodes[-1]
        return reference.classifier(reference.head(h))

    results = []
    for model, forward in ((net, lambda w, b: net(x, weights={"cell": w}, edge_weights={"cell": b})),
                           (reference, written_out)):
        torch.manual_seed(1)
        out = forward(torch.softmax(alphas, -1), betas)
        results.append((out, torch.autograd.grad(out.square().sum(), [alphas, betas, *model.parameters()])))
    (mine, my_grads), (theirs, their_grads) = results
    assert torch.allclose(mine, theirs, rtol=1e-4, atol=1e-5)
    assert all(torch.allclose(a, b, rtol=1e-3, atol=1e-5) for a, b in zip(my_grads, their_grads))
    assert all(torch.allclose(a.float(), b.float(), atol=1e-6) for a, b in zip(net.buffers(), reference.buffers()))


def test_edge_weights_scale_every_edge_of_the_mixture_and_the_path() -> None:
    x, w = torch.randn(3, 3, 8, 8), mixture_weights()
    halves = {"cell": torch.full((6,), 0.5)}
    for model in ({}, {"mixture": "partial", "partial_k": 2}):
        net = supernet(edge_norm=True, **model)
        plain, halved, folded = same_seed_outputs(net, x, {"weights": w}, {"weights": w, "edge_weights": halves},
                                                  {"weights": {"cell": w["cell"] * 0.5}})
        assert not torch.allclose(plain, halved)
        if not model:  # the full mixture folds the edge weights into the op weights
            assert torch.allclose(halved, folded, atol=1e-6)
    net = supernet(edge_norm=True)
    path = {"cell": torch.tensor([3, 2, 1, 4, 3, 0])}
    betas = torch.tensor([1.0, 0.2, 0.8, 0.1, 0.3, 0.6])
    scale = torch.tensor([0.5, 1.0, 2.0, 1.0, 0.5, 1.0])
    with torch.no_grad():
        assert torch.allclose(net(x, path=path, path_scale={"cell": scale}, edge_weights={"cell": betas}),
                              net(x, path=path, path_scale={"cell": scale * betas}), atol=1e-6)
        assert torch.allclose(net(x, path=path, edge_weights={"cell": betas}),
                              net(x, path=path, path_scale={"cell": betas}), atol=1e-6)
    with pytest.raises(UserError, match="edge_weights= holds one value per edge"):
        net(x, weights=w, edge_weights={"cell": torch.ones(5)})
    with pytest.raises(UserError, match="single path"):
        supernet(mixture="partial", partial_k=2)(x, path=path)


def test_edge_norm_learns_one_weight_per_input_edge_and_derives_alpha_times_beta() -> None:
    nb201 = space(mixture="partial", partial_k=4, edge_norm=True)
    kept = nb201.initial_kept_ops()
    assert nb201.edge_normalised and not space().edge_normalised
    assert edge_nodes(nb201, kept) == {"cell": [[0], [1, 2], [3, 4, 5]]} and edge_nodes(space(), kept) == {}
    controller = GradientController(GradientController.shapes(kept), GradientConfig(), edge_nodes(nb201, kept))
    with torch.no_grad():
        controller.alphas["cell"].copy_(torch.randn(6, 5, generator=torch.Generator().manual_seed(2)))
        controller.betas["cell"].copy_(torch.tensor([5.0, 0.0, 1.0, 0.0, 2.0, -1.0]))
    edge_w = controller.edge_weights()["cell"]
    assert edge_w[0] == 1 and torch.allclose(edge_w[1:3].sum(), torch.tensor(1.0))  # node 1 has one input
    scores = controller.derivation_scores()["cell"]
    assert torch.allclose(scores, controller.probs()["cell"] * edge_w[:, None])  # alpha times beta
    # Every NB201 edge is kept, so beta (one scalar per edge) never changes which op an edge keeps.
    assert controller.architecture(nb201, kept) == nb201.derive(controller.probs(), kept)
    nodes = controller.stage_entries(nb201, kept, {})["edge_weights"]["cell"]
    assert [len(node) for node in nodes] == [1, 2, 3] and all(abs(sum(node) - 1) < 1e-5 for node in nodes)


@pytest.mark.parametrize("model, message", [({"mixture": "half"}, "model.mixture"),
                                            ({"mixture": "partial", "partial_k": 3}, "divisible by K"),
                                            ({"mixture": "partial", "partial_k": 0}, "divisible by K")])
def test_bad_partial_settings_are_one_line_errors(model: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        space(**model)


def test_a_partial_nb201_search_records_its_edge_weights(tmp_path: Path) -> None:
    settings = ["data.dataset=digits", "data.root=data", "data.limit=300", "data.batch_size=50", "model.C=4",
                "model.mixture=partial", "model.partial_k=2", "model.edge_norm=true", "stages.layers=[1]",
                "stages.epochs=[1]", "stages.warmup_epochs=[0]", "stages.keep=[1]", "stages.skip_dropout=[0.0]",
                "run.draw=false", "run.log_every=100"]
    quick = ROOT / "experiments" / "nb201_quick.yaml"
    assert search.main(["-c", str(quick), "--run-dir", str(tmp_path), "--set", *settings]) == 0
    record = read_record(tmp_path / "genotype.json")
    nodes = record["search"]["stages"][0]["edge_weights"]["cell"]
    assert [len(node) for node in nodes] == [1, 2, 3] and nodes[0] == [1.0]
    assert all(abs(sum(node) - 1) < 1e-5 for node in nodes) and len(set(nodes[2])) == 3


def test_partial_k_needs_no_even_share_on_nb201() -> None:
    net = supernet(C=4, mixture="partial", partial_k=4)  # one channel per edge: NB201 never halves a cell's width
    out = net(torch.randn(2, 3, 8, 8), weights=mixture_weights())
    assert out.shape == (2, 10) and F.softmax(out, -1).isfinite().all()
