"""One sweep trial: its stages run as ordinary `search.py` / `train_eval.py` commands, each in its own run directory.

A trial's folder `SWEEP_DIR/<trial>/` holds one run directory per stage (`search/` then `probe/`, or `eval/`),
each written by the entry script exactly as a user's command would, plus `trial.json`: the stages done and one
entry per attempt (fresh start or `--resume`, start and end time, exit code, host). A rerun of the sweep skips
the stages marked done, resumes a stage whose run directory holds a checkpoint, and starts the others afresh.
A lease on `SWEEP_DIR/<trial>/.lease` (nas/sweep/lease.py) keeps two drivers, on one node or several, from running
one trial; a stage's process is killed when the worker that holds the lease dies, so no stage outlives its lease.
A trial whose runner raises is marked failed in `trial.json`, with the message and the traceback's tail.
"""
from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from nas.core.checkpoint import CHECKPOINT, PREVIOUS
from nas.core.records import write_record
from nas.sweep.lease import Lease
from nas.sweep.spec import Spec, Trial, assignment

ROOT = Path(__file__).resolve().parents[2]  # the repository: search.py and train_eval.py run from here
TRIAL_FILE = "trial.json"
RECORD = "genotype.json"  # what search.py and train_eval.py write at the end of a run
LEASE = ".lease"
DONE, FAILED, PENDING, RUNNING, INTERRUPTED = "done", "failed", "pending", "running", "interrupted"
TRACEBACK_LINES = 12  # the tail of a runner's traceback kept in trial.json
PR_SET_PDEATHSIG = 1
_PRCTL = getattr(ctypes.CDLL(None, use_errno=True), "prctl", None)  # Linux; elsewhere a stage may outlive its worker


def stage_names(spec: Spec) -> list[str]:
    """The run directories of a trial, in order."""
    if spec.kind == "eval":
        return ["eval"]
    return ["search", "probe"] if spec.probe is not None else ["search"]


def read_state(trial_dir: Path) -> dict[str, Any]:
    """The trial's `trial.json` (an empty state for a trial never started)."""
    path = trial_dir / TRIAL_FILE
    if not path.is_file():
        return {"status": PENDING, "stages": {}, "attempts": []}
    return json.loads(path.read_text(encoding="utf-8"))


def _command(spec: Spec, trial: Trial, trial_dir: Path, stage: str, resume: bool) -> list[str]:
    run_dir = trial_dir / stage
    script = "search.py" if stage == "search" else "train_eval.py"
    head = [sys.executable, str(ROOT / script)]
    if resume:
        return [*head, "--resume", str(run_dir)]
    if stage == "search":
        return [*head, "-c", spec.base, "--run-dir", str(run_dir), "--set", *trial.overrides]
    if stage == "eval":
        return [*head, "--genotype", spec.trial_genotype(trial), "-c", spec.base, "--run-dir", str(run_dir),
                "--set", *trial.overrides]
    probe = spec.probe
    assert probe is not None
    return [*head, "--genotype", str(trial_dir / "search" / RECORD), "-c", probe.config, "--run-dir", str(run_dir),
            "--set", *probe.overrides, assignment("run.seed", trial.seed)]


def _has_checkpoint(run_dir: Path) -> bool:
    return (run_dir / CHECKPOINT).exists() or (run_dir / PREVIOUS).exists()


def _dies_with(parent: int) -> Callable[[], None] | None:
    """A `preexec_fn` that has the stage SIGKILLed when its parent (the lease holder) dies."""
    if _PRCTL is None:
        return None

    def arrange() -> None:
        _PRCTL(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before the request
            os._exit(128 + signal.SIGKILL)
    return arrange


def failure(err: BaseException | str, trace: str) -> dict[str, str]:
    """The `reason` (one line) and `traceback` (its last TRACEBACK_LINES lines) of a failed trial."""
    reason = err if isinstance(err, str) else f"{type(err).__name__}: {err}"
    lines = [line for line in reason.splitlines() if line.strip()] or [reason]
    return {"reason": lines[0], "traceback": "\n".join(trace.rstrip().splitlines()[-TRACEBACK_LINES:])}


class TrialRunner:
    """Runs the stages of one trial that are not done yet, with `threads` CPU threads per stage."""

    def __init__(self, spec: Spec, trial: Trial, sweep_dir: Path, threads: int):
        self.spec, self.trial, self.threads = spec, trial, threads
        self.dir = sweep_dir / trial.name
        self.state: dict[str, Any] = {}

    def _save(self) -> None:
        write_record(self.dir / TRIAL_FILE, {"name": self.trial.name, **self.state})

    def _run_stage(self, stage: str) -> int:
        run_dir = self.dir / stage
        resume = _has_checkpoint(run_dir)
        if not resume and run_dir.exists():
            shutil.rmtree(run_dir)  # killed before its first checkpoint: start clean
        command = _command(self.spec, self.trial, self.dir, stage, resume)
        attempt = {"stage": stage, "mode": "resume" if resume else "fresh", "host": socket.gethostname(),
                   "started": round(time.time(), 3), "command": command}
        self.state["attempts"].append(attempt)
        self._save()
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads),
               "PYTHONUNBUFFERED": "1"}
        with open(self.dir / f"{stage}.out", "ab") as out:
            rc = subprocess.run(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, preexec_fn=_dies_with(os.getpid()), check=False).returncode
        attempt.update(ended=round(time.time(), 3), rc=rc)
        if rc == 0:
            self.state["stages"][stage] = DONE
        self._save()
        return rc

    def _run_stages(self) -> None:
        self.state["status"] = RUNNING
        for key in ("reason", "traceback"):  # of an earlier interruption
            self.state.pop(key, None)
        for stage in stage_names(self.spec):
            if self.state["stages"].get(stage) == DONE:
                continue
            rc = self._run_stage(stage)
            if rc < 0:  # killed by a signal (a dying driver, the OOM killer): a rerun resumes it
                self.state["status"] = INTERRUPTED
                return
            if rc != 0:
                self.state.update(status=FAILED, failed_stage=stage,
                                  reason=f"{stage} exited with code {rc}; see {self.dir / (stage + '.out')}")
                return
        self.state["status"] = DONE

    def run(self) -> dict[str, Any]:
        """Run what is left of the trial; returns its state (status done, failed or interrupted). An exception
        marks the trial failed with its message and traceback tail, and is not raised."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with Lease(self.dir / LEASE):
            try:
                self.state = read_state(self.dir)
                if self.state["status"] in (DONE, FAILED):
                    return self.state
                self._run_stages()
            except Exception as err:  # a bug or an I/O error of this runner: the sweep goes on without the trial
                self.state = {"stages": {}, "attempts": [], **self.state, "status": FAILED,
                              **failure(err, traceback.format_exc())}
            self._save()
        return self.state


def record_failure(sweep_dir: Path, trial: Trial, status: str, details: dict[str, str]) -> bool:
    """Mark a trial whose Ray task failed outside its runner (`status` failed or interrupted, with `failure()`'s
    details), unless its runner finished it; False, and nothing written, when another runner holds its lease."""
    trial_dir = sweep_dir / trial.name
    trial_dir.mkdir(parents=True, exist_ok=True)
    lease = Lease(trial_dir / LEASE)
    if not lease.try_acquire():
        return False
    try:
        state = read_state(trial_dir)
        if state["status"] not in (DONE, FAILED):
            write_record(trial_dir / TRIAL_FILE, {"name": trial.name, **state, "status": status, **details})
    finally:
        lease.release()
    return True


def run_trial(spec: Spec, trial: Trial, sweep_dir: str, threads: int) -> dict[str, Any]:
    """Run one trial (the body of a Ray task); returns its name and final state."""
    return {"name": trial.name, **TrialRunner(spec, trial, Path(sweep_dir), threads).run()}
