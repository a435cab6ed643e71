"""GDAS: one op per edge runs while the straight-through gradient reaches every logit, Gumbel-max draws, the
temperature schedule, the `gdas:` section, the controller's state, and a killed search resuming exactly."""
from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT, TINY_SEARCH

import search
from controllers.base import ArchStepContext
from controllers.gdas import GdasConfig, GdasController
from nas.core.errors import UserError
from nas.core.records import read_record
from nas.engine.search_config import SearchConfig
from search_spaces.darts.networks import SearchNetwork

QUICK_GDAS = str(ROOT / "experiments" / "quick_digits_gdas.yaml")
OPS = ["max_pool_3x3", "skip_connect", "sep_conv_3x3", "dil_conv_3x3"]  # no `none`: every drawn op has an output
SHAPES = {"normal": (14, len(OPS)), "reduce": (14, len(OPS))}


def tiny_supernet() -> SearchNetwork:
    torch.manual_seed(0)
    return SearchNetwork(C=4, num_classes=10, layers=3, in_channels=1, kept_ops={g: [OPS] * 14 for g in SHAPES})


def controller(seed: int = 0, cfg: GdasConfig | None = None) -> GdasController:
    return GdasController(SHAPES, cfg or GdasConfig(), torch.Generator().manual_seed(seed))


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(8, 1, 8, 8, generator=g), torch.randint(10, (8,), generator=g)


def arch_ctx(model: SearchNetwork, seed: int = 0) -> ArchStepContext:
    return ArchStepContext(model=model, criterion=F.cross_entropy, train_batch=None, val_batch=batch(seed),
                           w_optimizer=torch.optim.SGD(model.parameters(), lr=0.1), lr=0.1, stage=0, step=0)


def test_only_the_drawn_op_runs_and_every_logit_of_its_edge_gets_a_gradient():
    model, gdas = tiny_supernet(), controller()
    gdas.on_epoch(2, 5)  # a middle temperature
    calls: dict[tuple[int, int, int], int] = {}
    for c, cell in enumerate(model.cells):
        for e, edge in enumerate(cell.edges):
            for k, op in enumerate(edge):
                op.register_forward_hook(lambda *_, key=(c, e, k): calls.__setitem__(key, calls.get(key, 0) + 1))
    path, scale = gdas.sample()
    x, y = batch()
    F.cross_entropy(model(x, path=path, path_scale=scale), y).backward()
    groups = ["reduce" if cell.reduction else "normal" for cell in model.cells]
    for (c, e, k), n in calls.items():
        assert n == 1 and k == path[groups[c]][e].item(), (c, e, k)
    assert len(calls) == len(model.cells) * 14  # every edge ran exactly one op
    for group, alpha in gdas.alphas.items():
        assert torch.allclose(scale[group].detach(), torch.ones(14))  # the value is the hard one-hot's
        assert (alpha.grad != 0).all(), group  # the drawn op's weight carries a gradient to all K logits


def test_an_architecture_step_moves_every_logit():
    model, gdas = tiny_supernet(), controller()
    before = {g: a.detach().clone() for g, a in gdas.alphas.items()}
    scalars = gdas.arch_step(arch_ctx(model))
    assert set(scalars) == {"arch/entropy", "gdas/arch_loss", "gdas/arch_acc"}
    assert all((gdas.alphas[g].detach() != before[g]).all() for g in before)
    assert all(p.grad is None for p in model.parameters())  # the weights are the weight step's business


def test_draws_follow_softmax_of_the_logits_and_do_not_depend_on_tau():
    n, logits = 40_000, torch.tensor([1.0, 0.0, -1.0, 0.5])
    gdas = GdasController({"cell": (n, 4)}, GdasConfig(), torch.Generator().manual_seed(3))
    with torch.no_grad():
        gdas.alphas["cell"].copy_(logits.expand(n, 4))
    state = gdas.generator.get_state()
    gdas.tau = 1.0
    path, _ = gdas.sample()
    freq = torch.bincount(path["cell"], minlength=4).double() / n
    assert torch.allclose(freq, torch.softmax(logits.double(), 0), atol=0.01), freq  # ~4.5 standard errors
    gdas.generator.set_state(state)
    gdas.tau = 0.1
    assert torch.equal(gdas.sample()[0]["cell"], path["cell"])


def test_tau_anneals_linearly_from_tau_max_to_tau_min_within_a_stage():
    gdas = controller()
    taus = []
    for epoch in range(5):
        gdas.on_epoch(epoch, 5)
        taus.append(gdas.tau)
    assert taus[0] == 10.0 and taus[-1] == 0.1
    assert taus == pytest.approx([10.0, 7.525, 5.05, 2.575, 0.1])
    gdas.on_epoch(0, 1)
    assert gdas.tau == 10.0  # a one-epoch stage never cools


@pytest.mark.parametrize(("values", "message"), [
    ({"tau_min": 0.0}, "gdas.tau_min and gdas.tau_max must satisfy 0 < tau_min <= tau_max"),
    ({"tau_max": 0.05}, "gdas.tau_min and gdas.tau_max must satisfy 0 < tau_min <= tau_max"),
    ({"lr": 0.0}, "gdas.lr must be positive"),
    ({"betas": [0.5, 1.0]}, "gdas.betas must be two values in [0, 1)"),
    ({"weight_decay": -1e-3}, "gdas.weight_decay must be >= 0"),
    ({"grad_clip": -1.0}, "gdas.grad_clip must be >= 0"),
])
def test_bad_gdas_values_are_one_line_errors(values, message):
    cfg = SearchConfig.from_tree({"controller": "gdas", "data": {"dataset": "digits"}, "gdas": values})
    with pytest.raises(UserError) as err:
        cfg.validate()
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_a_gdas_config_refuses_a_gradient_section():
    SearchConfig.from_tree({"controller": "gdas", "data": {"dataset": "digits"}}).validate()
    with pytest.raises(UserError, match="section 'gradient' belongs to the controller 'gradient'"):
        SearchConfig.from_tree({"controller": "gdas", "gradient": {"lr": 0.1}})


def test_state_dict_round_trip_continues_alike():
    model = tiny_supernet()
    trained = controller(seed=1)
    for step in range(2):
        trained.arch_step(arch_ctx(model, step))
    buffer = io.BytesIO()
    torch.save(trained.state_dict(), buffer)
    buffer.seek(0)
    restored = controller(seed=2)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    restored.generator.set_state(trained.generator.get_state())  # the search checkpoints the generator itself
    for gdas in (trained, restored):
        gdas.on_epoch(3, 4)
        gdas.arch_step(arch_ctx(model, 2))
    for group in SHAPES:
        assert torch.equal(trained.alphas[group], restored.alphas[group])


def test_killed_search_resumes_exactly(tmp_path, kill_and_resume):
    """Killed mid-epoch in the last epoch of a stage (tau = tau_min), the resumed stage ends with the same record."""
    settings = [*TINY_SEARCH, "stages.epochs=[3,1,1]", "stages.warmup_epochs=[1,0,0]", "gdas.lr=0.05",
                "run.checkpoint_every=3"]

    def stage_one(run_dir):
        return search.main(["-c", QUICK_GDAS, "--run-dir", str(run_dir), "--stage", "1", "--set", *settings])

    def inside_the_last_epoch(state):
        return state["progress"]["epoch"] == 2 and state["progress"]["step"] > 0

    assert stage_one(tmp_path / "reference") == 0
    assert kill_and_resume(stage_one, tmp_path / "killed", inside_the_last_epoch) == 0
    expected, got = (read_record(tmp_path / run / "stages" / "stage1.json") for run in ("reference", "killed"))
    assert got["stages"] == expected["stages"] and got["global_step"] == expected["global_step"]
