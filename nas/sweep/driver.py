"""`nas-sweep SPEC.yaml [--run-dir DIR] [--parallel N] [--ray ADDRESS] [--resume]`: many searches or trainings,
run as Ray tasks (an embedded local Ray by default, a running cluster with --ray), compared side by side.

Each trial is a folder of ordinary run directories (see nas/sweep/trial.py); at most N run at a time, each with
its share of the CPU threads and GPUs. Rerunning the same command skips finished trials and resumes killed ones
from their checkpoints; the table, plot and HParams summaries are rewritten as trials finish
(nas/sweep/results.py).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Sequence

from nas.core.errors import OneLineParser, UserError, exit_on_user_error
from nas.core.records import write_record
from nas.sweep.results import SWEEP_FILE, load_sweep, trial_row, write_sweep_report
from nas.sweep.spec import Spec, configs_digest, load_spec
from nas.sweep.trial import DONE, FAILED, INTERRUPTED, failure, read_state, record_failure, run_trial

INSTALL_HINT = "nas-sweep runs its trials with Ray, which is not installed; install it with: pip install -e '.[sweep]'"
# Keys of the saved spec that fix what the trials are; the rest (resources) may change between runs.
IDENTITY = ("base", "kind", "genotype", "probe", "trials", "config_sha256")
CONNECT_TIMEOUT_S = 10.0  # for a --ray HOST:PORT to answer before Ray is asked to join it


def import_ray() -> ModuleType:
    """Ray, or a one-line UserError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise UserError(INSTALL_HINT) from None
    return ray


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = OneLineParser(prog="nas-sweep", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("spec", nargs="?", help="sweep spec YAML (experiments/sweep_*.yaml); optional with --resume")
    parser.add_argument("--run-dir", help="the sweep directory (default: runs/<spec name>); with --ray, a path every "
                                          "node sees (shared storage)")
    parser.add_argument("--parallel", type=int, help="trials at a time (default: GPUs, else CPU cores)")
    parser.add_argument("--ray", metavar="ADDRESS", help="a running Ray cluster (e.g. auto, or ray://head:10001); "
                                                         "default: start Ray embedded on this machine")
    parser.add_argument("--resume", action="store_true", help="continue the sweep in --run-dir with its saved spec")
    args = parser.parse_args(argv)
    if args.parallel is not None and args.parallel < 1:
        raise UserError(f"--parallel must be >= 1, got {args.parallel}")
    if args.spec is None and not (args.resume and args.run_dir):
        raise UserError("give a sweep spec (nas-sweep SPEC.yaml), or --resume --run-dir SWEEP_DIR")
    return args


def prepare(args: argparse.Namespace) -> tuple[Spec, Path]:
    """The spec and the (absolute) sweep directory; an existing sweep must be the same sweep."""
    sweep_dir = Path(args.run_dir or Path("runs") / Path(args.spec).stem).resolve()
    saved = sweep_dir / SWEEP_FILE
    if args.resume and not saved.is_file():
        raise UserError(f"--resume: {sweep_dir} holds no {SWEEP_FILE}; start the sweep without --resume")
    if args.spec is None:
        spec = load_sweep(sweep_dir)
        if spec.config_sha256 and spec.config_sha256 != configs_digest(spec.base, spec.probe):
            raise UserError(f"{spec.base} (or the probe config) has changed since the sweep in {sweep_dir} started; "
                            "restore it, or start a new sweep in another --run-dir")
        return spec, sweep_dir
    spec = load_spec(args.spec)
    if saved.is_file():
        old = json.loads(saved.read_text(encoding="utf-8"))
        new = spec.to_dict()
        changed = next((k for k in IDENTITY if old.get(k, new[k]) != new[k]), None)  # a key older sweeps lack: skip
        if changed is not None:
            what = "base (or probe) config's contents differ" if changed == "config_sha256" else f"{changed} differs"
            raise UserError(f"{sweep_dir} holds a different sweep (its {what} from {args.spec}'s); rerun "
                            "with the spec it was started with, or choose another --run-dir")
    return spec, sweep_dir


@dataclass
class Plan:
    """How many trials run at once and what each asks for."""

    parallel: int
    num_cpus: float
    num_gpus: float

    @property
    def threads(self) -> int:
        return max(1, int(self.num_cpus))


def plan(cpus: float, gpus: float, parallel: int | None, resources: dict[str, float]) -> Plan:
    """Split `cpus` and `gpus` over `parallel` trials (default: one per GPU, else one per core)."""
    n = parallel or int(gpus) or max(1, int(cpus))
    num_cpus = resources.get("num_cpus", max(1, math.floor(cpus / n)))
    default_gpus = (math.floor(gpus / n) if gpus >= n else gpus / n) if gpus else 0.0
    num_gpus = resources.get("num_gpus", default_gpus)
    if num_cpus > cpus or num_gpus > gpus:
        raise UserError(f"a trial asks for {num_cpus} CPUs and {num_gpus} GPUs, but Ray has {cpus:g} CPUs and "
                        f"{gpus:g} GPUs; lower resources: in the spec")
    return Plan(n, num_cpus, num_gpus)


def check_reachable(address: str) -> None:
    """Refuse a `HOST:PORT` or `ray://HOST:PORT` address where nothing answers (Ray itself retries for long)."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return  # `auto`, or a form Ray checks itself
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as err:
        raise UserError(f"--ray {address}: nothing answers at {host}:{port} ({err.strerror or err}); start the "
                        "cluster (ray start --head) or give its address") from None


def start_ray(ray: ModuleType, address: str | None) -> tuple[float, float]:
    """Connect to the cluster at `address`, or start a new Ray on this machine (never one found through
    RAY_ADDRESS or Ray's current-cluster file); returns its (CPUs, GPUs). A failure is a one-line UserError."""
    quiet = {"include_dashboard": False, "logging_level": logging.WARNING, "log_to_driver": False}
    if address:
        check_reachable(address)
    try:
        if address:
            ray.init(address=address, **quiet)
        else:  # Ray finds the GPUs itself
            ray.init(address="local", num_cpus=len(os.sched_getaffinity(0)), **quiet)
    except Exception as err:  # Ray raises ConnectionError, ValueError, RuntimeError, TimeoutError, ...
        where = f"join the Ray cluster at {address}" if address else "start Ray on this machine"
        raise UserError(f"could not {where}: {failure(err, '')['reason']}") from None
    total = ray.cluster_resources()
    return float(total.get("CPU", 0)), float(total.get("GPU", 0))


def _describe(spec: Spec, sweep_dir: Path, index: int) -> str:
    try:
        row = trial_row(spec, sweep_dir, index)
    except Exception as err:  # as in report(): a line of output is not worth stopping trials
        return f"{spec.trials[index].name}: finished; its records are not readable ({failure(err, '')['reason']})"
    shown = [f"{key} {row[key]:.3g}" for key in ("params_M", "argmax_acc", "top1", "wall_s")
             if isinstance(row[key], (int, float))]
    reason = f": {row['reason']}" if row["status"] != DONE and row["reason"] else ""
    return f"{row['trial']}: {row['status']}{reason}" + (f" ({', '.join(shown)})" if shown else "")


def report(sweep_dir: Path) -> Path | None:
    """Rewrite the sweep's table, plot and HParams; a failure is a one-line warning (the trials go on)."""
    try:
        return write_sweep_report(sweep_dir)
    except Exception as err:  # a full disk, a concurrent nas-report, a bad record: never worth stopping trials
        print(f"warning: the sweep report was not written: {failure(err, '')['reason']}", file=sys.stderr, flush=True)
        return None


def task_failed(ray: ModuleType, sweep_dir: Path, spec: Spec, index: int, err: Exception) -> None:
    """Record and print a trial whose Ray task failed outside its runner: it raised (failed, with the message and
    traceback tail), or its worker died (interrupted: a rerun resumes it)."""
    trial = spec.trials[index]
    raised = isinstance(err, ray.exceptions.RayTaskError)
    cause = (getattr(err, "cause", None) or err) if raised else f"its Ray worker died ({type(err).__name__})"
    details = failure(cause, str(err))
    status = FAILED if raised else INTERRUPTED
    try:
        recorded = record_failure(sweep_dir, trial, status, details)
    except OSError:  # the trial's folder cannot be written (what may have failed the task): say so, go on
        recorded = False
    print(f"{trial.name}: {status}: {details['reason']}" + ("" if recorded else " (not recorded in its trial.json)"),
          flush=True)


def run_sweep(ray: ModuleType, spec: Spec, sweep_dir: Path, trial_plan: Plan) -> int:
    """Run every unfinished trial, at most `trial_plan.parallel` at a time; 0 when all are done."""
    started = time.time()
    todo = [i for i, t in enumerate(spec.trials) if read_state(sweep_dir / t.name)["status"] not in (DONE, FAILED)]
    print(f"sweep {sweep_dir}: {len(spec.trials)} trials, {len(spec.trials) - len(todo)} already finished; "
          f"{trial_plan.parallel} at a time, each {trial_plan.num_cpus:g} CPUs / {trial_plan.num_gpus:g} GPUs",
          flush=True)
    task = ray.remote(run_trial).options(num_cpus=trial_plan.num_cpus, num_gpus=trial_plan.num_gpus)
    running: dict[Any, int] = {}
    while todo or running:
        while todo and len(running) < trial_plan.parallel:
            index = todo.pop(0)
            running[task.remote(spec, spec.trials[index], str(sweep_dir), trial_plan.threads)] = index
        ready, _ = ray.wait(list(running), num_returns=1)
        index = running.pop(ready[0])
        try:
            ray.get(ready[0])
        except ray.exceptions.RayError as err:
            task_failed(ray, sweep_dir, spec, index, err)
        report(sweep_dir)
        print(_describe(spec, sweep_dir, index), flush=True)
    table = report(sweep_dir)
    states = [read_state(sweep_dir / t.name)["status"] for t in spec.trials]
    print(f"{states.count(DONE)}/{len(states)} trials done in {time.time() - started:.0f} s; table {table}; "
          f"tensorboard --logdir {sweep_dir}")
    return 0 if states.count(DONE) == len(states) else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `nas-sweep`."""
    with exit_on_user_error():
        args = parse_args(argv)
        ray = import_ray()
        spec, sweep_dir = prepare(args)
        cpus, gpus = start_ray(ray, args.ray)
        try:
            trial_plan = plan(cpus, gpus, args.parallel, spec.resources)
            sweep_dir.mkdir(parents=True, exist_ok=True)
            write_record(sweep_dir / SWEEP_FILE, spec.to_dict())
            report(sweep_dir)
            return run_sweep(ray, spec, sweep_dir, trial_plan)
        finally:
            ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
