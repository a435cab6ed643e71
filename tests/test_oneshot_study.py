"""One-shot training (subnet sampling, fair sampling, BatchNorm recalibration, seeding) and the one-shot vs
stand-alone study end to end, with its plant, warm-start and reuse modes."""
from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import pytest
import torch
from conftest import ROOT, load_script, shared_path
from torch.utils.data import TensorDataset

from nas.benchmarks import oneshot_study
from nas.benchmarks.oneshot import (
    SubnetSampler,
    TrainConfig,
    bn_stats_kept,
    fixed_batches,
    oneshot_predict,
    recalibrate_bn,
    score_subnets,
    shuffled_batches,
    train_oneshot,
    train_step,
)
from nas.core.errors import UserError
from nas.core.metrics import rank_of
from search_spaces.chain import ChainSuperNet

SCRIPT = ROOT / "experiments" / "oneshot_vs_standalone.py"


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


def test_sampler_uniform_given_distribution_and_path_dropout() -> None:
    g = torch.Generator().manual_seed(0)
    uniform = Counter(path for _ in range(800) for path in SubnetSampler(2, 2, g)())
    assert set(uniform) == {(0, 0), (0, 1), (1, 0), (1, 1)} and min(uniform.values()) > 150
    skewed = Counter(path for _ in range(400) for path in SubnetSampler(2, 2, g, probs=[0, 3, 1, 0])())
    assert set(skewed) == {(0, 1), (1, 0)} and skewed[(0, 1)] > 2 * skewed[(1, 0)]
    [dropped] = SubnetSampler(3, 4, g, path_dropout=0.5)()
    assert len(dropped) == 3 and all(1 <= len(ops) <= 4 for ops in dropped)
    with pytest.raises(UserError):
        SubnetSampler(2, 2, g, probs=[1, 1, 1])
    with pytest.raises(UserError):
        SubnetSampler(2, 2, g, probs=[1, 1, 1, 1], path_dropout=0.2)
    with pytest.raises(UserError):
        SubnetSampler(2, 2, g, path_dropout=0.2, fair=True)


def test_fair_sampling_uses_every_op_of_every_block_once_a_minibatch() -> None:
    sample = SubnetSampler(3, 4, torch.Generator().manual_seed(0), fair=True)
    draws = [sample() for _ in range(20)]
    for paths in draws:
        assert len(paths) == 4 and all(sorted(p[b] for p in paths) == [0, 1, 2, 3] for b in range(3))
    assert len({tuple(paths) for paths in draws}) > 1  # the pairing changes from minibatch to minibatch


def test_train_step_sums_the_gradients_of_its_paths() -> None:
    x, y = torch.randn(8, 1, 8, 8), torch.arange(8) % 10
    torch.manual_seed(0)
    model = ChainSuperNet(1, 10, C=4)
    captured = {}

    class Capture(torch.optim.SGD):
        def step(self, closure=None):
            captured.update({id(p): p.grad.clone() for p in model.parameters() if p.grad is not None})

    train_step(model, Capture(model.parameters(), lr=0.1), x, y, paths=[(0, 0), (1, 1)])
    model.zero_grad(set_to_none=True)
    for path in [(0, 0), (1, 1)]:
        torch.nn.functional.cross_entropy(model(x, path), y).backward()
    stem = model.stem[0].weight
    torch.testing.assert_close(captured[id(stem)], stem.grad)
    assert captured[id(model.blocks[0].ops[1].body[0].weight)] is not None


def test_bn_recalibration_estimates_the_path_statistics_and_is_undone() -> None:
    torch.manual_seed(0)
    model = ChainSuperNet(1, 10, C=4).eval()
    data = TensorDataset(torch.randn(40, 1, 8, 8) * 3 + 1, torch.arange(40) % 10)
    batches = shuffled_batches(data, 30, 10, seed=0)
    assert len(batches) == 3 and sum(len(y) for _, y in batches) == 30
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with bn_stats_kept(model):
        recalibrate_bn(model, batches, path=(1, 0))
        stem = model.stem[0](torch.cat([x for x, _ in batches]))
        torch.testing.assert_close(model.stem[1].running_mean, stem.mean((0, 2, 3)))
        assert not model.training and model.stem[1].momentum is None
        assert torch.equal(model.blocks[0].ops[0].body[1].running_mean, torch.zeros(4))  # off the path: reset
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert model.stem[1].momentum == 0.1
    test = fixed_batches(data, 20)
    recal = oneshot_predict(model, test, (1, 0), batches)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not torch.allclose(recal, oneshot_predict(model, test, (1, 0)))
    scores = score_subnets(model, [(0, 0), (1, 0)], test, batches)
    assert list(scores) == [(0, 0), (1, 0)] and all(0 <= a <= 100 for a in scores.values())


def test_rank_of() -> None:
    assert [rank_of([90.0, 95.0, 90.0, 80.0], i) for i in range(4)] == [2, 1, 2, 4]


def test_train_oneshot_is_seeded_and_reports_every_epoch() -> None:
    data = TensorDataset(torch.randn(96, 1, 8, 8), torch.arange(96) % 10)
    test = fixed_batches(TensorDataset(torch.randn(40, 1, 8, 8), torch.arange(40) % 10), 16)
    cfg = TrainConfig(epochs=2, batch_size=32)

    def run(seed: int, config: TrainConfig = cfg) -> tuple[dict, list[torch.Tensor], list[float]]:
        torch.manual_seed(seed)
        model = ChainSuperNet(1, 10, C=4)
        done = train_oneshot(model, data, test, config, model.choices(), seed)
        return done.curves, [p.detach().clone() for p in model.parameters()], done.train_s

    curves, params, seconds = run(3)
    assert set(curves) == {(0, 0), (0, 1), (1, 0), (1, 1)}
    assert all(len(c) == 2 and all(0 <= a <= 100 for a in c) for c in curves.values())
    assert len(seconds) == 2 and 0 < seconds[0] <= seconds[1]
    again, params_again, _ = run(3)
    assert again == curves and all(torch.equal(a, b) for a, b in zip(params, params_again))
    fair, _, _ = run(3, TrainConfig(epochs=2, batch_size=32, sampling="fair"))
    assert fair != curves


@pytest.mark.parametrize("argv", [
    ["--ops", "conv_9x9"], ["--subnets", "9"], ["--epochs", "0"], ["--sharing", "sum", "--path-dropout", "1.5"],
    ["--plant", "conv_3x3"], ["--plant", "conv_3x3", "skip_connect"], ["--freeze-planted", "yes"],
    ["--plant", "conv_3x3", "conv_3x3", "--subnets", "2"], ["--plant", "conv_3x3", "conv_3x3", "--warm-start",
                                                            "conv_3x3", "conv_3x3"],
    ["--warm-start", "conv_9x9", "conv_3x3"], ["--head-dropout", "0.5"], ["--head-hidden", "0"], ["--bn-recal", "1"],
    ["--oneshot-epochs", "-1"], ["--sampling", "fair", "--path-dropout", "0.2"], ["--sampling", "greedy"],
    ["--freeze-planted", "maybe"],
    ["--standalone-from", "/nonexistent/results.json"]])
def test_bad_input_is_a_user_error(argv: list[str]) -> None:
    with pytest.raises(UserError):
        oneshot_study.main(["--dataset", "digits", *argv])


TINY = ["--dataset", "digits", "--limit-train", "200", "--limit-test", "100", "--filters", "4", "--batch-size", "32"]


def test_plant_mode_tracks_one_rank_per_epoch_and_a_frozen_plant_keeps_its_accuracy(tmp_path) -> None:
    results = oneshot_study.main([*TINY, "--epochs", "2", "--plant", "conv_5x5", "conv 3x3", "--freeze-planted",
                                   "both", "--out", str(tmp_path)])
    plant = json.loads((tmp_path / "results.json").read_text())["plant"]
    assert plant == json.loads(json.dumps(results["plant"])) and plant["subnets_ranked"] == 4
    trained, frozen = plant["runs"]
    assert [r["frozen"] for r in plant["runs"]] == [False, True]
    for r in plant["runs"]:
        assert r["plant"] == ["conv_5x5", "conv_3x3"] and len(r["ranks"]) == 2 and len(r["planted_curve"]) == 3
        assert all(1 <= rank <= 4 for rank in [r["rank_at_plant"], *r["ranks"]])
        assert r["first_at_end"] == (r["ranks"][-1] == 1)
        assert r["lost_first_at"] == next((e for e, rank in enumerate(r["ranks"], 1) if rank > 1), None)
        assert r["planted_curve"][0] == r["standalone_acc"]  # planted: the path is the stand-alone net
    assert frozen["planted_curve"] == [frozen["standalone_acc"]] * 3  # frozen: it stays that net
    assert [(t["plant"], t["frozen"], t["seeds"]) for t in plant["table"]] == [
        ("conv_5x5 > conv_3x3", False, 1), ("conv_5x5 > conv_3x3", True, 1)]


def test_warm_start_mode_compares_with_random_init(tmp_path) -> None:
    results = oneshot_study.main([*TINY, "--epochs", "2", "--warm-start", "conv_3x3", "conv_5x5", "--out",
                                   str(tmp_path)])
    ws = json.loads((tmp_path / "results.json").read_text())["warm_start"]
    assert ws["from"] == ["conv_3x3", "conv_5x5"] and len(ws["runs"]) == 1
    run = ws["runs"][0]
    assert run["initialised"] == {"0": ["conv_3x3", "conv_5x5"], "1": ["conv_3x3", "conv_5x5"]}
    for init in ("random", "warm"):
        assert run[init]["first_epoch_var"] >= 0 and len(run[init]["mean_curve"]) == 2
        assert -1 <= run[init]["kendall_tau"] <= 1
    # the target is the random-init run's final mean one-shot top-1, so it reaches it by its last epoch
    assert run["target_acc"] == pytest.approx(run["random"]["mean_curve"][-1])
    assert run["random"]["time_to_target_s"] in run["random"]["train_s"]
    assert results["kendall_tau"] is not None and ws["random_kendall_tau_mean"] == run["random"]["kendall_tau"]


def test_standalone_from_reuses_the_standalone_results_and_checks_the_setup(tmp_path) -> None:
    script = oneshot_study
    head = ["--head-hidden", "16", "--head-dropout", "0.3"]
    first = script.main([*TINY, *head, "--out", str(tmp_path / "a")])
    again = script.main([*TINY, *head, "--bn-recal", "64", "--sampling", "fair", "--oneshot-epochs", "2",
                         "--standalone-from", str(tmp_path / "a" / "results.json"), "--out", str(tmp_path / "b")])
    alone = [[s["standalone_acc"] for s in r["subnets"]] for r in (first, again)]
    assert alone[0] == alone[1]
    assert all(len(s["oneshot_curve"]) == 2 for s in again["repeats"]["runs"][0]["subnets"])
    assert set(again["by_first_op"]) == {"conv_3x3", "conv_5x5"}
    # with recalibration the final one-shot scores are also kept with the running statistics, for comparison
    assert all(0 <= s["oneshot_acc_running"] <= 100 for s in again["repeats"]["runs"][0]["subnets"])
    assert "oneshot_acc_running" in again["by_first_op"]["conv_3x3"]
    assert "oneshot_acc_running" not in first["subnets"][0]
    with pytest.raises(UserError, match="head_hidden"):
        script.main([*TINY, "--standalone-from", str(tmp_path / "a" / "results.json"), "--out", str(tmp_path / "c")])


def test_probe_scores_one_repeat_against_the_earlier_standalone_results(tmp_path, monkeypatch) -> None:
    probe = load_script("oneshot_probe")
    one_epoch = [*TINY, "--epochs", "1"]
    earlier = oneshot_study.main([*one_epoch, "--repeats", "2", "--out", str(tmp_path / "study")])
    argv = [*one_epoch, "--standalone-from", str(tmp_path / "study" / "results.json"), "--out", str(tmp_path / "probe")]
    result = probe.main([*argv, "--probe-seed", "1", "--probe-test", "50", "--bn-recal", "64", "--oneshot-epochs", "2",
                         "--path-dropout", "0.3"])
    assert result["seed"] == 1 and result["test_images"] == 50 and len(result["kendall_tau_to_seed_mean"]) == 2
    assert [s["standalone_acc"] for s in result["subnets"]] == [s["standalone_acc"] for s in earlier["subnets"]]
    assert "oneshot_acc_running" in result["by_first_op"]["conv_3x3"]
    assert json.loads((tmp_path / "probe" / "probe.json").read_text())["kendall_tau"] == result["kendall_tau"]
    for bad in (["--probe-seed", "2"], ["--probe-test", "-1"]):
        with pytest.raises(UserError):
            probe.main([*argv, *bad])
    with pytest.raises(UserError, match="standalone-from"):
        probe.main(TINY)
    with pytest.raises(UserError, match="epochs"):  # the stand-alone setup must match the earlier run's
        probe.main([*TINY, *argv[len(one_epoch):]])


def test_study_end_to_end_on_shared_mnist(tmp_path) -> None:
    root = shared_path("mnist")
    out = tmp_path / "study"
    cmd = [sys.executable, str(SCRIPT), "--dataset", "mnist", "--data-root", str(root), "--sharing", "concat",
           "--epochs", "2", "--repeats", "2", "--limit-train", "512", "--limit-test", "500", "--batch-size", "16",
           "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Kendall tau" in done.stdout and "conv_5x5 > conv_3x3" in done.stdout

    results = json.loads((out / "results.json").read_text())
    assert {"subnets", "kendall_tau", "spearman_rho", "kl_spearman_rho", "repeats"} <= set(results)
    assert [s["choice"] for s in results["subnets"]] == [[0, 0], [0, 1], [1, 0], [1, 1]]
    for s in results["subnets"]:
        assert {"choice", "oneshot_acc", "standalone_acc", "kl"} <= set(s)
        assert 0 <= s["oneshot_acc"] <= 100 and 0 <= s["standalone_acc"] <= 100 and s["kl"] >= 0
    runs = results["repeats"]["runs"]
    assert len(runs) == 2 and [r["seed"] for r in runs] == [0, 1]
    assert all(len(s["oneshot_curve"]) == 2 and len(s["standalone_curve"]) == 2 for r in runs for s in r["subnets"])
    assert -1 <= results["repeats"]["kendall_tau_mean"] <= 1 and results["repeats"]["kendall_tau_std"] >= 0
    # stand-alone nets are real learners: on 512 MNIST images two epochs beat chance clearly
    assert max(s["standalone_acc"] for s in results["subnets"]) > 30
    for name in ("oneshot_curves", "standalone_curves", "oneshot_vs_standalone", "kl_vs_standalone"):
        assert (out / f"{name}.png").stat().st_size > 1000


def test_study_exits_2_on_bad_input(tmp_path) -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--dataset", "mnist", "--data-root", str(tmp_path / "nope"),
                           "--out", str(tmp_path)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().startswith("error:") and len(done.stderr.strip().splitlines()) == 1
