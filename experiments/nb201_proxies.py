"""The ranking study of the training-free estimators (nas/core/estimators) on NAS-Bench-201.

Cells of the benchmark's network (C=16, N=5 by default) are scored at initialisation on one batch of whole-CIFAR-10
training images per seed; seed s draws the batch and the initialisation (torch.manual_seed(s) before each network is
built, so every cell of a seed starts from the same random stream). By default the cells are stratified over the
table's accuracy (one drawn from each of `--cells` equally populated accuracy strata); `--all` scores all 15,625.
The table's `cifar10_test_acc` is the ground truth.

Every scored (cell, seed) is appended to OUT/rows.csv at once (flushed and fsynced), so a run killed at any point
resumes where it stopped: a re-run skips the (cell, seed) pairs already there. Nothing is kept per cell in memory.
Cells are scored in a random order, so the rows of an unfinished run are a random part of the selection; results
are written every `--report-every` cells and at the end:

- OUT/scores.csv: one row per scored cell: the architecture string, then each estimator's seed-averaged score;
- OUT/results.json: `ranking: {estimator: {kendall_tau, spearman_rho, precision_top5pct, cpu_s_per_cell}}` against
  the table, the rank ensemble (nas/core/estimators/ensemble.py) included twice: `ensemble` ranks every cell among all
  scored cells, `ensemble_online` scores each cell as it arrived, among the cells scored before it.

    python experiments/nb201_proxies.py --out OUT [--cells 1000] [--seeds 3] [--all] [--smoke]
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from nas.benchmarks.nb201_table import TabularBenchmark
from nas.benchmarks.score_log import ScoreLog, write_text_atomic
from nas.core.data import load_dataset
from nas.core.errors import OneLineParser, UserError, exit_on_user_error
from nas.core.estimators.batches import image_batches
from nas.core.estimators.ensemble import DEFAULT_MEMBERS, OnlineRankEnsemble, rank_ensemble
from nas.core.estimators.registry import parse_names, score_all
from nas.core.metrics import ranking_correlations
from search_spaces.nb201 import build_network, code_to_arch

ROOT = Path(__file__).resolve().parent.parent
TABLE = ROOT.parent / "shared" / "data" / "nb201" / "nb201_cifar10.csv"
SELECTION_SEED = 0  # the stratified draw and the scoring order
SMOKE = {"cells": 6, "seeds": 1, "C": 4, "N": 1, "batch_size": 16}


def parse_args(argv: Sequence[str] | None) -> Any:
    p = OneLineParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder of rows.csv, scores.csv and results.json")
    p.add_argument("--cells", type=int, default=1000, help="cells stratified over the table's accuracy")
    p.add_argument("--all", action="store_true", help="score all 15,625 cells")
    p.add_argument("--seeds", type=int, default=3, help="seeds of initialisation and batch")
    p.add_argument("--smoke", action="store_true", help="6 cells, 1 seed, a C=4 N=1 network, batches of 16")
    p.add_argument("--report-only", action="store_true", help="write the results of the rows so far; score nothing")
    p.add_argument("--estimators", default="all", help="comma-separated estimator names, or all")
    p.add_argument("--ensemble", default=",".join(DEFAULT_MEMBERS), help="the rank ensemble's estimators")
    p.add_argument("--C", type=int, default=16, help="the network's width")
    p.add_argument("--N", type=int, default=5, help="cells per stage")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--table", default=str(TABLE), help="the NAS-Bench-201 CSV (arch, cifar10_test_acc)")
    p.add_argument("--root", default="~/.cache/pdarts-nas/cifar10", help="data.root of the cifar10_jpeg batches")
    p.add_argument("--report-every", type=int, default=50, help="write the results every this many cells")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = p.parse_args(argv)
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, value)
    for key in ("cells", "seeds", "C", "N", "batch_size", "report_every", "threads"):
        if getattr(args, key) < 1:
            raise UserError(f"--{key.replace('_', '-')} must be >= 1, got {getattr(args, key)}")
    args.estimators = parse_names(args.estimators)
    args.ensemble = parse_names(args.ensemble)
    if not set(args.ensemble) <= set(args.estimators):
        raise UserError(f"the ensemble's estimators {args.ensemble} must be among --estimators {args.estimators}")
    return args


def stratified_codes(by_code: np.ndarray, count: int, seed: int) -> list[int]:
    """One cell drawn from each of `count` equally populated strata of the table's accuracy, in a random order."""
    known = np.flatnonzero(~np.isnan(by_code))
    strata = np.array_split(known[np.argsort(by_code[known], kind="stable")], min(count, len(known)))
    rng = np.random.default_rng(seed)
    picked = np.array([rng.choice(stratum) for stratum in strata])
    return [int(c) for c in rng.permutation(picked)]


def ranking_of(scores: Sequence[float], truth: Sequence[float], cpu_s: float) -> dict[str, float]:
    return {**ranking_correlations(scores, truth), "cpu_s_per_cell": cpu_s}


def summarise(rows: list[dict[str, Any]], bench: TabularBenchmark, args: Any) -> tuple[list[dict], dict]:
    """Seed-averaged scores per cell (in arrival order) and the ranking of every estimator and the ensemble."""
    per_cell: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        per_cell.setdefault(row["arch"], []).append(row)
    cells = [{"arch": arch, **{name: float(np.mean([r[name] for r in seeds])) for name in args.estimators}}
             for arch, seeds in per_cell.items()]
    truth = [bench.query(cell["arch"]) for cell in cells]
    cpu = {name: float(np.mean([r[f"cpu_{name}"] for r in rows])) for name in args.estimators}
    columns = {name: [cell[name] for cell in cells] for name in args.estimators}
    ranking = {name: ranking_of(columns[name], truth, cpu[name]) for name in args.estimators}
    ensemble_cpu = sum(cpu[name] for name in args.ensemble)
    if len(cells) > 1:
        ranking["ensemble"] = ranking_of(rank_ensemble(columns, args.ensemble), truth, ensemble_cpu)
        online = OnlineRankEnsemble(args.ensemble)
        ranking["ensemble_online"] = ranking_of([online.add(cell) for cell in cells], truth, ensemble_cpu)
    results = {"cells": len(cells), "rows": len(rows), "seeds": args.seeds, "C": args.C, "N": args.N,
               "batch_size": args.batch_size, "ensemble_members": args.ensemble, "ground_truth": "cifar10_test_acc",
               "ranking": ranking}
    return cells, results


def report(log: ScoreLog, selected: set[str], bench: TabularBenchmark, args: Any, out: Path) -> dict:
    rows = [row for row in log.rows() if row["arch"] in selected and row["seed"] < args.seeds]
    cells, results = summarise(rows, bench, args)
    lines = [",".join(["arch", *args.estimators])]
    lines += [",".join([cell["arch"], *(repr(cell[name]) for name in args.estimators)]) for cell in cells]
    write_text_atomic(out / "scores.csv", "\n".join(lines) + "\n")
    write_text_atomic(out / "results.json", json.dumps(results, indent=1) + "\n")
    return results


def run(args: Any) -> dict:
    bench = TabularBenchmark(args.table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    codes = [int(c) for c in bench.codes] if args.all else stratified_codes(bench.by_code, args.cells, SELECTION_SEED)
    archs = [code_to_arch(code) for code in codes]
    log = ScoreLog(out / "rows.csv", args.estimators)
    if args.report_only:
        return report(log, set(archs), bench, args, out)
    done = {(row["arch"], row["seed"]) for row in log.rows()}
    dataset = load_dataset("cifar10_jpeg", args.root, train=True).dataset
    batches = {seed: image_batches(dataset, 1, args.batch_size, seed) for seed in range(args.seeds)}
    start, fresh = time.time(), 0
    for i, arch in enumerate(archs, start=1):
        todo = [seed for seed in range(args.seeds) if (arch, seed) not in done]
        for seed in todo:
            torch.manual_seed(seed)
            network = build_network(arch, args.C, args.N)
            log.append(arch, seed, score_all(args.estimators, network, batches[seed]))
        fresh += bool(todo)
        if todo and fresh % args.report_every == 0:
            report(log, set(archs), bench, args, out)
            print(f"{i}/{len(archs)} cells ({time.time() - start:.0f} s)", flush=True)
    return report(log, set(archs), bench, args, out)


def main(argv: Sequence[str] | None = None) -> int:
    with exit_on_user_error():
        args = parse_args(argv)
        results = run(args)
    print(f"{'estimator':16s} {'tau':>6s} {'rho':>6s} {'P@5%':>6s} {'CPU s':>7s}   ({results['cells']} cells)")
    for name, r in results["ranking"].items():
        print(f"{name:16s} {r['kendall_tau']:6.3f} {r['spearman_rho']:6.3f} {r['precision_top5pct']:6.3f} "
              f"{r['cpu_s_per_cell']:7.3f}")
    print(f"results: {Path(args.out) / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
