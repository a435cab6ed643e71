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
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Sequence

from nas.core.errors import OneLineParser, UserError, exit_on_user_error
from nas.core.records import write_record
from nas.sweep.results import SWEEP_FILE, load_sweep, trial_row, write_sweep_report
from nas.sweep.spec import Spec, load_spec
from nas.sweep.trial import DONE, FAILED, read_state, run_trial

INSTALL_HINT = "nas-sweep runs its trials with Ray, which is not installed; install it with: pip install -e '.[sweep]'"
# Keys of the saved spec that fix what the trials are; the rest (resources) may change between runs.
IDENTITY = ("base", "kind", "genotype", "probe", "trials")


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
        return load_sweep(sweep_dir), sweep_dir
    spec = load_spec(args.spec)
    if saved.is_file():
        old = json.loads(saved.read_text(encoding="utf-8"))
        new = spec.to_dict()
        changed = next((k for k in IDENTITY if old.get(k) != new[k]), None)
        if changed is not None:
            raise UserError(f"{sweep_dir} holds a different sweep (its {changed} differs from {args.spec}'s); rerun "
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


def start_ray(ray: ModuleType, address: str | None) -> tuple[float, float]:
    """Connect to the cluster at `address`, or start Ray on this machine; returns its (CPUs, GPUs)."""
    quiet = {"include_dashboard": False, "logging_level": logging.WARNING, "log_to_driver": False}
    if address:
        ray.init(address=address, **quiet)
    else:  # Ray finds the GPUs itself
        ray.init(num_cpus=len(os.sched_getaffinity(0)), **quiet)
    total = ray.cluster_resources()
    return float(total.get("CPU", 0)), float(total.get("GPU", 0))


def _describe(spec: Spec, sweep_dir: Path, index: int) -> str:
    row = trial_row(spec, sweep_dir, index)
    shown = [f"{key} {row[key]:.3g}" for key in ("params_M", "argmax_acc", "top1", "wall_s")
             if isinstance(row[key], (int, float))]
    return f"{row['trial']}: {row['status']}" + (f" ({', '.join(shown)})" if shown else "")


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
        except ray.exceptions.RayError as err:  # the trial's worker died; its trial.json says how far it got
            print(f"{spec.trials[index].name}: its Ray worker failed ({type(err).__name__}); rerun to resume it")
        write_sweep_report(sweep_dir)
        print(_describe(spec, sweep_dir, index), flush=True)
    report = write_sweep_report(sweep_dir)
    states = [read_state(sweep_dir / t.name)["status"] for t in spec.trials]
    print(f"{states.count(DONE)}/{len(states)} trials done in {time.time() - started:.0f} s; table {report}; "
          f"tensorboard --logdir {sweep_dir}")
    return 0 if states.count(DONE) == len(states) else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `nas-sweep`."""
    with exit_on_user_error():
        args = parse_args(argv)
        ray = import_ray()
        spec, sweep_dir = prepare(args)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        write_record(sweep_dir / SWEEP_FILE, spec.to_dict())
        cpus, gpus = start_ray(ray, args.ray)
        try:
            trial_plan = plan(cpus, gpus, args.parallel, spec.resources)
            write_sweep_report(sweep_dir)
            return run_sweep(ray, spec, sweep_dir, trial_plan)
        finally:
            ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
