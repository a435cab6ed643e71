"""Compare the architecture controllers on NAS-Bench-201's table: no training, every query a lookup.

python experiments/nb201_bench.py --table ../shared/data/nb201/nb201_cifar10.csv --budget 100 300 --seeds 100

Every method runs once per seed with the largest budget; a smaller budget's result is read from the same run,
which is exact because no method's choices depend on its budget (see nas/benchmarks/nb201_table.py: QueryOracle).
Writes OUT/results.json ({method: {budget: {mean, std, hit_rate, queries_to_within_0.1, within_0.1_rate}}}),
OUT/meta.json and OUT/best_vs_queries.png, and prints the table.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict, replace
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from controllers.reinforce import IMPORTANCE, ReinforceConfig  # noqa: E402
from nas.benchmarks.nb201_table import METHODS, TabularBenchmark, run_method  # noqa: E402
from nas.core.errors import UserError, exit_on_user_error  # noqa: E402

WITHIN = 0.1  # accuracy points below the optimum that count as "found a near-optimal cell"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--table", required=True, help="CSV with an `arch` column and an accuracy column")
    parser.add_argument("--column", default="cifar10_test_acc", help="accuracy column to search on")
    parser.add_argument("--budget", type=int, nargs="+", default=[100, 300], help="unique queries per search")
    parser.add_argument("--seeds", type=int, default=100, help="number of seeds (0 .. S-1)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), help=f"any of: {', '.join(METHODS)}")
    parser.add_argument("--importance", default="path", help=f"REINFORCE importance weights: "
                        f"{' or '.join(IMPORTANCE)}")
    parser.add_argument("--out", default="runs/nb201_bench", help="output folder")
    args = parser.parse_args(argv)
    if min(args.budget) < 1 or args.seeds < 1:
        raise UserError("--budget values and --seeds must be >= 1")
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        raise UserError(f"unknown search method {unknown[0]!r}; choose from: {', '.join(METHODS)}")
    if args.importance not in IMPORTANCE:
        raise UserError(f"--importance must be one of: {', '.join(IMPORTANCE)}, got {args.importance!r}")
    return args


def best_so_far(trace: list[tuple[int, float]], length: int) -> np.ndarray:
    """Best accuracy after 1..length unique queries; a run that stopped early keeps its last best."""
    curve = np.array([best for _, best in trace])
    return np.concatenate([curve, np.full(length - len(curve), curve[-1])])


def summarise(curves: np.ndarray, budget: int, optimum: float) -> dict[str, float | None]:
    """Statistics over seeds (rows of `curves`, best-so-far per query) at one budget."""
    final = curves[:, budget - 1]
    near = curves[:, :budget] >= optimum - WITHIN - 1e-9
    reached = near.any(axis=1)
    first = near.argmax(axis=1) + 1
    return {
        "mean": float(final.mean()),
        "std": float(final.std(ddof=1)) if len(final) > 1 else 0.0,
        "hit_rate": float((final >= optimum - 1e-9).mean()),
        "queries_to_within_0.1": float(first[reached].mean()) if reached.any() else None,  # seeds that got there
        "within_0.1_rate": float(reached.mean()),
    }


def plot(curves: dict[str, np.ndarray], optimum: float, path: str) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    queries = np.arange(1, next(iter(curves.values())).shape[1] + 1)
    for method, curve in curves.items():
        mean, sem = curve.mean(axis=0), curve.std(axis=0) / np.sqrt(len(curve))
        ax.plot(queries, mean, label=method)
        ax.fill_between(queries, mean - sem, mean + sem, alpha=0.2)
    ax.axhline(optimum, color="black", linestyle=":", label=f"optimum {optimum:.2f}")
    ax.set_xscale("log")
    ax.set_ylim(optimum - 2.0, optimum + 0.2)
    ax.set_xlabel("unique queries")
    ax.set_ylabel("best accuracy found (mean +- 1 s.e. over seeds)")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    bench = TabularBenchmark(args.table, args.column)
    best_arch, optimum = bench.best()
    cfg = replace(ReinforceConfig(), importance=args.importance)
    budgets, horizon = sorted(set(args.budget)), max(args.budget)
    results: dict[str, dict[str, dict[str, float | None]]] = {}
    curves: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}
    for method in args.methods:
        start = time.perf_counter()
        traces = [run_method(method, bench, horizon, seed, cfg) for seed in range(args.seeds)]
        seconds[method] = time.perf_counter() - start
        curves[method] = np.stack([best_so_far(trace, horizon) for trace in traces])
        results[method] = {str(b): summarise(curves[method], b, optimum) for b in budgets}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as handle:
        json.dump(results, handle, indent=2)
    meta = {"table": args.table, "column": args.column, "optimum": optimum, "optimum_arch": best_arch,
            "seeds": args.seeds, "budgets": budgets, "reinforce": asdict(cfg), "seconds": seconds}
    with open(os.path.join(args.out, "meta.json"), "w") as handle:
        json.dump(meta, handle, indent=2)
    plot(curves, optimum, os.path.join(args.out, "best_vs_queries.png"))
    print(f"optimum {optimum:.2f} ({best_arch}); {args.seeds} seeds; REINFORCE importance={cfg.importance}")
    print(f"{'method':<26}{'budget':>7}{'best acc':>17}{'hit rate':>10}{'<=0.1 rate':>12}{'queries to <=0.1':>18}"
          f"{'time s':>8}")
    for method, per_budget in results.items():
        for budget, r in per_budget.items():
            queries = "-" if r["queries_to_within_0.1"] is None else f"{r['queries_to_within_0.1']:.1f}"
            print(f"{method:<26}{budget:>7}{r['mean']:>10.2f} +- {r['std']:.2f}{r['hit_rate']:>10.2f}"
                  f"{r['within_0.1_rate']:>12.2f}{queries:>18}{seconds[method]:>8.1f}")


if __name__ == "__main__":
    torch.set_num_threads(1)  # the controller's tensors are tiny; thread pools only add overhead here
    with exit_on_user_error():
        main()
