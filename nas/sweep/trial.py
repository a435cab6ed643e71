"""One sweep trial: its stages run as ordinary `search.py` / `train_eval.py` commands, each in its own run directory.

A trial's folder `SWEEP_DIR/<trial>/` holds one run directory per stage (`search/` then `probe/`, or `eval/`),
each written by the entry script exactly as a user's command would, plus `trial.json`: the stages done and one
entry per attempt (fresh start or `--resume`, start and end time, exit code, host). A rerun of the sweep skips
the stages marked done, resumes a stage whose run directory holds a checkpoint, and starts the others afresh.
A lock on `SWEEP_DIR/<trial>/.lock`, inherited by the stage's process, keeps two drivers from running one trial.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from nas.core.checkpoint import CHECKPOINT, PREVIOUS
from nas.core.records import write_record
from nas.sweep.spec import GENOTYPE_KEY, Spec, Trial, assignment

ROOT = Path(__file__).resolve().parent.parent
TRIAL_FILE = "trial.json"
RECORD = "genotype.json"  # what search.py and train_eval.py write at the end of a run
DONE, FAILED, PENDING, RUNNING, INTERRUPTED = "done", "failed", "pending", "running", "interrupted"


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
        genotype = str(trial.params.get(GENOTYPE_KEY, spec.genotype))
        return [*head, "--genotype", genotype, "-c", spec.base, "--run-dir", str(run_dir), "--set", *trial.overrides]
    probe = spec.probe
    assert probe is not None
    return [*head, "--genotype", str(trial_dir / "search" / RECORD), "-c", probe.config, "--run-dir", str(run_dir),
            "--set", *probe.overrides, assignment("run.seed", trial.seed)]


def _has_checkpoint(run_dir: Path) -> bool:
    return (run_dir / CHECKPOINT).exists() or (run_dir / PREVIOUS).exists()


class TrialRunner:
    """Runs the stages of one trial that are not done yet, with `threads` CPU threads per stage."""

    def __init__(self, spec: Spec, trial: Trial, sweep_dir: Path, threads: int):
        self.spec, self.trial, self.threads = spec, trial, threads
        self.dir = sweep_dir / trial.name
        self.state: dict[str, Any] = {}

    def _save(self) -> None:
        write_record(self.dir / TRIAL_FILE, {"name": self.trial.name, **self.state})

    def _run_stage(self, stage: str, lock_fd: int) -> int:
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
                                stdin=subprocess.DEVNULL, pass_fds=(lock_fd,), check=False).returncode
        attempt.update(ended=round(time.time(), 3), rc=rc)
        if rc == 0:
            self.state["stages"][stage] = DONE
        self._save()
        return rc

    def run(self) -> dict[str, Any]:
        """Run what is left of the trial; returns its state (status done, failed or interrupted)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # waits while an orphaned stage of an earlier driver still runs
            self.state = read_state(self.dir)
            if self.state["status"] in (DONE, FAILED):
                return self.state
            self.state["status"] = RUNNING
            for stage in stage_names(self.spec):
                if self.state["stages"].get(stage) == DONE:
                    continue
                rc = self._run_stage(stage, lock.fileno())
                if rc < 0:  # killed by a signal (a dying driver, the OOM killer): a rerun resumes it
                    self.state["status"] = INTERRUPTED
                    self._save()
                    return self.state
                if rc != 0:
                    self.state.update(status=FAILED, failed_stage=stage,
                                      reason=f"{stage} exited with code {rc}; see {self.dir / (stage + '.out')}")
                    self._save()
                    return self.state
            self.state["status"] = DONE
            self._save()
        return self.state


def run_trial(spec: Spec, trial: Trial, sweep_dir: str, threads: int) -> dict[str, Any]:
    """Run one trial (the body of a Ray task); returns its name and final state."""
    return {"name": trial.name, **TrialRunner(spec, trial, Path(sweep_dir), threads).run()}
