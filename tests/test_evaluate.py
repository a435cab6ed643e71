"""The eval trainer on digits: records, resume equality (in process and after SIGKILL), NaN guard, bad input."""
from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import nas.engine.trainer as evaluate
import train_eval
from nas.core.checkpoint import CHECKPOINT, load_checkpoint
from nas.core.config import load_config
from nas.core.data import ImageData
from nas.core.metrics import count_parameters
from nas.report.monitor import EVAL_TAGS
from search_spaces.darts.genotype import load_genotype
from search_spaces.darts.networks import NetworkEval

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--genotype", "PDARTS", "--dataset", "digits", "--set", "model.C=4", "model.layers=3", "train.batch_size=64"]
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


def run_main(argv: list[str], capsys) -> tuple[int, str, str]:
    """train_eval.main in process: (exit code, stdout, stderr)."""
    try:
        train_eval.main(argv)
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    out = capsys.readouterr()
    return code, out.out, out.err


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir, "eval")["model"]


def assert_same_weights(a: Path, b: Path, atol: float = 0.0) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    worst = max((x.double() - wb[k].double()).abs().max().item() for k, x in wa.items() if x.numel())
    assert worst <= atol, f"weights differ by {worst}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted 2-epoch tiny run (seed 0)."""
    run_dir = tmp_path_factory.mktemp("eval") / "reference"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    train_eval.main(TINY + ["--epochs", "2", "--run-dir", str(run_dir)])
    torch.set_num_threads(before)
    return run_dir


def test_one_epoch_on_digits_end_to_end(tmp_path, capsys):
    run_dir = tmp_path / "run"
    code, out, err = run_main(TINY + ["--epochs", "1", "--run-dir", str(run_dir)], capsys)
    assert code == 0, err
    record = json.loads((run_dir / "genotype.json").read_text())
    assert record["genotype"] == load_genotype("PDARTS").to_dict()
    assert record["source"].startswith("P-DARTS")  # the shipped record was copied, then extended
    metrics = record["metrics"]["eval"]
    assert metrics["dataset"] == "digits" and metrics["epochs"] == 1 and metrics["world_size"] == 1
    assert metrics["test_samples"] == 360  # the whole digits test split
    assert 0.0 <= metrics["top1"] <= metrics["top5"] <= 100.0
    assert metrics["params_M"] > 0 and metrics["flops_M"] > 0
    assert load_checkpoint(run_dir, "eval")["epoch"] == 1
    last = out.strip().splitlines()[-1]
    assert last.startswith("final: test top-1") and "top-5" in last and "params" in last and "FLOPs" in last
    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    assert set(events.Tags()["scalars"]) == set(EVAL_TAGS)


def test_resume_after_epoch_one_equals_uninterrupted_run(reference, tmp_path, monkeypatch, capsys):
    class Killed(Exception):
        pass

    real_save = evaluate.save_checkpoint

    def save_then_die(run_dir, state, kind):
        real_save(run_dir, state, kind)
        raise Killed

    run_dir = tmp_path / "run"
    monkeypatch.setattr(evaluate, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        train_eval.main(TINY + ["--epochs", "2", "--run-dir", str(run_dir)])
    monkeypatch.undo()
    assert load_checkpoint(run_dir, "eval")["epoch"] == 1
    # repeating the original flags is allowed: they equal the saved config and genotype
    code, out, err = run_main(TINY + ["--epochs", "2", "--resume", str(run_dir)], capsys)
    assert code == 0, err
    assert "resumed" in out
    assert_same_weights(run_dir, reference)


def test_sigkill_at_a_random_moment_then_resume_matches(reference, tmp_path):
    seed = int(os.environ.get("FAULT_SEED", time.time_ns() % 100_000))
    print(f"fault-injection seed {seed} (rerun with FAULT_SEED={seed})")
    rng = random.Random(seed)
    run_dir = tmp_path / "run"
    argv = [sys.executable, str(ROOT / "train_eval.py"), *TINY, "--epochs", "2", "--run-dir", str(run_dir)]
    started = time.monotonic()
    proc = subprocess.Popen(argv, cwd=tmp_path, env=ONE_THREAD, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while not (run_dir / CHECKPOINT).exists() and proc.poll() is None:
        time.sleep(0.02)
    first_epoch = time.monotonic() - started
    delay = rng.uniform(0.0, 0.5 * first_epoch)  # usually inside epoch 2, sometimes in its checkpoint write
    time.sleep(delay)
    alive = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    print(f"killed after first checkpoint + {delay:.2f}s (process still running: {alive})")
    resumed = subprocess.run([sys.executable, str(ROOT / "train_eval.py"), "--resume", str(run_dir)], cwd=tmp_path,
                             env=ONE_THREAD, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_weights(run_dir, reference, atol=1e-6)


def test_nan_loss_stops_with_one_line_and_keeps_the_last_checkpoint(tmp_path, monkeypatch, capsys):
    saved = []
    real_save, real_batch = evaluate.save_checkpoint, evaluate.Trainer._batch

    def save(run_dir, state, kind):
        saved.append(state["epoch"])
        return real_save(run_dir, state, kind)

    def batch(self, x, y):
        x, y = real_batch(self, x, y)
        return (x * float("nan") if saved and self.net.training else x), y

    monkeypatch.setattr(evaluate, "save_checkpoint", save)
    monkeypatch.setattr(evaluate.Trainer, "_batch", batch)
    run_dir = tmp_path / "run"
    code, _, err = run_main(TINY + ["--epochs", "2", "--run-dir", str(run_dir)], capsys)
    assert code == 1
    assert len(err.strip().splitlines()) == 1
    assert "nan at epoch 2 step 1" in err and f"{run_dir / CHECKPOINT} (epoch 1) is kept" in err
    assert saved == [1] and load_checkpoint(run_dir, "eval")["epoch"] == 1


def test_full_disk_while_saving_exits_2_and_keeps_the_previous_checkpoint(disk_full_after_first_save, tmp_path,
                                                                          monkeypatch, capsys):
    run_dir = tmp_path / "run"
    code, _, err = run_main(TINY + ["--epochs", "2", "--run-dir", str(run_dir)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "No space left on device" in err
    monkeypatch.undo()
    assert load_checkpoint(run_dir, "eval")["epoch"] == 1
    assert [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")] == []


@pytest.mark.parametrize("name, millions", [("DARTS_V1", 3.17), ("DARTS_V2", 3.35), ("PDARTS", 3.43)])
def test_parameter_counts_of_shipped_genotypes(name, millions):
    net = NetworkEval(load_genotype(name), C=36, num_classes=10, layers=20, in_channels=3, auxiliary=True)
    assert abs(count_parameters(net, exclude="auxiliary") / 1e6 - millions) < 0.01


BAD_INPUT = [
    (["--genotype", "NOPE"], "unknown genotype 'NOPE'"),
    (["--genotype", "Genotype(normal=[('sep_conv_3x3', 0)"], "not valid syntax"),
    (["--genotype", "Genotype(normal=[('conv_9x9', 0)], normal_concat=[2], reduce=[], reduce_concat=[2])"],
     "unknown op 'conv_9x9'"),
    (["--genotype", "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 7)], normal_concat=[2], "
                    "reduce=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1)], reduce_concat=[2])"], "out of range"),
    (["--genotype", "PDARTS", "--dataset", "cifar10", "--set", "data.root=/nonexistent/cifar"], "does not exist"),
    (["--genotype", "PDARTS", "--set", "model.width=3"], "unknown key 'model.width'"),
    (["--genotype", "PDARTS", "--set", "train.epochs=many"], "train.epochs must be int"),
    (["--genotype", "PDARTS", "--set", "model.drop_path_prob=1.5"], "model.drop_path_prob must be in [0, 1)"),
    (["--genotype", "PDARTS", "--dataset", "svhn"], "unknown"),
    (["--genotype", "PDARTS", "--epochs", "ten"], "invalid int value"),
    (["--dataset", "digits"], "--genotype is required"),
]


@pytest.mark.parametrize("argv, message", BAD_INPUT)
def test_bad_input_exits_2_with_one_line(argv, message, tmp_path, capsys):
    code, out, err = run_main(argv + ["--run-dir", str(tmp_path / "run")], capsys)
    assert code == 2
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and message in err, err
    assert not (tmp_path / "run").exists()  # nothing started


def test_image_too_small_for_two_reductions(tmp_path, monkeypatch, capsys):
    tiny = ImageData(torch.utils.data.TensorDataset(torch.zeros(4, 1, 3, 3), torch.zeros(4).long()), 1, 3, 10)
    monkeypatch.setattr(evaluate, "load_dataset", lambda *args, **kwargs: tiny)
    code, _, err = run_main(TINY + ["--run-dir", str(tmp_path / "run")], capsys)
    assert code == 2 and "3x3: too small for the two reduction cells" in err


def test_resume_refuses_bad_directories_and_changes(reference, tmp_path, capsys):
    digest = hashlib.sha256((reference / CHECKPOINT).read_bytes()).hexdigest()
    (tmp_path / "empty").mkdir()
    cases = [
        (["--resume", str(tmp_path / "empty")], "no checkpoint.pt in it"),
        (["--resume", str(tmp_path / "missing")], "no such directory"),
        (["--resume", str(reference), "--set", "train.lr=0.1"], "train.lr was 0.025"),
        (["--resume", str(reference), "--genotype", "DARTS_V2"], "differs from the genotype of the run"),
        (TINY + ["--run-dir", str(reference)], "already holds a checkpoint"),
    ]
    for argv, message in cases:
        code, _, err = run_main(argv, capsys)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (argv, err)
    (tmp_path / "foreign").mkdir()
    torch.save({"something": "else"}, tmp_path / "foreign" / CHECKPOINT)
    code, _, err = run_main(["--resume", str(tmp_path / "foreign")], capsys)
    assert code == 2 and "not a eval checkpoint of this project" in err
    assert hashlib.sha256((reference / CHECKPOINT).read_bytes()).hexdigest() == digest


def test_the_entry_point_prints_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "train_eval.py"), "--genotype", "Genotype(normal=oops)"],
                            cwd=tmp_path, env=ONE_THREAD, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_shipped_eval_configs_load():
    cifar = load_config(evaluate.EvalConfig, ROOT / "experiments" / "eval_cifar10.yaml")
    assert cifar == evaluate.EvalConfig()  # the file spells out the defaults: the paper's CIFAR-10 recipe
    imagenet = load_config(evaluate.EvalConfig, ROOT / "experiments" / "eval_imagenet.yaml")
    assert (imagenet.data.dataset, imagenet.model.layers, imagenet.model.C) == ("imagefolder", 14, 48)
    assert (imagenet.train.epochs, imagenet.train.label_smoothing, imagenet.train.scheduler) == (250, 0.1, "step")
