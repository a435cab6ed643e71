"""nas-sweep: spec expansion and checks, a real 4-trial sweep on a local Ray (2 at a time), its table and HParams,
`nas-report SWEEP_DIR`, a driver killed mid-sweep and rerun, two drivers on one sweep with a trial that raises,
the install hint without Ray; and, on an in-process stand-in for Ray, reports that fail or race, trials that raise,
the per-trial lease, paths relative to the spec and the base config's contents."""
from __future__ import annotations

import csv
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

import pytest
import ray
import torch.utils.tensorboard
import yaml
from conftest import ROOT
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from nas.cli import report as report_cli
from nas.core.errors import UserError
from nas.core.records import make_record, write_record
from nas.sweep import driver as sweep
from nas.sweep import lease as sweep_lease
from nas.sweep import trial as sweep_trial
from nas.sweep.results import SWEEP_FILE, write_sweep_report
from nas.sweep.spec import Spec, load_spec
from nas.sweep.trial import DONE, FAILED, read_state
from search_spaces.darts.genotype import load_genotype

# The quick digits REINFORCE search cut to a few weight steps per stage (100 training images, batch 96) over 4 ops
# per cell type (fewer ops: a cheaper supernet and report).
TINY = {"model.C": 4, "stages.layers": [3, 3, 3], "stages.epochs": [1, 1, 1], "stages.warmup_epochs": [0, 0, 0],
        "stages.keep": [3, 2, 1], "model.normal_ops": ["none", "max_pool_3x3", "skip_connect", "sep_conv_3x3"],
        "model.reduce_ops": ["max_pool_3x3", "avg_pool_3x3", "skip_connect", "dil_conv_3x3"],
        "reinforce.samples_per_update": 2, "data.batch_size": 96, "data.limit": 200, "run.draw": False}
ALPHAS = [[0.0, 0.0, 0.0], [-0.5, -0.5, -0.5]]
BASE = str(ROOT / "experiments" / "quick_digits_reinforce.yaml")
# RAY_ADDRESS names nothing: a driver without --ray must start its own Ray, not join what RAY_ADDRESS names.
# Ray's memory monitor is off: it counts the whole machine's memory, so other jobs would get the trials' workers
# killed (and their stages with them) and retried, and the tests count attempts.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_ADDRESS": "127.0.0.1:1", "RAY_memory_monitor_refresh_ms": "0"}


def write_spec(path: Path, **changes) -> Path:
    spec = {"base": BASE, "set": TINY, "grid": {"reward.alpha": ALPHAS}, "seeds": [0, 1], **changes}
    path.write_text(yaml.safe_dump({k: v for k, v in spec.items() if v is not None}))
    return path


def sweep_command(spec: Path, run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "nas.sweep.driver", str(spec), "--run-dir", str(run_dir), "--parallel", "2"]


def trial_dirs(run_dir: Path) -> list[Path]:
    return [run_dir / t["name"] for t in json.loads((run_dir / "sweep.json").read_text())["trials"]]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A tiny 4-trial sweep (2 alphas x 2 seeds), 2 at a time, run to its end by the nas-sweep command."""
    root = tmp_path_factory.mktemp("sweep")
    done = subprocess.run(sweep_command(write_spec(root / "spec.yaml"), root / "sweep"), cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return root / "sweep"


def kill_session(sid: int) -> None:
    """SIGKILL every process of session `sid` (the driver and all it started: Ray, its workers, their trials), as a
    crash of the driver's machine would, until none is left."""
    while True:
        members = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()  # state, ppid, pgrp, session, ...
            except OSError:
                continue
            if int(fields[3]) == sid and fields[0] != "Z":
                members.append(int(stat.parent.name))
        if not members:
            return
        for pid in members:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)


def _checkpointed(trial_dir: Path) -> bool:
    return (trial_dir / "search" / "checkpoint.pt").exists()


@pytest.fixture(scope="module")
def crashed(tmp_path_factory) -> tuple[Path, dict[str, dict]]:
    """The same sweep, its driver and everything it started SIGKILLed once one trial is done and another is part-way
    with a checkpoint, then the same command again; returns the directory and the trial states at the kill."""
    root = tmp_path_factory.mktemp("crash")
    command = sweep_command(write_spec(root / "spec.yaml"), root / "sweep")
    with open(root / "driver.log", "w") as log:
        driver = subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    deadline = time.time() + 400
    while True:
        assert driver.poll() is None, "the sweep ended before it could be killed: " + (root / "driver.log").read_text()
        assert time.time() < deadline, "no trial finished while another was part-way"
        dirs = trial_dirs(root / "sweep") if (root / "sweep" / "sweep.json").is_file() else []
        states = {d.name: read_state(d) for d in dirs}
        part_way = [d for d in dirs if states[d.name]["status"] != DONE and _checkpointed(d)]
        if part_way and any(s["status"] == DONE for s in states.values()):
            kill_session(driver.pid)
            break
        time.sleep(0.05)
    driver.wait()
    at_kill = {d.name: {**read_state(d), "checkpointed": _checkpointed(d)} for d in dirs}
    rerun = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    return root / "sweep", at_kill


def eval_sweep(tmp_path: Path) -> tuple[Spec, Path]:
    """A 2-trial eval sweep directory (nothing run yet) and its spec."""
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({"kind": "eval", "base": str(ROOT / "experiments" / "eval_digits_smoke.yaml"),
                                    "grid": {"genotype": ["PDARTS", "DARTS_V2"]}}))
    spec = load_spec(path)
    run_dir = tmp_path / "sweep"
    write_record(run_dir / SWEEP_FILE, spec.to_dict())
    return spec, run_dir


def rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "sweep.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_a_sweep_writes_every_trial_as_a_run_directory_and_the_table(finished: Path) -> None:
    dirs = trial_dirs(finished)
    assert len(dirs) == 4
    expected = [(alpha, seed) for alpha in ALPHAS for seed in (0, 1)]
    for trial_dir, (alpha, seed) in zip(dirs, expected):
        run = trial_dir / "search"
        for name in ("genotype.json", "config.yaml", "report.md", "search.log"):
            assert (run / name).is_file(), f"{run} lacks {name}"
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert config["reward"]["alpha"] == alpha and config["run"]["seed"] == seed
        assert config["model"]["C"] == 4  # the spec's fixed `set`
    table = rows(finished)
    assert [(json.loads(r["reward.alpha"]), int(r["seed"])) for r in table] == expected
    for row, trial_dir in zip(table, dirs):
        record = json.loads((trial_dir / "search" / "genotype.json").read_text())
        assert row["status"] == DONE and row["genotype_str"] == record["genotype_str"]
        assert float(row["params_M"]) == record["metrics"]["params_M"]
        assert float(row["flops_M"]) == record["metrics"]["flops_M"] > 0
        assert float(row["argmax_acc"]) == record["search"]["stages"][-1]["argmax_acc"]
    markdown = (finished / "sweep.md").read_text()
    assert all(f"| {d.name} |" in markdown for d in dirs)
    assert (finished / "report" / "sweep_params_acc.png").read_bytes().startswith(b"\x89PNG")


def test_at_most_the_parallel_count_of_trials_run_at_once(finished: Path) -> None:
    spans = [(a["started"], a["ended"]) for d in trial_dirs(finished) for a in read_state(d)["attempts"]]
    overlap = max(sum(start <= t < end for start, end in spans) for t, _ in spans)
    assert overlap == 2


def test_hparams_summaries_are_readable_by_tensorboard(finished: Path) -> None:
    for trial_dir, row in zip(trial_dirs(finished), rows(finished)):
        events = EventAccumulator(str(trial_dir / "hparams"))
        events.Reload()
        content = events.PluginTagToContent("hparams")
        session = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
        hparams = session.session_start_info.hparams
        assert json.loads(hparams["reward.alpha"].string_value) == json.loads(row["reward.alpha"])
        assert hparams["seed"].number_value == int(row["seed"])
        assert events.Scalars("sweep/params_M")[0].value == pytest.approx(float(row["params_M"]))


def test_nas_report_rewrites_a_sweeps_table_and_plot(finished: Path, capsys) -> None:
    before = (finished / "sweep.csv").read_text()
    for name in ("sweep.csv", "sweep.md", "report/sweep_params_acc.png"):
        (finished / name).unlink()
    report_cli.main([str(finished)])
    assert capsys.readouterr().out.strip() == str(finished / "sweep.md")
    assert (finished / "sweep.csv").read_text() == before
    assert (finished / "report" / "sweep_params_acc.png").is_file()


def test_a_killed_sweep_reruns_to_completion_without_running_a_trial_twice(crashed, finished: Path) -> None:
    run_dir, at_kill = crashed
    finished_before = [name for name, s in at_kill.items() if s["status"] == DONE]
    part_way = [name for name, s in at_kill.items() if s["status"] != DONE and s["checkpointed"]]
    assert finished_before and part_way
    for trial_dir in trial_dirs(run_dir):
        state = read_state(trial_dir)
        assert state["status"] == DONE and (trial_dir / "search" / "genotype.json").is_file()
        modes = [a["mode"] for a in state["attempts"]]
        if trial_dir.name in finished_before:  # skipped by the rerun
            assert state["attempts"] == at_kill[trial_dir.name]["attempts"]
        elif trial_dir.name in part_way:  # continued from its checkpoint, not started again
            assert modes == ["fresh", "resume"]
        else:  # not started, or killed before its first checkpoint: nothing to resume from
            assert modes[-1] == "fresh" and "resume" not in modes
    # Nothing was lost: every trial found what the uninterrupted sweep found.
    assert [(r["trial"], r["genotype_str"], r["params_M"]) for r in rows(run_dir)] == \
           [(r["trial"], r["genotype_str"], r["params_M"]) for r in rows(finished)]


def test_a_different_spec_in_a_used_sweep_directory_is_refused(finished: Path, tmp_path: Path, capsys) -> None:
    spec = write_spec(tmp_path / "spec.yaml", seeds=[0, 1, 2])
    with pytest.raises(SystemExit) as exit_info:
        sweep.main([str(spec), "--run-dir", str(finished)])
    assert exit_info.value.code == 2
    assert "holds a different sweep" in capsys.readouterr().err


def test_without_ray_nas_sweep_says_in_one_line_how_to_install_it(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(SystemExit) as exit_info:
        sweep.main([str(write_spec(tmp_path / "spec.yaml")), "--run-dir", str(tmp_path / "sweep")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "pip install -e '.[sweep]'" in err
    assert not (tmp_path / "sweep").exists()


BAD_SPECS = {
    "unknown spec key": ({"grids": {}}, "unknown key 'grids'"),
    "unknown config key": ({"grid": {"reward.alfa": [[0.0, 0.0, 0.0]]}}, "reward.alfa"),
    "a value the config refuses": ({"grid": {"reward.alpha": [[0.0, 0.0]]}}, "reward.alpha"),
    "the seed in the grid": ({"grid": {"run.seed": [1, 2]}}, "list the seeds there"),
    "an empty grid list": ({"grid": {"reward.alpha": []}}, "non-empty list"),
    "a bad distribution": ({"random": {"keys": {"optim.lr": {"uniform": [0.1, 0.01]}}}}, "lo < hi"),
    "repeated seeds": ({"seeds": [1, 1]}, "distinct integers"),
    "a missing base": ({"base": "nowhere.yaml"}, "not found"),
    "a probe of an eval sweep": ({"kind": "eval", "genotype": "PDARTS", "set": None, "grid": None,
                                  "probe": {"config": BASE}}, "an eval sweep has none"),
}


@pytest.mark.parametrize("case", BAD_SPECS, ids=list(BAD_SPECS))
def test_a_bad_spec_is_a_one_line_error_before_anything_starts(case: str, tmp_path: Path, capsys) -> None:
    changes, message = BAD_SPECS[case]
    with pytest.raises(SystemExit) as exit_info:
        sweep.main([str(write_spec(tmp_path / "spec.yaml", **changes)), "--run-dir", str(tmp_path / "sweep")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert message in err
    assert not (tmp_path / "sweep").exists()


def test_trials_are_the_grid_times_random_draws_times_seeds(tmp_path: Path) -> None:
    random_keys = {"optim.lr": {"loguniform": [0.01, 0.1]}, "reinforce.behaviour": {"choice": ["uniform",
                                                                                              "multinomial"]}}
    path = write_spec(tmp_path / "spec.yaml", random={"samples": 3, "seed": 7, "keys": random_keys}, seeds=[0, 5])
    spec = load_spec(path)
    assert len(spec.trials) == 3 * len(ALPHAS) * 2
    assert spec.varied == ["reward.alpha", "optim.lr", "reinforce.behaviour"]
    assert len({t.name for t in spec.trials}) == len(spec.trials)
    for first, second in zip(spec.trials[::2], spec.trials[1::2]):  # each configuration once per seed
        assert first.params == second.params and (first.seed, second.seed) == (0, 5)
    assert all(0.01 <= t.params["optim.lr"] <= 0.1 for t in spec.trials)
    assert len({t.params["optim.lr"] for t in spec.trials}) == 3 * len(ALPHAS)  # a fresh draw per grid point
    assert [t.to_dict() for t in load_spec(path).trials] == [t.to_dict() for t in spec.trials]  # a rerun agrees
    assert spec.trials[0].overrides[-1] == "run.seed=0"


def test_the_machine_is_split_between_the_parallel_trials() -> None:
    assert sweep.plan(2, 0, 2, {}) == sweep.Plan(2, 1, 0)
    assert sweep.plan(16, 4, None, {}) == sweep.Plan(4, 4, 1)  # one trial per GPU by default
    assert sweep.plan(16, 2, 4, {}) == sweep.Plan(4, 4, 0.5)  # two trials share a GPU
    assert sweep.plan(8, 0, None, {"num_cpus": 2}).threads == 2
    with pytest.raises(UserError, match="asks for"):
        sweep.plan(2, 0, 1, {"num_gpus": 1})


def test_the_worked_example_is_a_valid_spec() -> None:
    spec = load_spec(ROOT / "experiments" / "sweep_alpha_digits.yaml")
    assert spec.varied == ["reward.alpha"] and spec.seeds == [0, 1] and len(spec.trials) == 6
    assert spec.probe is not None and Path(spec.probe.config).name == "eval_digits_smoke.yaml"


def test_an_eval_sweep_table_keeps_the_varied_genotype_apart_from_the_trained_one(tmp_path: Path) -> None:
    spec, run_dir = eval_sweep(tmp_path)
    trial = spec.trials[0]  # finished; the other never started
    eval_metrics = {"top1": 97.5, "params_M": 0.1, "flops_M": 2.0, "wall_time_s": 30.0}
    write_record(run_dir / trial.name / "eval" / "genotype.json",
                 make_record(load_genotype("PDARTS"), metrics={"eval": eval_metrics}))
    write_record(run_dir / trial.name / "trial.json", {"status": DONE, "stages": {"eval": DONE}, "attempts": []})
    write_sweep_report(run_dir)
    first, second = rows(run_dir)
    assert (first["genotype"], first["genotype_str"]) == ("PDARTS", str(load_genotype("PDARTS")))
    assert (float(first["top1"]), float(first["params_M"]), float(first["wall_s"])) == (97.5, 0.1, 30.0)
    assert (second["genotype"], second["status"], second["top1"]) == ("DARTS_V2", "pending", "")
    assert (run_dir / trial.name / "hparams").is_dir() and not (run_dir / spec.trials[1].name / "hparams").exists()


# --- two drivers on one sweep directory, on a local Ray each, with a trial whose runner raises -------------------


@pytest.fixture(scope="module")
def two_drivers(tmp_path_factory) -> tuple[Path, str, list[subprocess.CompletedProcess]]:
    """A 2-trial eval sweep (one epoch of a 3-cell network) run by two nas-sweep drivers at once (1 trial at a time
    each); the first trial's runner raises (its eval.out is a folder, so the output file cannot be opened)."""
    root = tmp_path_factory.mktemp("two")
    spec = write_spec(root / "spec.yaml", kind="eval", base=str(ROOT / "experiments" / "eval_digits_smoke.yaml"),
                      genotype="PDARTS", grid=None, set={"train.epochs": 1, "model.C": 4, "model.layers": 3},
                      resources={"num_cpus": 1})  # one thread: two compete badly on a busy machine
    broken = load_spec(spec).trials[0].name
    (root / "sweep" / broken / "eval.out").mkdir(parents=True)
    command = [*sweep_command(spec, root / "sweep")[:-1], "1"]
    logs = [root / f"driver{i}.log" for i in range(2)]
    drivers = []
    for log in logs:
        with open(log, "w") as out:
            drivers.append(subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=out, stderr=subprocess.STDOUT))
    done = [subprocess.CompletedProcess(d.args, d.wait(timeout=600), log.read_text(), "")
            for d, log in zip(drivers, logs)]
    return root / "sweep", broken, done


def test_two_drivers_on_one_sweep_run_no_trial_twice(two_drivers) -> None:
    run_dir, broken, done = two_drivers
    assert [d.returncode for d in done] == [1, 1], "\n".join(d.stdout for d in done)  # one trial failed
    for trial_dir in trial_dirs(run_dir):
        assert len(read_state(trial_dir)["attempts"]) == 1  # the broken trial's too: it raised once
    assert not list(run_dir.glob("*/.lease"))  # every lease was released


def test_a_trial_that_raises_is_failed_with_its_reason_while_the_others_finish(two_drivers) -> None:
    run_dir, broken, done = two_drivers
    state = read_state(run_dir / broken)
    assert state["status"] == FAILED and state["reason"].startswith("IsADirectoryError")
    assert "eval.out" in state["reason"] and "_run_stage" in state["traceback"]
    assert [r["status"] for r in rows(run_dir)] == [FAILED, DONE]
    assert rows(run_dir)[0]["reason"] == state["reason"]
    assert f"- {broken} (failed): {state['reason']}" in (run_dir / "sweep.md").read_text()
    assert all(f"{broken}: failed: IsADirectoryError" in d.stdout for d in done)


# --- an in-process stand-in for Ray: tasks run at once, in this process ----------------------------------------


class _Ref:
    def __init__(self, value=None, error: Exception | None = None):
        self.value, self.error = value, error


class _Task:
    def __init__(self, fn):
        self.fn = fn

    def options(self, **_):
        return self

    def remote(self, *args) -> _Ref:
        try:
            return _Ref(self.fn(*args))
        except Exception as err:  # as Ray does: the caller sees it from get(), wrapped
            return _Ref(error=ray.exceptions.RayTaskError(self.fn.__name__, traceback.format_exc(), err))


class InProcessRay:
    """The part of Ray's API that nas.sweep.driver.run_sweep uses."""

    exceptions = ray.exceptions

    def __init__(self, inits: list[dict] | None = None, init_error: Exception | None = None):
        self.inits, self.init_error = inits, init_error

    def remote(self, fn) -> _Task:
        return _Task(fn)

    def wait(self, refs, num_returns):
        return refs[:num_returns], refs[num_returns:]

    def get(self, ref: _Ref):
        if ref.error is not None:
            raise ref.error
        return ref.value

    def init(self, **kwargs) -> None:
        self.inits.append(kwargs)
        if self.init_error is not None:
            raise self.init_error

    def cluster_resources(self) -> dict[str, float]:
        return {"CPU": 2.0}


@pytest.fixture
def quick_stages(monkeypatch) -> None:
    """Every stage's command is a Python that exits 0 at once (no training)."""
    monkeypatch.setattr(sweep_trial, "_command", lambda *args: [sys.executable, "-c", "pass"])


def test_a_failing_report_is_a_warning_and_the_trials_go_on(tmp_path: Path, quick_stages, monkeypatch,
                                                            capsys) -> None:
    spec, run_dir = eval_sweep(tmp_path)

    def broken_report(sweep_dir):
        raise OSError(f"[Errno 39] Directory not empty: '{sweep_dir}/hparams'")

    monkeypatch.setattr(sweep, "write_sweep_report", broken_report)
    assert sweep.run_sweep(InProcessRay(), spec, run_dir, sweep.Plan(1, 1, 0)) == 0
    assert all(read_state(d)["status"] == DONE for d in trial_dirs(run_dir))
    warnings = capsys.readouterr().err.splitlines()
    assert len(warnings) == 3 and all(w.startswith("warning: the sweep report was not written") for w in warnings)


def test_a_trial_whose_runner_raises_is_failed_with_its_reason(tmp_path: Path, quick_stages) -> None:
    spec, run_dir = eval_sweep(tmp_path)
    broken = spec.trials[0].name
    (run_dir / broken / "eval.out").mkdir(parents=True)
    assert sweep.run_sweep(InProcessRay(), spec, run_dir, sweep.Plan(1, 1, 0)) == 1
    state = read_state(run_dir / broken)
    assert state["status"] == FAILED and state["reason"].startswith("IsADirectoryError")
    assert "_run_stage" in state["traceback"] and len(state["traceback"].splitlines()) <= sweep_trial.TRACEBACK_LINES
    assert read_state(run_dir / spec.trials[1].name)["status"] == DONE
    assert [r["reason"] for r in rows(run_dir)] == [state["reason"], ""]
    assert f"- {broken} (failed): {state['reason']}" in (run_dir / "sweep.md").read_text()


def test_a_task_that_fails_outside_its_runner_is_recorded_by_the_driver(tmp_path: Path, quick_stages,
                                                                         monkeypatch, capsys) -> None:
    spec, run_dir = eval_sweep(tmp_path)
    real = sweep.run_trial

    def run_trial(spec_, trial, *args):
        if trial.index == 0:
            raise ModuleNotFoundError("No module named 'nas'")  # as on a node without the project
        return real(spec_, trial, *args)

    monkeypatch.setattr(sweep, "run_trial", run_trial)
    assert sweep.run_sweep(InProcessRay(), spec, run_dir, sweep.Plan(1, 1, 0)) == 1
    state = read_state(run_dir / spec.trials[0].name)
    assert state["status"] == FAILED and state["reason"] == "ModuleNotFoundError: No module named 'nas'"
    assert "run_trial" in state["traceback"]
    assert f"{spec.trials[0].name}: failed: ModuleNotFoundError" in capsys.readouterr().out
    assert read_state(run_dir / spec.trials[1].name)["status"] == DONE


def test_sweep_files_are_replaced_whole_not_rewritten_in_place(tmp_path: Path) -> None:
    _, run_dir = eval_sweep(tmp_path)
    write_sweep_report(run_dir)
    names = ("sweep.csv", "sweep.md")
    before = {name: os.stat(run_dir / name).st_ino for name in names}
    write_sweep_report(run_dir)
    assert all(os.stat(run_dir / name).st_ino != before[name] for name in names)  # a reader sees old or new
    assert not [p.name for p in run_dir.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_a_report_racing_another_for_the_hparams_folder_does_not_fail(tmp_path: Path, monkeypatch) -> None:
    spec, run_dir = eval_sweep(tmp_path)
    trial_dir = run_dir / spec.trials[0].name
    write_record(trial_dir / "trial.json", {"status": DONE, "stages": {"eval": DONE}, "attempts": []})
    real = torch.utils.tensorboard.SummaryWriter

    class RacedWriter(real):
        """Lets another report (nas-report SWEEP_DIR) write the trial's HParams first."""

        def __init__(self, *args, **kwargs):
            monkeypatch.setattr(torch.utils.tensorboard, "SummaryWriter", real)
            write_sweep_report(run_dir)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(torch.utils.tensorboard, "SummaryWriter", RacedWriter)
    write_sweep_report(run_dir)
    events = EventAccumulator(str(trial_dir / "hparams"))
    events.Reload()
    assert "_hparams_/session_start_info" in events.PluginTagToContent("hparams")
    assert sorted(p.name for p in trial_dir.iterdir()) == ["hparams", "trial.json"]  # no temporary folder left


def test_without_ray_flag_a_new_local_ray_starts_and_ray_failures_are_one_line(monkeypatch) -> None:
    inits: list[dict] = []
    assert sweep.start_ray(InProcessRay(inits), None) == (2.0, 0.0)
    assert inits[0]["address"] == "local"  # never what RAY_ADDRESS or Ray's current-cluster file names
    failing = InProcessRay([], ValueError("When connecting to an existing cluster, num_cpus and num_gpus must not "
                                          "be provided.\nmore"))
    with pytest.raises(UserError, match=r"^could not start Ray on this machine: ValueError: When connecting.*"
                                        r"provided\.$"):
        sweep.start_ray(failing, None)


def test_an_unreachable_ray_address_is_a_one_line_error_at_once(tmp_path: Path, capsys) -> None:
    started = time.monotonic()
    with pytest.raises(SystemExit) as exit_info:
        sweep.main([str(write_spec(tmp_path / "spec.yaml")), "--run-dir", str(tmp_path / "sweep"),
                    "--ray", "127.0.0.1:1"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("error: --ray 127.0.0.1:1: nothing answers")
    assert err.count("\n") == 1 and not (tmp_path / "sweep").exists()
    assert time.monotonic() - started < 30  # the spec's 4 trial configs are validated first


def test_the_lease_keeps_a_second_runner_out_where_flock_does_nothing(tmp_path: Path, monkeypatch) -> None:
    """Two runners of one trial at once, on a filesystem whose flock does not lock (a FUSE bucket mount, Lustre
    without -o flock): the trial runs once."""
    monkeypatch.setattr(fcntl, "flock", lambda *args: None)
    runs = tmp_path / "runs.txt"  # one line per run of the trial's stage
    stage = f"import time; open({str(runs)!r}, 'a').write('run\\n'); time.sleep(1)"
    monkeypatch.setattr(sweep_trial, "_command", lambda *args: [sys.executable, "-c", stage])
    spec, run_dir = eval_sweep(tmp_path)
    results: list[dict] = []
    runners = [threading.Thread(target=lambda: results.append(sweep_trial.run_trial(spec, spec.trials[0],
                                                                                  str(run_dir), 1)))
               for _ in range(2)]
    for runner in runners:
        runner.start()
    for runner in runners:
        runner.join()
    assert [r["status"] for r in results] == [DONE, DONE]
    assert runs.read_text().splitlines() == ["run"]
    assert len(read_state(run_dir / spec.trials[0].name)["attempts"]) == 1


def test_a_lease_is_broken_only_when_its_owner_is_gone(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(sweep_lease, "HEARTBEAT_S", 0.05)
    monkeypatch.setattr(sweep_lease, "STALE_S", 0.5)
    monkeypatch.setattr(sweep_lease, "POLL_S", 0.02)
    path = tmp_path / ".lease"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout), "token": "x", "beat": 0}))
    lease = sweep_lease.Lease(path)
    assert lease.try_acquire()  # its owner was a process of this host that has exited
    assert json.loads(path.read_text())["pid"] == os.getpid()
    waiter = sweep_lease.Lease(path)
    assert not waiter.try_acquire()
    late = threading.Thread(target=waiter.acquire)
    late.start()
    late.join(timeout=1.5)  # three times STALE_S: the holder's heartbeat keeps the lease
    assert late.is_alive()
    lease.release()
    late.join(timeout=5)
    assert not late.is_alive() and json.loads(path.read_text())["token"] == waiter.token
    waiter.release()
    path.write_text(json.dumps({"host": "another-node", "pid": 1, "token": "y", "beat": 7}))  # that node died
    other = sweep_lease.Lease(path)
    started = time.monotonic()
    other.acquire()
    assert 0.5 <= time.monotonic() - started < 5 and json.loads(path.read_text())["token"] == other.token
    other.release()
    assert not path.exists()


def test_relative_paths_in_a_spec_are_taken_from_the_spec_file(tmp_path: Path, monkeypatch) -> None:
    folder = tmp_path / "specs"
    write_record(folder / "found.json", make_record(load_genotype("PDARTS")))
    (folder / "spec.yaml").write_text(yaml.safe_dump({
        "kind": "eval", "base": str(ROOT / "experiments" / "eval_digits_smoke.yaml"), "genotype": "found.json",
        "set": {"data.root": "shared/data"}, "probe": None}))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    spec = load_spec(folder / "spec.yaml")
    assert spec.genotype == str(folder / "found.json")
    assert spec.trials[0].overrides[0] == f'data.root="{folder / "shared" / "data"}"'


def test_a_relative_genotype_missing_from_the_spec_folder_is_a_one_line_error(tmp_path: Path, monkeypatch,
                                                                               capsys) -> None:
    """The genotype exists from the working directory, where a trial does not run, but not from the spec's folder."""
    write_record(tmp_path / "found.json", make_record(load_genotype("PDARTS")))
    (tmp_path / "specs").mkdir()
    spec = tmp_path / "specs" / "spec.yaml"
    spec.write_text(yaml.safe_dump({"kind": "eval", "base": str(ROOT / "experiments" / "eval_digits_smoke.yaml"),
                                    "genotype": "found.json"}))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sweep, "start_ray", lambda *args: pytest.fail("the spec was accepted"))
    with pytest.raises(SystemExit) as exit_info:
        sweep.main([str(spec), "--run-dir", str(tmp_path / "sweep")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and str(tmp_path / "specs" / "found.json") in err
    assert not (tmp_path / "sweep").exists()


def test_a_changed_base_config_in_a_used_sweep_directory_is_refused(tmp_path: Path, monkeypatch, capsys) -> None:
    base = tmp_path / "base.yaml"
    shutil.copy(BASE, base)
    spec = write_spec(tmp_path / "spec.yaml", base=str(base))
    write_record(tmp_path / "sweep" / SWEEP_FILE, load_spec(spec).to_dict())  # the sweep as it was started
    config = yaml.safe_load(base.read_text())
    config["optim"] = {**config.get("optim", {}), "lr": 0.5}
    base.write_text(yaml.safe_dump(config))
    monkeypatch.setattr(sweep, "start_ray", lambda *args: pytest.fail("the changed base config was accepted"))
    with pytest.raises(SystemExit) as exit_info:
        sweep.main([str(spec), "--run-dir", str(tmp_path / "sweep")])
    assert exit_info.value.code == 2
    assert "base (or probe) config's contents differ" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # and without the spec, from the saved one
        sweep.main(["--resume", "--run-dir", str(tmp_path / "sweep")])
    assert exit_info.value.code == 2 and "has changed since the sweep" in capsys.readouterr().err


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


def test_a_stage_dies_with_the_runner_that_holds_its_lease(tmp_path: Path) -> None:
    """A runner SIGKILLed mid-stage (its Ray worker died) takes its stage with it, and the next runner takes its
    lease at once: no stage goes on unseen beside a rerun."""
    spec, run_dir = eval_sweep(tmp_path)
    pid_file = tmp_path / "stage.pid"
    stage = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    runner = (f"import sys; from nas.sweep import trial as sweep_trial; from nas.sweep.results import load_sweep; "
              f"sweep_trial._command = lambda *args: [sys.executable, '-c', {stage!r}]; "
              f"spec = load_sweep(__import__('pathlib').Path({str(run_dir)!r})); "
              f"sweep_trial.run_trial(spec, spec.trials[0], {str(run_dir)!r}, 1)")
    worker = subprocess.Popen([sys.executable, "-c", runner], cwd=ROOT, env={**ENV, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 60
    while not (pid_file.is_file() and pid_file.read_text()):
        assert worker.poll() is None and time.monotonic() < deadline, "the stage never started"
        time.sleep(0.05)
    stage_pid = int(pid_file.read_text())
    worker.kill()
    worker.wait()
    deadline = time.monotonic() + 10
    while _running(stage_pid):
        assert time.monotonic() < deadline, "the stage outlived its runner"
        time.sleep(0.05)
    lease = sweep_lease.Lease(run_dir / spec.trials[0].name / sweep_trial.LEASE)
    assert lease.try_acquire()  # its owner is dead: no waiting for the heartbeat to go stale
    lease.release()
