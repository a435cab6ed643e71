"""Does one-shot accuracy predict stand-alone accuracy? (Bender et al. 2018, on a chain SuperNet.)

For each repeat (seed): train the chain SuperNet one-shot (one subnet per minibatch) and record every
studied subnet's test top-1 after each epoch; measure each subnet's mean symmetrised KL divergence to
the all-on reference network on the training set; train every studied subnet alone for the same
epochs. Report the table, Kendall tau / Spearman rho between one-shot and stand-alone accuracy, the
Spearman rho between KL and stand-alone accuracy, plots, and OUT/results.json.

Two more studies:
- `--plant OPS...` trains that subnet alone, plants its weights into a fresh SuperNet (optionally frozen),
  trains one-shot and tracks the planted path's one-shot rank among every subnet of the space after
  each epoch (results.json `plant`); no other stand-alone training.
- `--warm-start OPS...` trains that subnet alone and, next to the randomly initialised SuperNet of the
  study, trains one initialised from its filters (search_spaces.chain.warm_start), comparing the first
  epoch's spread of one-shot accuracy, tau and the training time to a fixed one-shot accuracy
  (results.json `warm_start`).

    python experiments/oneshot_vs_standalone.py --dataset mnist --data-root ../shared/data/mnist --repeats 3
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import random
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn
from torch.utils.data import Dataset, Subset

from nas.benchmarks.oneshot import (
    LR_SCHEDULES,
    OPTIMIZERS,
    SAMPLINGS,
    Batches,
    OneShotRun,
    TrainConfig,
    fixed_batches,
    oneshot_predict,
    score_subnets,
    shuffled_batches,
    train_oneshot,
    train_standalone,
)
from nas.core.data import DATASETS, load_dataset
from nas.core.errors import OneLineParser, UserError
from nas.core.metrics import count_parameters, flops_millions, kendall_tau, rank_of, spearman_rho, symmetrised_kl
from search_spaces.chain import (
    DEFAULT_OPS,
    HEAD_GRID,
    SHARING_MODES,
    ChainSuperNet,
    Choice,
    StandaloneNet,
    check_head,
    enumerate_choices,
    parse_choice,
    plant,
    validate_ops,
    warm_start,
)

FREEZE_MODES = ("no", "yes", "both")
# The flags that decide the stand-alone results, which --standalone-from requires to match.
STANDALONE_KEYS = ("dataset", "limit_train", "limit_test", "seed", "subnets", "filters", "blocks", "head_grid",
                   "head_hidden", "head_dropout", "epochs", "batch_size", "optimizer", "lr", "lr_schedule")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = OneLineParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="mnist", choices=DATASETS[:3])
    p.add_argument("--data-root", default="data")
    p.add_argument("--sharing", default="sum", choices=SHARING_MODES)
    p.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    p.add_argument("--oneshot-epochs", type=int, default=0, help="epochs of one-shot training (0: --epochs); "
                   "stand-alone subnets always train --epochs")
    p.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    p.add_argument("--optimizer", default=TrainConfig.optimizer, choices=OPTIMIZERS)
    p.add_argument("--lr", type=float, default=TrainConfig.lr)
    p.add_argument("--lr-schedule", default=TrainConfig.lr_schedule, choices=LR_SCHEDULES)
    p.add_argument("--path-dropout", type=float, default=TrainConfig.path_dropout,
                   help="> 0: one-shot trains the all-on network with this op dropout instead of one subnet a batch")
    p.add_argument("--sampling", default=TrainConfig.sampling, choices=SAMPLINGS,
                   help="uniform: one subnet a minibatch; fair: per minibatch K subnets using every op once, "
                        "gradients summed (FairNAS)")
    p.add_argument("--bn-recal", type=int, default=0, metavar="N",
                   help="re-estimate BatchNorm statistics on N random training images per subnet before scoring "
                        "it one-shot and before the KL (0: off)")
    p.add_argument("--head-hidden", type=int, nargs="*", default=[], metavar="WIDTH",
                   help="hidden linear layers of the head (each Linear-ReLU-Dropout) before the classifier")
    p.add_argument("--head-dropout", type=float, default=0.0, help="dropout after each hidden head layer")
    p.add_argument("--plant", nargs="+", action="append", metavar="OP",
                   help="plant study: one op per block; repeat the flag for several plants")
    p.add_argument("--freeze-planted", default="no", choices=FREEZE_MODES,
                   help="keep the planted weights frozen (both: run each plant both ways)")
    p.add_argument("--warm-start", nargs="+", metavar="OP",
                   help="also train a SuperNet warm-started from this subnet (one op per block) trained alone")
    p.add_argument("--standalone-from", metavar="RESULTS",
                   help="reuse the stand-alone results of an earlier results.json with the same stand-alone setup")
    p.add_argument("--repeats", type=int, default=1, help="seeds seed, seed+1, ...")
    p.add_argument("--subnets", type=int, default=0, help="study K subnets sampled from the space (0: all)")
    p.add_argument("--filters", type=int, default=8)
    p.add_argument("--blocks", type=int, default=2)
    p.add_argument("--head-grid", type=int, default=HEAD_GRID, help="the head pools to g x g before the linear layer "
                   "(1: global pooling)")
    p.add_argument("--ops", nargs="+", default=list(DEFAULT_OPS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit-train", type=int, default=0, help="use N training images drawn with --seed (0: all)")
    p.add_argument("--limit-test", type=int, default=0, help="use N test images drawn with --seed (0: all)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads; 1 is far faster on a shared 2-core machine (2 threads spin against "
                        "other processes: 11 ms vs 650 ms a step measured under load)")
    p.add_argument("--out", default="runs/oneshot_vs_standalone")
    return p.parse_args(argv)


def train_configs(args: argparse.Namespace) -> tuple[TrainConfig, TrainConfig]:
    """The stand-alone and the one-shot training setups (they differ in epochs only)."""
    if args.oneshot_epochs < 0:
        raise UserError(f"--oneshot-epochs must be 0 (as --epochs) or positive, got {args.oneshot_epochs}")
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
                      lr_schedule=args.lr_schedule, path_dropout=args.path_dropout, sampling=args.sampling)
    oneshot = dataclasses.replace(cfg, epochs=args.oneshot_epochs or args.epochs)
    cfg.validate()
    oneshot.validate()
    return cfg, oneshot


def study_choices(args: argparse.Namespace, num_ops: int) -> list[Choice]:
    """Every subnet, or `--subnets` of them drawn without replacement (the same for every repeat)."""
    if min(args.blocks, args.filters, args.repeats, args.head_grid) <= 0:
        raise UserError("--blocks, --filters, --repeats and --head-grid must be positive")
    space = enumerate_choices(args.blocks, num_ops)
    if args.subnets < 0 or args.subnets == 1 or args.subnets > len(space):
        raise UserError(f"--subnets must be 0 (all) or between 2 and {len(space)}, got {args.subnets}")
    if args.subnets in (0, len(space)):
        return space
    return sorted(random.Random(args.seed).sample(space, args.subnets))


def _limited(dataset: Dataset, limit: int, flag: str, seed: int) -> Dataset:
    """A seeded random subset of `limit` images (files may be sorted by class, so never the first N)."""
    if limit < 0 or limit == 1:
        raise UserError(f"{flag} must be 0 (all) or at least 2, got {limit}")
    if not limit or limit >= len(dataset):
        return dataset
    picked = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:limit]
    return Subset(dataset, picked.sort().values.tolist())


def _channels_last(model: nn.Module) -> nn.Module:
    """channels_last memory: measured 1.3-1.9x faster training and evaluation of these nets on one CPU thread."""
    return model.to(memory_format=torch.channels_last)


def make_supernet(args: argparse.Namespace, ops: tuple[str, ...], data: dict[str, Any], seed: int) -> ChainSuperNet:
    torch.manual_seed(seed)
    return _channels_last(ChainSuperNet(data["in_channels"], data["num_classes"], args.filters, args.blocks, ops,
                                        args.sharing, args.head_grid, args.head_hidden, args.head_dropout))


def make_standalone(args: argparse.Namespace, ops: tuple[str, ...], data: dict[str, Any], choice: Choice,
                seed: int) -> StandaloneNet:
    torch.manual_seed(seed)
    return _channels_last(StandaloneNet(choice, data["in_channels"], data["num_classes"], args.filters, ops,
                                        args.head_grid, args.head_hidden, args.head_dropout))


def source_seed(seed: int) -> int:
    """The init seed of a planted or warm-start source net (studied subnet i of a repeat uses seed*1_000_003 + i)."""
    return seed * 1_000_003 - 1


def train_subnets(args: argparse.Namespace, cfg: TrainConfig, ops: tuple[str, ...], choices: list[Choice],
                  seed: int, data: dict[str, Any]) -> list[dict[str, Any]]:
    """Every studied subnet trained alone: its size, cost and test top-1 after each epoch."""
    subnets = []
    for i, choice in enumerate(choices):
        net = make_standalone(args, ops, data, choice, seed * 1_000_003 + i)
        curve, _ = train_standalone(net, data["train"], data["test_batches"], cfg, seed)
        subnets.append({
            "choice": list(choice),
            "ops": [ops[k] for k in choice],
            "params": count_parameters(net),
            "flops_M": flops_millions(net, (1, data["in_channels"], data["size"], data["size"])),
            "standalone_acc": curve[-1],
            "standalone_curve": curve,
        })
    return subnets


def run_repeat(args: argparse.Namespace, cfgs: tuple[TrainConfig, TrainConfig], ops: tuple[str, ...],
               choices: list[Choice], seed: int, data: dict[str, Any],
               standalone: list[dict[str, Any]] | None) -> dict[str, Any]:
    """One seed: one-shot curves, KL to the all-on network, stand-alone curves (trained, or `standalone` reused),
    their correlations, and the warm-start comparison when asked."""
    start = time.time()
    cfg, oneshot_cfg = cfgs
    supernet = make_supernet(args, ops, data, seed)
    oneshot = train_oneshot(supernet, data["train"], data["test_batches"], oneshot_cfg, choices, seed,
                            recal_batches=data["recal"])
    reference = oneshot_predict(supernet, data["train_batches"], None, data["recal"])
    kl = {c: symmetrised_kl(oneshot_predict(supernet, data["train_batches"], c, data["recal"]), reference).mean().item()
          for c in choices}
    subnets = [{**entry, "oneshot_acc": oneshot.curves[c][-1], "kl": kl[c], "oneshot_curve": oneshot.curves[c]}
               for c, entry in zip(choices, standalone or train_subnets(args, cfg, ops, choices, seed, data))]
    if data["recal"]:  # the final scores also with the running statistics training left, to see what recal changed
        running = score_subnets(supernet, choices, data["test_batches"])
        subnets = [{**s, "oneshot_acc_running": running[c]} for c, s in zip(choices, subnets)]
    run = {"seed": seed, "subnets": subnets, **_correlations(subnets)}
    if args.warm_start:
        run["warm_start"] = warm_start_repeat(args, cfgs, ops, choices, seed, data, oneshot, subnets)
    return {**run, "wall_s": time.time() - start}


def _time_to(run: OneShotRun, target: float) -> float | None:
    """Training seconds to the first epoch whose mean one-shot top-1 over the studied subnets reaches `target`."""
    means = np.mean(list(run.curves.values()), axis=0)
    return next((s for s, m in zip(run.train_s, means) if m >= target - 1e-9), None)


def _oneshot_stats(run: OneShotRun, subnets: list[dict[str, Any]], target: float) -> dict[str, Any]:
    first = [curve[0] for curve in run.curves.values()]
    final = [s["oneshot_acc"] for s in subnets]
    alone = [s["standalone_acc"] for s in subnets]
    return {"first_epoch_var": float(np.var(first, ddof=1)), "kendall_tau": kendall_tau(final, alone),
            "spearman_rho": spearman_rho(final, alone), "time_to_target_s": _time_to(run, target),
            "mean_curve": np.mean(list(run.curves.values()), axis=0).tolist(), "train_s": run.train_s}


def warm_start_repeat(args: argparse.Namespace, cfgs: tuple[TrainConfig, TrainConfig], ops: tuple[str, ...],
                      choices: list[Choice], seed: int, data: dict[str, Any], random_run: OneShotRun,
                      subnets: list[dict[str, Any]]) -> dict[str, Any]:
    """Train the source net alone, a SuperNet warm-started from it (same seed, so the same fresh init elsewhere),
    and compare with the random-init run; the target accuracy is the random-init run's final mean one-shot top-1."""
    cfg, oneshot_cfg = cfgs
    source = make_standalone(args, ops, data, parse_choice(args.warm_start, ops, args.blocks), source_seed(seed))
    source_curve, source_s = train_standalone(source, data["train"], data["test_batches"], cfg, seed)
    supernet = make_supernet(args, ops, data, seed)
    initialised = warm_start(supernet, source)
    warm = train_oneshot(supernet, data["train"], data["test_batches"], oneshot_cfg, choices, seed,
                         recal_batches=data["recal"])
    warm_subnets = [{**s, "oneshot_acc": warm.curves[c][-1]} for c, s in zip(choices, subnets)]
    target = float(np.mean([curve[-1] for curve in random_run.curves.values()]))
    return {"source_acc": source_curve[-1], "source_train_s": source_s[-1], "target_acc": target,
            "initialised": initialised,
            "random": _oneshot_stats(random_run, subnets, target), "warm": _oneshot_stats(warm, warm_subnets, target),
            "warm_oneshot_acc": [s["oneshot_acc"] for s in warm_subnets]}


def _correlations(subnets: list[dict[str, Any]]) -> dict[str, float]:
    one = [s["oneshot_acc"] for s in subnets]
    alone = [s["standalone_acc"] for s in subnets]
    kl = [s["kl"] for s in subnets]
    return {"kendall_tau": kendall_tau(one, alone), "spearman_rho": spearman_rho(one, alone),
            "kl_spearman_rho": spearman_rho(kl, alone)}


def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (std None for a single value, both None for none)."""
    if not len(values):
        return None, None
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), (float(arr.std(ddof=1)) if len(arr) > 1 else None)


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-subnet means over repeats, correlations of the mean columns, and tau/rho mean and std over repeats."""
    subnets = []
    for k, first in enumerate(runs[0]["subnets"]):
        entry: dict[str, Any] = {"choice": first["choice"], "ops": first["ops"], "params": first["params"],
                                 "flops_M": first["flops_M"]}
        for key in ("oneshot_acc", "oneshot_acc_running", "standalone_acc", "kl"):
            if key in first:
                entry[key], entry[f"{key}_std"] = _mean_std([run["subnets"][k][key] for run in runs])
        subnets.append(entry)
    repeats: dict[str, Any] = {"runs": runs}
    for key in ("kendall_tau", "spearman_rho", "kl_spearman_rho"):
        repeats[f"{key}_mean"], repeats[f"{key}_std"] = _mean_std([run[key] for run in runs])
    if len(runs) > 1:
        # how well one seed's stand-alone accuracies rank another's: the noise in the ground truth of one repeat
        alone = [[s["standalone_acc"] for s in run["subnets"]] for run in runs]
        taus = [kendall_tau(a, b) for a, b in itertools.combinations(alone, 2)]
        repeats["standalone_seed_tau_mean"], repeats["standalone_seed_tau_std"] = _mean_std(taus)
        # each repeat's one-shot accuracies against the seed-mean stand-alone accuracies, a less noisy ground truth
        mean_alone = [s["standalone_acc"] for s in subnets]
        for key, corr in (("kendall_tau", kendall_tau), ("spearman_rho", spearman_rho)):
            values = [corr([s["oneshot_acc"] for s in run["subnets"]], mean_alone) for run in runs]
            repeats[f"{key}_to_seed_mean_mean"], repeats[f"{key}_to_seed_mean_std"] = _mean_std(values)
    return {"subnets": subnets, **_correlations(subnets), "by_first_op": by_first_op(subnets), "repeats": repeats}


def _ranks(values: Sequence[float]) -> list[int]:
    return [rank_of(values, i) for i in range(len(values))]


def by_first_op(subnets: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per op of the first block: mean one-shot (also with the running BatchNorm statistics, when recalibrated) and
    stand-alone top-1, and the mean rank shift (one-shot rank minus stand-alone rank among all studied subnets;
    positive means one-shot ranks them too low)."""
    shift = np.subtract(_ranks([s["oneshot_acc"] for s in subnets]), _ranks([s["standalone_acc"] for s in subnets]))
    groups: dict[str, list[int]] = {}
    for k, s in enumerate(subnets):
        groups.setdefault(s["ops"][0], []).append(k)
    keys = [key for key in ("oneshot_acc", "oneshot_acc_running", "standalone_acc") if key in subnets[0]]
    return {op: {"subnets": len(ks), **{key: float(np.mean([subnets[k][key] for k in ks])) for key in keys},
                 "rank_shift": float(shift[ks].mean())} for op, ks in groups.items()}


def summarise_warm_start(runs: list[dict[str, Any]], source: Sequence[str]) -> dict[str, Any]:
    """Mean and std over repeats of the warm-start comparison, beside the per-repeat records."""
    summary: dict[str, Any] = {"from": list(source), "runs": [run["warm_start"] for run in runs]}
    for init in ("random", "warm"):
        for key in ("first_epoch_var", "kendall_tau", "spearman_rho", "time_to_target_s"):
            values = [run["warm_start"][init][key] for run in runs]
            reached = [v for v in values if v is not None]  # time to target: only the runs that reached it
            summary[f"{init}_{key}_mean"], summary[f"{init}_{key}_std"] = _mean_std(reached)
        summary[f"{init}_reached_target"] = sum(run["warm_start"][init]["time_to_target_s"] is not None
                                                for run in runs)
    summary["source_train_s_mean"] = _mean_std([run["warm_start"]["source_train_s"] for run in runs])[0]
    return summary


def _label(subnet: dict[str, Any]) -> str:
    return " > ".join(subnet["ops"])


def _pm(mean: float | None, std: float | None, digits: int = 2) -> str:
    if mean is None:
        return "-"
    return f"{mean:.{digits}f}" + (f" +- {std:.{digits}f}" if std is not None else "")


def format_table(summary: dict[str, Any], n_repeats: int) -> str:
    """The per-subnet table, the correlation lines and the per-first-op breakdown, as printed."""
    rows = [f"{'subnet':<32} {'params':>7} {'one-shot top-1':>16} {'stand-alone top-1':>18} {'KL to all-on':>16}"]
    for s in summary["subnets"]:
        rows.append(f"{_label(s):<32} {s['params']:>7} {_pm(s['oneshot_acc'], s['oneshot_acc_std']):>16} "
                    f"{_pm(s['standalone_acc'], s['standalone_acc_std']):>18} {_pm(s['kl'], s['kl_std'], 3):>16}")
    rep = summary["repeats"]
    pairs = len(summary["subnets"]) * (len(summary["subnets"]) - 1) // 2
    rows += [
        "",
        f"over {n_repeats} repeat(s): Kendall tau {_pm(rep['kendall_tau_mean'], rep['kendall_tau_std'])}, "
        f"Spearman rho {_pm(rep['spearman_rho_mean'], rep['spearman_rho_std'])}, "
        f"KL-vs-stand-alone Spearman rho {_pm(rep['kl_spearman_rho_mean'], rep['kl_spearman_rho_std'])}",
        f"on the repeat-mean columns: Kendall tau {summary['kendall_tau']:.2f}, Spearman rho "
        f"{summary['spearman_rho']:.2f}, KL Spearman rho {summary['kl_spearman_rho']:.2f}",
        f"({len(summary['subnets'])} subnets = {pairs} pairs: tau moves in steps of {2 / pairs:.2f}; "
        "negative KL rho means closer to the all-on network goes with higher stand-alone accuracy)",
    ]
    if "standalone_seed_tau_mean" in rep:
        rows += [f"stand-alone seed against seed: Kendall tau "
                 f"{_pm(rep['standalone_seed_tau_mean'], rep['standalone_seed_tau_std'])} (the noise of one repeat's "
                 "ground truth)",
                 f"each repeat's one-shot against the seed-mean stand-alone: Kendall tau "
                 f"{_pm(rep['kendall_tau_to_seed_mean_mean'], rep['kendall_tau_to_seed_mean_std'])}, Spearman rho "
                 f"{_pm(rep['spearman_rho_to_seed_mean_mean'], rep['spearman_rho_to_seed_mean_std'])}"]
    rows.append("by first op (rank shift = one-shot rank - stand-alone rank; > 0: one-shot ranks them too low):")
    for op, g in summary["by_first_op"].items():
        running = f" (running BN statistics {g['oneshot_acc_running']:.2f})" if "oneshot_acc_running" in g else ""
        rows.append(f"  {op:<14} {g['subnets']:>2} subnets: one-shot {g['oneshot_acc']:.2f}{running}, stand-alone "
                    f"{g['standalone_acc']:.2f}, rank shift {g['rank_shift']:+.1f}")
    return "\n".join(rows)


def format_warm_start(ws: dict[str, Any]) -> str:
    """The random-init against warm-start comparison, as printed."""
    rows = [f"warm start from {' > '.join(ws['from'])} (trained alone in {ws['source_train_s_mean']:.0f} s), "
            f"target: the random-init run's final mean one-shot top-1",
            f"{'init':<8} {'first-epoch var':>16} {'Kendall tau':>14} {'Spearman rho':>14} {'s to target':>14} reached"]
    for init in ("random", "warm"):
        rows.append(f"{init:<8} {_pm(ws[f'{init}_first_epoch_var_mean'], ws[f'{init}_first_epoch_var_std']):>16} "
                    f"{_pm(ws[f'{init}_kendall_tau_mean'], ws[f'{init}_kendall_tau_std']):>14} "
                    f"{_pm(ws[f'{init}_spearman_rho_mean'], ws[f'{init}_spearman_rho_std']):>14} "
                    f"{_pm(ws[f'{init}_time_to_target_s_mean'], ws[f'{init}_time_to_target_s_std'], 0):>14} "
                    f"{ws[f'{init}_reached_target']}/{len(ws['runs'])}")
    return "\n".join(rows)


def plant_repeat(args: argparse.Namespace, cfgs: tuple[TrainConfig, TrainConfig], ops: tuple[str, ...],
                 names: Sequence[str], seed: int, data: dict[str, Any]) -> list[dict[str, Any]]:
    """Train the subnet `names` alone, plant it (unfrozen, frozen or both) into a fresh SuperNet, train one-shot and
    rank the planted path among every subnet of the space at the plant (epoch 0) and after every epoch."""
    cfg, oneshot_cfg = cfgs
    choice = parse_choice(names, ops, args.blocks)
    space = enumerate_choices(args.blocks, len(ops))
    net = make_standalone(args, ops, data, choice, source_seed(seed))
    standalone_acc = train_standalone(net, data["train"], data["test_batches"], cfg, seed)[0][-1]
    records = []
    for frozen in {"no": [False], "yes": [True], "both": [False, True]}[args.freeze_planted]:
        start = time.time()
        supernet = make_supernet(args, ops, data, seed)
        plant(supernet, net, frozen)
        initial = score_subnets(supernet, space, data["test_batches"], data["recal"])
        run = train_oneshot(supernet, data["train"], data["test_batches"], oneshot_cfg, space, seed,
                            recal_batches=data["recal"])
        epochs = [list(initial.values())] + [[run.curves[c][e] for c in space] for e in range(oneshot_cfg.epochs)]
        planted = space.index(choice)
        ranks = [rank_of(scores, planted) for scores in epochs]
        best = max(space, key=lambda c: run.curves[c][-1])
        records.append({
            "seed": seed, "plant": [ops[k] for k in choice], "frozen": frozen, "standalone_acc": standalone_acc,
            "rank_at_plant": ranks[0], "ranks": ranks[1:], "planted_curve": [scores[planted] for scores in epochs],
            "best_curve": [max(scores) for scores in epochs], "best_at_end": [ops[k] for k in best],
            "first_at_end": ranks[-1] == 1,
            "lost_first_at": next((e for e, r in enumerate(ranks[1:], 1) if r > 1), None),
            "wall_s": time.time() - start,
        })
    return records


def summarise_plant(records: list[dict[str, Any]], num_subnets: int) -> dict[str, Any]:
    """Per plant and frozen setting: how many seeds end with the planted path first, final ranks, lost-first epochs."""
    groups: dict[tuple[str, bool], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((" > ".join(r["plant"]), r["frozen"]), []).append(r)
    table = [{"plant": key[0], "frozen": key[1], "seeds": len(rs), "first_at_end": sum(r["first_at_end"] for r in rs),
              "final_rank_mean": float(np.mean([r["ranks"][-1] for r in rs])),
              "lost_first_at": [r["lost_first_at"] for r in rs]} for key, rs in groups.items()]
    return {"subnets_ranked": num_subnets, "table": table, "runs": records}


def format_plant(summary: dict[str, Any]) -> str:
    """Per seed the planted path's rank by epoch, then the per-plant summary, as printed."""
    n = summary["subnets_ranked"]
    rows = [f"planted path's one-shot rank among {n} subnets (epoch 0: right after planting)",
            f"{'plant':<42} {'frozen':>6} {'seed':>4} {'alone':>6} {'ranks by epoch 0..E':<24} best at end"]
    for r in summary["runs"]:
        ranks = " ".join(str(x) for x in [r["rank_at_plant"], *r["ranks"]])
        rows.append(f"{' > '.join(r['plant']):<42} {'yes' if r['frozen'] else 'no':>6} {r['seed']:>4} "
                    f"{r['standalone_acc']:>6.2f} {ranks:<24} {' > '.join(r['best_at_end'])}")
    rows.append("")
    for t in summary["table"]:
        lost = ", ".join("never" if e is None else f"epoch {e}" for e in t["lost_first_at"])
        rows.append(f"{t['plant']} ({'frozen' if t['frozen'] else 'trained on'}): first at the end in "
                    f"{t['first_at_end']}/{t['seeds']} seeds, mean final rank {t['final_rank_mean']:.1f}; "
                    f"lost first place: {lost}")
    return "\n".join(rows)


def load_standalone(path: str, args: argparse.Namespace, choices: list[Choice]) -> list[list[dict[str, Any]]]:
    """The stand-alone records of every repeat from an earlier results.json, after checking that its stand-alone
    setup matches this run's (STANDALONE_KEYS, the candidate ops and the studied subnets)."""
    try:
        earlier = json.loads(Path(path).read_text())
        config, runs = earlier["config"], earlier["repeats"]["runs"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"--standalone-from {path}: not a readable results.json of this study ({err})") from None
    defaults = vars(parse_args([]))
    differ = [k for k in STANDALONE_KEYS if config.get(k, defaults[k]) != getattr(args, k)]
    if validate_ops(config.get("ops", DEFAULT_OPS)) != validate_ops(args.ops):
        differ.append("ops")
    if differ:
        raise UserError(f"--standalone-from {path}: its stand-alone setup differs in {', '.join(differ)}")
    if len(runs) < args.repeats:
        raise UserError(f"--standalone-from {path} holds {len(runs)} repeat(s), this run needs {args.repeats}")
    keys = ("choice", "ops", "params", "flops_M", "standalone_acc", "standalone_curve")
    subnets = [[{k: s[k] for k in keys} for s in run["subnets"]] for run in runs[:args.repeats]]
    if any([tuple(s["choice"]) for s in run] != choices for run in subnets):
        raise UserError(f"--standalone-from {path} studied other subnets")
    return subnets


def _plot_curves(runs: list[dict[str, Any]], key: str, title: str, path: Path) -> None:
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for k, subnet in enumerate(runs[0]["subnets"]):
        curves = np.array([run["subnets"][k][key] for run in runs])
        epochs = np.arange(1, curves.shape[1] + 1)
        ax.errorbar(epochs, curves.mean(axis=0), yerr=curves.std(axis=0) if len(runs) > 1 else None,
                    marker="o", capsize=3, label=_label(subnet))
    ax.set(xlabel="epoch", ylabel="test top-1 (%)", title=title, xticks=epochs)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _plot_scatter(summary: dict[str, Any], x_key: str, x_label: str, rho: float, path: Path) -> None:
    fig = Figure(figsize=(5, 4))
    ax = fig.subplots()
    for run in summary["repeats"]["runs"]:
        ax.scatter([s[x_key] for s in run["subnets"]], [s["standalone_acc"] for s in run["subnets"]],
                   alpha=0.3, color="grey")
    for s in summary["subnets"]:
        ax.scatter(s[x_key], s["standalone_acc"], color="C0")
        ax.annotate(_label(s), (s[x_key], s["standalone_acc"]), fontsize="x-small")
    ax.set(xlabel=x_label, ylabel="stand-alone test top-1 (%)", title=f"Spearman rho {rho:.2f} (repeat means)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def write_plots(summary: dict[str, Any], out: Path) -> None:
    """One-shot and stand-alone curves per subnet, and stand-alone accuracy against one-shot accuracy and KL."""
    runs = summary["repeats"]["runs"]
    _plot_curves(runs, "oneshot_curve", "one-shot test top-1 per subnet", out / "oneshot_curves.png")
    _plot_curves(runs, "standalone_curve", "stand-alone test top-1", out / "standalone_curves.png")
    _plot_scatter(summary, "oneshot_acc", "one-shot test top-1 (%)", summary["spearman_rho"],
                  out / "oneshot_vs_standalone.png")
    _plot_scatter(summary, "kl", "symmetrised KL to the all-on network", summary["kl_spearman_rho"],
                  out / "kl_vs_standalone.png")


def json_safe(value: Any) -> Any:
    """NaN (an undefined correlation) as null, so results.json stays strict JSON."""
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


def check_modes(args: argparse.Namespace) -> None:
    if args.threads <= 0:
        raise UserError(f"--threads must be positive, got {args.threads}")
    check_head(args.head_grid, args.head_hidden, args.head_dropout)
    if args.bn_recal < 0 or args.bn_recal == 1:
        raise UserError(f"--bn-recal must be 0 (off) or at least 2 images, got {args.bn_recal}")
    if args.plant and (args.warm_start or args.standalone_from or args.subnets):
        raise UserError("--plant ranks among every subnet and trains only the planted ones: it takes no "
                        "--warm-start, --standalone-from or --subnets")
    if args.freeze_planted != "no" and not args.plant:
        raise UserError("--freeze-planted needs --plant")


def load_data(args: argparse.Namespace, cfg: TrainConfig) -> dict[str, Any]:
    train = load_dataset(args.dataset, args.data_root, train=True)
    test = load_dataset(args.dataset, args.data_root, train=False)
    train_set = _limited(train.dataset, args.limit_train, "--limit-train", args.seed)
    test_set = _limited(test.dataset, args.limit_test, "--limit-test", args.seed)
    recal: Batches | None = None
    if args.bn_recal:
        recal = shuffled_batches(train_set, args.bn_recal, cfg.eval_batch_size, args.seed)
    return {"train": train_set, "in_channels": train.in_channels, "num_classes": train.num_classes,
            "size": train.size, "train_batches": fixed_batches(train_set, cfg.eval_batch_size),
            "test_batches": fixed_batches(test_set, cfg.eval_batch_size), "recal": recal}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    start = time.time()
    args = parse_args(argv)
    cfgs = train_configs(args)
    ops = validate_ops(args.ops)
    choices = study_choices(args, len(ops))
    check_modes(args)
    for names in [*(args.plant or []), *([args.warm_start] if args.warm_start else [])]:
        parse_choice(names, ops, args.blocks)
    standalone = load_standalone(args.standalone_from, args, choices) if args.standalone_from else None
    torch.set_num_threads(args.threads)
    data = load_data(args, cfgs[0])
    seeds = [args.seed + r for r in range(args.repeats)]
    print(f"{args.dataset}: {len(data['train'])} train / {sum(len(y) for _, y in data['test_batches'])} test images; "
          f"sharing {args.sharing}, {cfgs[0].epochs} stand-alone / {cfgs[1].epochs} one-shot epochs, "
          f"{args.repeats} repeat(s)")
    out = Path(args.out)
    if args.plant:
        records = [record for seed in seeds for names in args.plant
                   for record in plant_repeat(args, cfgs, ops, names, seed, data)]
        results: dict[str, Any] = {"plant": summarise_plant(records, len(enumerate_choices(args.blocks, len(ops))))}
        print(format_plant(results["plant"]))
        out.mkdir(parents=True, exist_ok=True)
    else:
        print(f"{len(choices)} subnets" + (f", stand-alone results from {args.standalone_from}" if standalone else ""))
        runs = [run_repeat(args, cfgs, ops, choices, seed, data, standalone[r] if standalone else None)
                for r, seed in enumerate(seeds)]
        results = summarise(runs)
        print(format_table(results, args.repeats))
        if args.warm_start:
            results["warm_start"] = summarise_warm_start(runs, args.warm_start)
            print(format_warm_start(results["warm_start"]))
        out.mkdir(parents=True, exist_ok=True)
        write_plots(results, out)
    results.update(config=vars(args), wall_s=time.time() - start)
    (out / "results.json").write_text(json.dumps(json_safe(results), indent=2))
    print(f"wall time {results['wall_s']:.0f} s; results in {out}")
    return results

