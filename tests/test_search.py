"""The progressive search end to end on digits, its schedule, its record and its reproducibility."""
from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT, TINY_SEARCH
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import search
from controllers.base import ArchStepContext
from controllers.gradient import GradientConfig, GradientController
from nas.core.checkpoint import CHECKPOINT, load_checkpoint
from nas.core.data import DataConfig, search_loaders
from nas.core.records import read_record
from nas.engine import search_loop
from nas.engine.search_loop import CyclingBatches
from search_spaces.darts.genotype import genotype_from_dict, validate_genotype
from search_spaces.darts.networks import SearchNetwork
from search_spaces.darts.space import skip_dropout_rate
from search_spaces.ops import DARTS_OPS

QUICK = str(ROOT / "experiments" / "quick_digits.yaml")


@pytest.fixture(scope="module")
def full_run(tiny_run):
    return tiny_run("gradient")


def test_search_writes_a_valid_record_with_the_stage_schedule(full_run):
    record = read_record(full_run / "genotype.json")
    genotype = genotype_from_dict(record["genotype"])
    validate_genotype(genotype, steps=4, ops={"normal": set(DARTS_OPS) - {"none"}, "reduce": set(DARTS_OPS) - {"none"}})
    stages = record["search"]["stages"]
    assert [s["stage"] for s in stages] == [1, 2, 3]
    for stage, searched, kept in zip(stages, (8, 5, 3), (5, 3, 1)):
        for cell in ("normal", "reduce"):
            assert len(stage["kept_ops"][cell]) == 14
            assert {len(edge) for edge in stage["kept_ops"][cell]} == {searched}
            assert {len(edge) for edge in stage["kept_after"][cell]} == {kept}
            assert all(set(after) <= set(before) for before, after in
                       zip(stage["kept_ops"][cell], stage["kept_after"][cell]))
            probs = torch.tensor(stage["probabilities"][cell])
            assert probs.shape == (14, searched)
            assert torch.allclose(probs.sum(-1), torch.ones(14), atol=1e-4)
    assert all("none" not in edge for edge in stages[2]["kept_after"]["normal"])  # none goes first at the end
    assert record["metrics"]["params_M"] > 0 and record["search"]["seed"] == 0
    assert sum(op == "skip_connect" for op, _ in genotype.normal) <= 2
    assert (full_run / "stages" / "stage3.json").is_file() and (full_run / "checkpoint.pt").is_file()


def test_per_stage_runs_repeat_the_full_run(full_run, tmp_path):
    run_dir = tmp_path / "staged"
    for stage in (1, 2, 3):
        assert search.main(["-c", QUICK, "--run-dir", str(run_dir), "--stage", str(stage), "--set",
                            *TINY_SEARCH]) == 0
    assert (run_dir / "report.md").is_file()  # run.draw=false: the report's text, and no picture at all
    assert not (run_dir / "report").exists() and not list(run_dir.glob("stages/*/*.png"))
    full, staged = read_record(full_run / "genotype.json"), read_record(run_dir / "genotype.json")
    assert staged["genotype"] == full["genotype"]
    for a, b in zip(full["search"]["stages"], staged["search"]["stages"]):
        assert a["probabilities"] == b["probabilities"] and a["train_acc"] == b["train_acc"]


def test_kill_between_a_stages_last_epoch_and_its_end_resumes_exactly(full_run, tmp_path, monkeypatch):
    """The stage's last epoch is saved, its end is not: the resumed run finishes the stage from the saved summary."""
    real_save = search_loop.save_checkpoint

    def save_then_die(run_dir, state, kind):
        real_save(run_dir, state, kind)
        raise KeyboardInterrupt  # the first save is stage 1's only epoch end

    run_dir = tmp_path / "run"
    monkeypatch.setattr(search_loop, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        search.main(["-c", QUICK, "--run-dir", str(run_dir), "--set", *TINY_SEARCH, "run.draw=true"])
    monkeypatch.undo()
    assert search.main(["--resume", str(run_dir)]) == 0
    full, resumed = read_record(full_run / "genotype.json"), read_record(run_dir / "genotype.json")
    assert resumed["genotype"] == full["genotype"] and resumed["search"]["stages"] == full["search"]["stages"]


def test_stage_needs_the_previous_stage(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        search.main(["-c", QUICK, "--run-dir", str(tmp_path), "--stage", "2", "--set", *TINY_SEARCH])
    assert exit_info.value.code == 2 and "run --stage 1 first" in capsys.readouterr().err


def test_skip_dropout_schedule_follows_pdarts():
    assert skip_dropout_rate(0.4, 0, 25, 10) == pytest.approx(0.4 * 24 / 25)
    assert skip_dropout_rate(0.4, 10, 25, 10) == pytest.approx(0.4)
    assert skip_dropout_rate(0.4, 15, 25, 10) == pytest.approx(0.4 * math.exp(-1.0))
    assert skip_dropout_rate(0.0, 3, 25, 10) == 0.0


def test_cycling_batches_resume_where_they_stopped():
    _, _, val_loader = search_loaders(DataConfig(batch_size=100), seed=3)
    first = CyclingBatches(val_loader)
    for _ in range(9):  # past the end of one epoch (8 batches)
        next(first)
    state = first.state()
    expected = [next(first)[1] for _ in range(3)]
    resumed = CyclingBatches(val_loader, **state)
    assert all(torch.equal(a, next(resumed)[1]) for a in expected)


def _tiny_supernet_step(order: int):
    torch.manual_seed(0)
    kept = {g: [list(DARTS_OPS)] * 14 for g in ("normal", "reduce")}
    model = SearchNetwork(4, 10, 3, 1, kept)
    controller = GradientController({"normal": (14, 8), "reduce": (14, 8)}, GradientConfig(order=order, lr=0.1))
    w_opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=3e-4)
    x, y = torch.randn(8, 1, 8, 8), torch.randint(10, (8,))
    F.cross_entropy(model(x, **controller.weight_forward_kwargs()), y).backward()
    w_opt.step()  # fills the momentum buffers the virtual step uses
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ctx = ArchStepContext(model=model, criterion=F.cross_entropy, train_batch=(x, y),
                          val_batch=(torch.randn(8, 1, 8, 8), torch.randint(10, (8,))), w_optimizer=w_opt, lr=0.05,
                          stage=0, step=0)
    alphas = {k: v.detach().clone() for k, v in controller.alphas.items()}
    controller.arch_step(ctx)
    grads = {k: v.grad.clone() for k, v in controller.alphas.items()}
    return model, before, alphas, controller, grads


def test_second_order_step_restores_weights_and_moves_alphas():
    model, before, alphas, controller, grads2 = _tiny_supernet_step(order=2)
    params = dict(model.named_parameters())
    for name, value in params.items():
        assert torch.allclose(value, before[name], atol=1e-6), name
    assert all(not torch.equal(controller.alphas[g].detach(), alphas[g]) for g in alphas)
    *_, grads1 = _tiny_supernet_step(order=1)
    assert all(torch.isfinite(g).all() for g in grads2.values())
    assert any(not torch.allclose(grads1[g], grads2[g]) for g in grads1)  # the unrolled term matters


def test_nan_loss_stops_naming_where_and_keeps_the_last_checkpoint(tmp_path, monkeypatch, capsys):
    saved_steps = []
    real_save, real_batch = search_loop.save_checkpoint, search_loop.StageRunner._batch

    def save(run_dir, state, kind):
        saved_steps.append(state["progress"]["global_step"])
        return real_save(run_dir, state, kind)

    def poisoned_after_the_first_save(self, batch):
        x, y = real_batch(self, batch)
        return (x * float("nan") if saved_steps else x), y

    monkeypatch.setattr(search_loop, "save_checkpoint", save)
    monkeypatch.setattr(search_loop.StageRunner, "_batch", poisoned_after_the_first_save)
    run_dir = tmp_path / "run"
    code = search.main(["-c", QUICK, "--run-dir", str(run_dir), "--set", *TINY_SEARCH, "run.checkpoint_every=2"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1, err
    assert re.search(r"(loss became nan|architecture logits became non-finite) at stage 1, epoch 1, step 2", err)
    assert f"--run-dir {run_dir} --stage 1 --set optim.lr=" in err
    assert saved_steps == [2] and (run_dir / CHECKPOINT).exists()
    assert load_checkpoint(run_dir, "search")["progress"]["global_step"] == 2
    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()  # the events before the divergence, and the divergence itself, reached the event file
    assert [e.step for e in events.Scalars("stage1/normal/prob/edge_00/none")] == [2]
    diverged = events.Tensors("stage1/diverged/text_summary")
    assert len(diverged) == 1 and b"became n" in diverged[0].tensor_proto.string_val[0]
    monkeypatch.undo()  # the command the message gives reruns the stage
    rerun = err.split("python search.py ")[1].split()
    assert search.main(rerun) == 0 and (run_dir / "stages" / "stage1.json").exists()
