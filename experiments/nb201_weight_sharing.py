"""Weight-sharing NAS against NAS-Bench-201's ground truth on the whole CIFAR-10 (one JPEG pass).

(a) Ranking (nas/benchmarks/nb201_ranking.py): train a supernet on the search split with one uniformly sampled
    cell per minibatch, score 200 cells stratified over the table's accuracy plus its top 20 one-shot on held-out
    test images (BatchNorm on batch statistics, and recalibrated), and correlate with the table's
    `cifar10_test_acc`: Kendall tau, Spearman rho, precision at the top 5%, and the KL-to-all-on rho; then the same
    with uniform sampling over the table's isomorphism classes instead of over ops, and with path dropout.
(b) Search: every controller through search.py's own entry (search.main, in worker processes), several seeds:
    DARTS first and second order, GDAS, REINFORCE with each behaviour policy, P-DARTS progressive dropping and
    random search with parameter sharing (the rsps controller), PC-DARTS (partial channels K=4, edge
    normalisation, first order). The table judges each found cell at the end only.
(c) Training-free searches (docs/estimators.md), every one on the rank ensemble ZC of estimators scored on the
    benchmark's network (C=16, N=5) at initialisation, no weight trained: REINFORCE with the estimator reward
    (`reinforce_zc`), progressive pruning by the estimator in four stages (`prune_zc`), the best of N random cells
    by it (`random_zc`), and the hybrid (`hybrid_zc`): the same N random cells, the top_k best by the estimator
    trained briefly from scratch (search.select=probe) and the best of those by validation accuracy kept.

    python experiments/nb201_weight_sharing.py --smoke          # every method and the ranking, ~2 min on 2 cores
    python experiments/nb201_weight_sharing.py                  # the default benchmark, ~60 min on 2 cores
    python experiments/nb201_weight_sharing.py --full           # the papers' settings, for a GPU

OUT/results.json: `ranking: {kendall_tau, spearman_rho, precision_top5pct, ...}` (the uniform-over-ops supernet
with recalibrated BatchNorm; every variant and both BatchNorm modes under `variants`) and
`search: {method: {test_acc_mean, test_acc_std, archs, wall_s, cpu_s, estimator_evaluations, ...}}` (cpu_s: the
search's process CPU seconds, mean over seeds; estimator_evaluations: per seed, the architectures a training-free
search scored). Finished searches and rankings in OUT are
reused when their settings match, so a rerun after an interruption does only what is missing.
"""
from __future__ import annotations

import contextlib
import json
import os
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

import search
from controllers.registry import controller_class
from nas.benchmarks.nb201_ranking import RankingSetting, check_setting, iso_classes, run_ranking, study_cells
from nas.benchmarks.nb201_table import REINFORCE_BEHAVIOURS, TabularBenchmark
from nas.core.checkpoint import CHECKPOINT
from nas.core.config import load_config
from nas.core.data import load_dataset
from nas.core.errors import OneLineParser, UserError, exit_on_user_error
from nas.core.records import read_record
from nas.engine.search_config import SearchConfig
from search_spaces.nb201 import code_to_arch

ROOT = Path(__file__).resolve().parents[1]
CPU_FILE = "cpu.json"  # a search's process CPU seconds, next to its genotype.json

CONFIG = ROOT / "experiments" / "nb201_quick.yaml"
TABLE = ROOT.parent / "shared" / "data" / "nb201" / "nb201_cifar10.csv"
PDARTS_STAGES = 3  # the controllers' per-stage defaults are lists of 3
# The training-free methods' estimator: the rank ensemble of synflow, params and jacob_cov (the best three-member
# ensemble of the ranking study's 164 cells, Kendall tau 0.74; docs/estimators.md).
ZC = "synflow+params+jacob_cov"
ESTIMATOR_METHODS = ("reinforce_zc", "prune_zc", "random_zc", "hybrid_zc")
PRUNE_KEEP = [4, 3, 2, 1]  # prune_zc drops one op per edge per stage, as TE-NAS does
METHODS = ("darts_v1", "darts_v2", "gdas", *(f"reinforce_{b}" for b in REINFORCE_BEHAVIOURS), "pdarts", "rsps",
           "pcdarts", *ESTIMATOR_METHODS)
# Expected cost per epoch in single-path steps (REINFORCE: 2.5), to start the longest jobs of a round first.
COST = {"darts_v1": 12.0, "darts_v2": 30.0, "gdas": 2.0, "pdarts": 8.0, "rsps": 1.2, "pcdarts": 6.0,
        "reinforce_zc": 6.0, "prune_zc": 4.0, "random_zc": 8.0, "hybrid_zc": 10.0}
# The ranking's supernet trainings, as changes to the preset's RankingSetting. The first (uniform over ops) is scored
# after each of the setting's score_epochs, the others after the last epoch only.
VARIANTS: dict[str, dict[str, Any]] = {"uniform_ops": {}, "uniform_cells": {"sampling": "cells"},
                                       "path_dropout": {"path_dropout": 0.5}}
# The NAS-Bench-201 paper's weight-sharing searches on CIFAR-10 (test accuracy, %), and its best cell.
PAPER = {"DARTS-V1": 54.30, "DARTS-V2": 54.30, "ENAS": 54.30, "SETN": 87.64, "RSPS": 87.66, "GDAS": 93.61,
         "best cell": 94.37}


@dataclass
class SearchPreset:
    """The searches' shared settings."""

    C: int
    cells_per_stage: int
    images: int  # data.limit: the search split's images (0: all 50,000)
    epochs: int
    pdarts_epochs: list[int]
    rsps_candidates: int
    seeds: int
    batch_size: int = 64
    score_C: int = 16  # the estimator methods score the benchmark's network at these channels (model.eval_C)
    score_N: int = 5  # and cells per stage (model.eval_N)
    prune_samples: int = 48  # prune_zc: cells drawn and scored per stage
    random_candidates: int = 212  # random_zc and hybrid_zc: distinct cells scored, matched to reinforce_zc's mean
    # estimator evaluations over its 5 seeds (docs/study-nb201.md)
    probe_top_k: int = 5  # hybrid_zc: the best cells by the estimator that are trained
    probe_epochs: int = 2
    probe_C: int = 8
    probe_layers: int = 1


@dataclass
class Preset:
    """A whole benchmark: the searches, the ranking's supernet training and how many cells it scores."""

    search: SearchPreset
    ranking: RankingSetting
    cells: int
    top: int


PRESETS = {
    "smoke": Preset(SearchPreset(C=4, cells_per_stage=1, images=256, epochs=1, pdarts_epochs=[1, 1, 1],
                                 rsps_candidates=4, seeds=1, batch_size=32, score_C=4, score_N=1, prune_samples=4,
                                 random_candidates=8, probe_top_k=2, probe_epochs=1, probe_C=4),
                    RankingSetting(images=256, C=4, epochs=2, score_epochs=[1, 2], batch_size=32, held_out=100,
                                   recal=50), cells=10, top=2),
    "default": Preset(SearchPreset(C=8, cells_per_stage=1, images=6000, epochs=3, pdarts_epochs=[1, 1, 1],
                                   rsps_candidates=47, seeds=3),
                      RankingSetting(images=6000, C=8, epochs=12, score_epochs=[3, 12], held_out=500, recal=256),
                      cells=200, top=20),
    "full": Preset(SearchPreset(C=16, cells_per_stage=5, images=0, epochs=50, pdarts_epochs=[20, 15, 15],
                                rsps_candidates=100, seeds=3),
                   RankingSetting(images=0, C=16, cells_per_stage=5, epochs=50, score_epochs=[10, 25, 50],
                                  held_out=10_000, recal=1000),
                   cells=200, top=20),
}


def one_stage_defaults(controller: str) -> list[str]:
    """Overrides that cut the controller's per-stage defaults (lists of one value per P-DARTS stage) to one stage."""
    return [f"{section}.{key}={json.dumps(value[:1])}" for section, cls in controller_class(controller).config_sections
            .items() for key, value in vars(cls()).items() if isinstance(value, list) and len(value) == PDARTS_STAGES]


def method_overrides(method: str, p: SearchPreset) -> list[str]:
    """The --set overrides (on experiments/nb201_quick.yaml) that make `method` a search with preset `p`."""
    def stages(epochs: list[int], warmup: list[int], keep: list[int]) -> list[str]:
        return [f"stages.layers={[p.cells_per_stage] * len(epochs)}", f"stages.epochs={epochs}",
                f"stages.warmup_epochs={warmup}", f"stages.keep={keep}", f"stages.skip_dropout={[0.0] * len(epochs)}"]

    one = stages([p.epochs], [0], [1])
    if method in ESTIMATOR_METHODS:
        return [f"model.eval_C={p.score_C}", f"model.eval_N={p.score_N}", *estimator_overrides(method, p, stages)]
    if method in ("darts_v1", "darts_v2"):
        return ["controller=gradient", f"gradient.order={1 if method == 'darts_v1' else 2}", *one]
    if method == "gdas":
        return ["controller=gdas", *one]
    if method.startswith("reinforce_"):
        return ["controller=reinforce", "reinforce.sample=edges", f"reinforce.behaviour={method[len('reinforce_'):]}",
                *one_stage_defaults("reinforce"), *stages([p.epochs], [min(1, p.epochs - 1)], [1])]
    if method == "pdarts":
        return ["controller=gradient", *stages(p.pdarts_epochs, [0] * len(p.pdarts_epochs), [3, 2, 1])]
    if method == "rsps":
        return ["controller=rsps", f"rsps.candidates={p.rsps_candidates}", *one]
    if method == "pcdarts":  # PC-DARTS: first order, the ops on 1/4 of every edge's channels, edge normalisation
        return ["controller=gradient", "gradient.order=1", "model.mixture=partial", "model.partial_k=4",
                "model.edge_norm=true", *one]
    raise UserError(f"unknown method {method!r}; choose from: {', '.join(METHODS)}")


def estimator_overrides(method: str, p: SearchPreset, stages: Callable[..., list[str]]) -> list[str]:
    """The training-free methods' overrides (every epoch scores; none trains weights)."""
    if method == "reinforce_zc":
        return ["controller=reinforce", "reinforce.sample=edges", f"reward.estimator={ZC}",
                *one_stage_defaults("reinforce"), *stages([p.epochs], [0], [1])]
    if method == "prune_zc":
        n = len(PRUNE_KEEP)
        return ["controller=estimator_pruning", f"estimator_pruning.estimator={ZC}",
                f"estimator_pruning.samples={[p.prune_samples] * n}", *stages([1] * n, [0] * n, PRUNE_KEEP)]
    steps = max(1, (p.images or 50_000) // 2 // p.batch_size)  # architecture steps in an epoch (its half's batches)
    chosen = ["controller=random_estimator", f"random_estimator.estimator={ZC}",
              f"random_estimator.candidates={p.random_candidates}",
              f"random_estimator.per_step={-(-p.random_candidates // steps)}", *stages([1], [0], [1])]
    if method == "random_zc":
        return chosen
    return [*chosen, "search.select=probe", f"search.top_k={p.probe_top_k}", f"search.probe_epochs={p.probe_epochs}",
            f"search.probe_C={p.probe_C}", f"search.probe_layers={p.probe_layers}"]


def search_overrides(method: str, seed: int, p: SearchPreset, data_root: str, device: str) -> list[str]:
    """Every --set override of one search (on experiments/nb201_quick.yaml)."""
    return [f"data.root={data_root}", f"data.limit={p.images}", f"data.batch_size={p.batch_size}",
            f"model.C={p.C}", f"run.seed={seed}", f"run.device={device}", "run.draw=false", "run.log_every=50",
            *method_overrides(method, p)]


def same_config(run_dir: Path, config: dict[str, Any]) -> bool:
    """Whether run_dir's saved config means `config` under today's SearchConfig: a key added to the schema since
    the run was saved takes its default, so a finished search is still reused after such an update."""
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        return False
    try:
        return load_config(SearchConfig, saved).to_tree() == config
    except UserError:  # a key the schema no longer has, or a value it refuses now
        return False


def _worker_init() -> None:
    torch.set_num_threads(1)


def run_search(argv: list[str], run_dir: Path, config: dict[str, Any]) -> dict[str, Any]:
    """One search through search.main, its console in console.log: reused when run_dir finished this config,
    resumed (--resume) when it stopped after a checkpoint; returns the found architecture string, wall seconds,
    CPU seconds of this process in search.main (summed over resumed parts, kept in CPU_FILE; None for a run
    finished before it was kept), steps (weight and policy steps) and estimator_evaluations (the training-free
    controllers' distinct architectures scored, summed over stages; None for the others)."""
    same = same_config(run_dir, config)
    cpu_file = run_dir / CPU_FILE
    if not (same and (run_dir / "genotype.json").is_file()):
        resume = same and (run_dir / CHECKPOINT).is_file()
        spent = json.loads(cpu_file.read_text())["cpu_s"] if resume and cpu_file.is_file() else 0.0
        run_dir.mkdir(parents=True, exist_ok=True)
        start = time.process_time()
        with open(run_dir / "console.log", "a") as console, contextlib.redirect_stdout(console):
            failed = search.main(["--resume", str(run_dir)] if resume else argv) != 0
        write_text_atomic(cpu_file, json.dumps({"cpu_s": round(spent + time.process_time() - start, 1)}))
        if failed:
            raise RuntimeError(f"search {run_dir} failed; see {run_dir / 'console.log'}")
    record = read_record(run_dir / "genotype.json")
    last_stage = read_record(run_dir / "stages" / f"stage{len(record['search']['stages'])}.json")
    cpu_s = json.loads(cpu_file.read_text())["cpu_s"] if cpu_file.is_file() else None
    evaluations = [stage["estimator_evaluations"] for stage in record["search"]["stages"]
                   if "estimator_evaluations" in stage]
    return {"arch": record["genotype"], "wall_s": record["search"]["wall_time_s"], "cpu_s": cpu_s,
            "steps": last_stage["global_step"], "by_max_skip": record["search"].get("genotypes_by_max_skip", {}),
            "estimator_evaluations": sum(evaluations) if evaluations else None}


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file and os.replace."""
    temp = path.with_name(path.name + ".tmp")
    temp.write_text(text)
    os.replace(temp, path)


def ranking_task(setting: RankingSetting, codes: list[int], truth: list[float], table: str, path: Path
                 ) -> dict[str, Any]:
    """One ranking supernet (reused from `path` when it holds this setting's result)."""
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("setting") == asdict(setting) and saved.get("codes") == codes:
            return saved
    classes = iso_classes(table) if setting.sampling == "cells" else None
    result = {**run_ranking(setting, codes, truth, classes), "codes": codes}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result))
    return result


def summarise_search(runs: dict[int, dict[str, Any]], bench: TabularBenchmark) -> dict[str, Any]:
    """Per method: the table's accuracy of each seed's cell (mean, std over seeds), the cells and the costs."""
    seeds = sorted(runs)
    accs = [bench.query(runs[s]["arch"]) for s in seeds]
    cpu = [runs[s].get("cpu_s") for s in seeds]
    return {"test_acc_mean": float(np.mean(accs)), "test_acc_std": float(np.std(accs)), "test_accs": accs,
            "archs": [runs[s]["arch"] for s in seeds], "seeds": seeds,
            "wall_s": float(np.mean([runs[s]["wall_s"] for s in seeds])),
            "cpu_s": None if None in cpu else float(np.mean(cpu)),
            "steps": int(np.mean([runs[s]["steps"] for s in seeds])),
            "estimator_evaluations": [runs[s].get("estimator_evaluations") for s in seeds],
            "test_acc_by_max_skip": by_max_skip([runs[s].get("by_max_skip", {}) for s in seeds], bench)}


def by_max_skip(per_seed: list[dict[str, str | None]], bench: TabularBenchmark) -> dict[str, float]:
    """The mean table accuracy over seeds of the cell derived under each skip limit M (P-DARTS's restriction,
    from the same search's final probabilities), for the limits every seed reports."""
    limits = set.intersection(*(set(m for m, arch in d.items() if arch) for d in per_seed)) if per_seed else set()
    return {m: float(np.mean([bench.query(d[m]) for d in per_seed])) for m in sorted(limits, key=int, reverse=True)}


def pdarts_epochs(total: int) -> list[int]:
    """Three P-DARTS stages of `total` epochs in the paper's 20:15:15 proportion, each at least one epoch."""
    later = max(1, round(0.3 * total))
    return [max(1, total - 2 * later), later, later]


def summarise_ranking(variants: dict[str, dict[str, Any]], codes: list[int], truth: list[float]) -> dict[str, Any]:
    """The uniform-over-ops supernet's correlations (recalibrated BatchNorm) on top, every variant and mode below,
    and each variant's change in tau against it."""
    base = variants.get("uniform_ops")
    summary: dict[str, Any] = {"cells": len(codes), "bn": "recalibrated",
                               "study_cells": [{"arch": code_to_arch(c), "table_acc": t} for c, t in zip(codes, truth)]}
    if base is not None:
        summary.update(base["recalibrated"])
        summary.update({"batch_stats": base["batch_stats"], "kl_spearman_rho": base["kl_spearman_rho"],
                        "kl_kendall_tau": base["kl_kendall_tau"]})
    summary["variants"] = {}
    for name, result in variants.items():
        entry = {key: result[key] for key in ("batch_stats", "recalibrated", "kl_spearman_rho", "kl_kendall_tau",
                                              "train_s", "setting")}
        entry["by_epoch"] = [{"epoch": e["epoch"], "train_s": e["train_s"],
                              "kendall_tau_batch_stats": e["batch_stats"]["kendall_tau"],
                              "kendall_tau_recalibrated": e["recalibrated"]["kendall_tau"]} for e in result["by_epoch"]]
        entry["oneshot_acc"] = result["cells"]
        if base is not None:
            entry["delta_tau_vs_uniform_ops"] = {mode: result[mode]["kendall_tau"] - base[mode]["kendall_tau"]
                                                 for mode in ("batch_stats", "recalibrated")}
        summary["variants"][name] = entry
    return summary


def print_tables(results: dict[str, Any]) -> None:
    ranking = results["ranking"]
    print("\nranking (vs table cifar10_test_acc):  variant / BN: tau, rho, precision@5%, KL rho")
    for name, v in ranking["variants"].items():
        for mode in ("batch_stats", "recalibrated"):
            c = v[mode]
            print(f"  {name:<14} {mode:<13} tau {c['kendall_tau']:+.3f}  rho {c['spearman_rho']:+.3f}  "
                  f"p@5% {c['precision_top5pct']:.2f}  KL rho {v['kl_spearman_rho']:+.3f}")
        print("    tau by epoch (batch stats / recalibrated): " + ", ".join(
            f"{e['epoch']}: {e['kendall_tau_batch_stats']:+.3f}/{e['kendall_tau_recalibrated']:+.3f}"
            for e in v["by_epoch"]))
    print("\nsearch (table cifar10_test_acc of the found cell):")
    for method, s in results["search"].items():
        cpu = "      ?" if s["cpu_s"] is None else f"{s['cpu_s']:7.1f}"
        print(f"  {method:<24} {s['test_acc_mean']:6.2f} +- {s['test_acc_std']:5.2f}  wall {s['wall_s']:7.1f} s  "
              f"CPU {cpu} s  steps {s['steps']:5d}  {s['archs'][0]}")
        if s.get("test_acc_by_max_skip"):
            limits = s["test_acc_by_max_skip"].items()
            print("    by skip limit M: " + "  ".join(f"{m}: {acc:.2f}" for m, acc in limits))
    print(f"  paper (weight sharing): {PAPER}")


def parse_args(argv: list[str] | None):
    p = OneLineParser(description=__doc__.split("\n\n")[0])
    size = p.add_mutually_exclusive_group()
    size.add_argument("--smoke", action="store_true", help="tiny settings: the whole pipeline in about 2 minutes")
    size.add_argument("--full", action="store_true", help="the papers' settings: C=16, N=5, 50 epochs, 25k/25k (GPU)")
    p.add_argument("--out", default="runs/nb201_weight_sharing")
    p.add_argument("--data-root", default="~/.cache/pdarts-nas/cifar10",
                   help="the folder holding cifar-10-batches-py of the shared JPEG CIFAR-10 (see nb201_quick.yaml)")
    p.add_argument("--table", default=str(TABLE), help="NAS-Bench-201's CIFAR-10 table (arch, cifar10_test_acc, "
                   "iso_key)")
    p.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS, help="(none: skip the searches)")
    p.add_argument("--variants", nargs="*", choices=list(VARIANTS),
                   help="ranking variants to run (default: all; none: skip the ranking)")
    p.add_argument("--seeds", type=int, help="seeds per method (default: the preset's)")
    p.add_argument("--search-epochs", type=int, metavar="E",
                   help="train every search E epochs (P-DARTS: three stages in the paper's 20:15:15 proportion; "
                   "default: the preset's)")
    p.add_argument("--ranking-epochs", type=int, metavar="E",
                   help="train the ranking supernets E epochs, scoring after E/4 and E (default: the preset's)")
    p.add_argument("--workers", type=int, default=2, help="parallel worker processes, one torch thread each")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    return p.parse_args(argv)


def plan(args) -> tuple[Preset, list[tuple[float, str, Any, tuple]], dict[str, Any]]:
    """Validate everything and list the tasks (expected cost, kind, key, arguments), before any training: in rounds
    (the uniform-over-ops ranking and every method's first seed, then the other rankings and second seeds, ...),
    the most expensive first within a round, so an interrupted run has every method."""
    preset = PRESETS["smoke" if args.smoke else "full" if args.full else "default"]
    if args.seeds is not None:
        preset = replace(preset, search=replace(preset.search, seeds=args.seeds))
    if preset.search.seeds < 1 or args.workers < 1 or any(e is not None and e < 1 for e in (args.ranking_epochs,
                                                                                          args.search_epochs)):
        raise UserError("--seeds, --workers, --search-epochs and --ranking-epochs must be positive")
    if args.search_epochs is not None:
        preset = replace(preset, search=replace(preset.search, epochs=args.search_epochs,
                                                pdarts_epochs=pdarts_epochs(args.search_epochs)))
    if args.ranking_epochs is not None:
        epochs = args.ranking_epochs
        preset = replace(preset, ranking=replace(preset.ranking, epochs=epochs,
                                                 score_epochs=sorted({max(1, epochs // 4), epochs})))
    variants = {name: VARIANTS[name] for name in (VARIANTS if args.variants is None else args.variants)}
    bench = TabularBenchmark(args.table)
    load_dataset("cifar10_jpeg", args.data_root, train=False)  # a missing cache is a one-line error now
    out = Path(args.out)
    tasks: list[tuple[int, float, str, Any, tuple]] = []  # (round, cost, kind, key, arguments)
    codes = study_cells(bench.by_code, preset.cells, preset.top, seed=0)
    truth = [float(bench.by_code[c]) for c in codes]
    for name, change in variants.items():
        setting = replace(preset.ranking, root=args.data_root, device=args.device, **change)
        if change:
            setting = replace(setting, score_epochs=[setting.epochs])
        problems = check_setting(setting)
        if problems:
            raise UserError(f"ranking variant {name}: {problems[0]}")
        cost = setting.epochs * (6.0 if setting.path_dropout > 0 else 1.0) + len(codes) * len(setting.score_epochs) / 4
        tasks.append((0 if not change else 1, cost, "ranking", name,
                      (setting, codes, truth, args.table, out / "ranking" / f"{name}.json")))
    for method in args.methods:
        for seed in range(preset.search.seeds):
            run_dir = out / "searches" / method / f"seed{seed}"
            overrides = search_overrides(method, seed, preset.search, args.data_root, args.device)
            cfg = load_config(SearchConfig, CONFIG, overrides)  # the search's own validation, before any work
            argv = ["-c", str(CONFIG), "--run-dir", str(run_dir), "--set", *overrides]
            epochs = (sum(preset.search.pdarts_epochs) if method == "pdarts" else len(PRUNE_KEEP)
                      if method == "prune_zc" else preset.search.epochs)
            cost = COST.get(method, 2.5) * epochs
            tasks.append((seed, cost, "search", (method, seed), (argv, run_dir, cfg.to_tree())))
    context = {"preset": asdict(preset), "codes": codes, "truth": truth, "bench": bench, "out": out}
    return preset, [task[1:] for task in sorted(tasks, key=lambda t: (t[0], -t[1]))], context


def run_tasks(tasks: list[tuple[float, str, Any, tuple]], workers: int,
              on_done: Callable[[str, Any, dict[str, Any]], None]) -> None:
    """Every task in `workers` spawned processes, most expensive first; on_done(kind, key, result) as each ends."""
    functions = {"ranking": ranking_task, "search": run_search}
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_worker_init) as pool:
        futures = {pool.submit(functions[kind], *arguments): (kind, key) for _, kind, key, arguments in tasks}
        for future in as_completed(futures):
            kind, key = futures[future]
            on_done(kind, key, future.result())


def main(argv: list[str] | None = None) -> int:
    with exit_on_user_error():
        args = parse_args(argv)
        preset, tasks, ctx = plan(args)
    start = time.time()
    out: Path = ctx["out"]
    out.mkdir(parents=True, exist_ok=True)
    rankings: dict[str, dict[str, Any]] = {}
    searches: dict[str, dict[int, dict[str, Any]]] = {}

    def write(complete: bool) -> dict[str, Any]:
        best_arch, best_acc = ctx["bench"].best()
        results = {"setting": ctx["preset"], "complete": complete, "wall_s": round(time.time() - start, 1),
                   "ranking": summarise_ranking(rankings, ctx["codes"], ctx["truth"]),
                   "search": {m: summarise_search(runs, ctx["bench"]) for m, runs in searches.items()},
                   "table_best": {"arch": best_arch, "test_acc": best_acc}, "paper_weight_sharing": PAPER}
        (out / "results.json").write_text(json.dumps(results, indent=1))
        return results

    def on_done(kind: str, key: Any, result: dict[str, Any]) -> None:
        if kind == "ranking":
            rankings[key] = result
        else:
            searches.setdefault(key[0], {})[key[1]] = result
        print(f"[{time.time() - start:7.1f} s] done {kind} {key}", flush=True)
        write(complete=False)

    run_tasks(tasks, args.workers, on_done)
    results = write(complete=True)
    used = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    results["cpu_s"] = round(sum(u.ru_utime + u.ru_stime for u in used), 1)  # this process and its workers
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print_tables(results)
    print(f"\nresults: {out / 'results.json'}  ({results['wall_s']:.0f} s wall, {results['cpu_s']:.0f} s CPU)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
