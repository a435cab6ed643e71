"""One-shot training (subnet sampling, seeding) and the one-shot vs stand-alone study end to end."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections import Counter

import pytest
import torch
from conftest import ROOT, shared_path
from torch.utils.data import TensorDataset

from nas.errors import UserError
from nas.oneshot import SubnetSampler, TrainConfig, fixed_batches, train_oneshot
from search_spaces.chain import ChainSuperNet

SCRIPT = ROOT / "experiments" / "oneshot_vs_standalone.py"


def test_sampler_uniform_given_distribution_and_path_dropout() -> None:
    g = torch.Generator().manual_seed(0)
    uniform = Counter(SubnetSampler(2, 2, g)() for _ in range(800))
    assert set(uniform) == {(0, 0), (0, 1), (1, 0), (1, 1)} and min(uniform.values()) > 150
    skewed = Counter(SubnetSampler(2, 2, g, probs=[0, 3, 1, 0])() for _ in range(400))
    assert set(skewed) == {(0, 1), (1, 0)} and skewed[(0, 1)] > 2 * skewed[(1, 0)]
    dropped = SubnetSampler(3, 4, g, path_dropout=0.5)()
    assert len(dropped) == 3 and all(1 <= len(ops) <= 4 for ops in dropped)
    with pytest.raises(UserError):
        SubnetSampler(2, 2, g, probs=[1, 1, 1])
    with pytest.raises(UserError):
        SubnetSampler(2, 2, g, probs=[1, 1, 1, 1], path_dropout=0.2)


def test_train_oneshot_is_seeded_and_reports_every_epoch() -> None:
    data = TensorDataset(torch.randn(96, 1, 8, 8), torch.arange(96) % 10)
    test = fixed_batches(TensorDataset(torch.randn(40, 1, 8, 8), torch.arange(40) % 10), 16)
    cfg = TrainConfig(epochs=2, batch_size=32)

    def run(seed: int) -> tuple[dict, list[torch.Tensor]]:
        torch.manual_seed(seed)
        model = ChainSuperNet(1, 10, C=4)
        curves = train_oneshot(model, data, test, cfg, model.choices(), seed)
        return curves, [p.detach().clone() for p in model.parameters()]

    curves, params = run(3)
    assert set(curves) == {(0, 0), (0, 1), (1, 0), (1, 1)}
    assert all(len(c) == 2 and all(0 <= a <= 100 for a in c) for c in curves.values())
    again, params_again = run(3)
    assert again == curves and all(torch.equal(a, b) for a, b in zip(params, params_again))


def _load_script():
    spec = importlib.util.spec_from_file_location("oneshot_vs_standalone", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("argv", [["--ops", "conv_9x9"], ["--subnets", "9"], ["--epochs", "0"],
                                  ["--sharing", "sum", "--path-dropout", "1.5"]])
def test_bad_input_is_a_user_error(argv: list[str]) -> None:
    with pytest.raises(UserError):
        _load_script().main(["--dataset", "digits", *argv])


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
