"""Does one-shot accuracy predict stand-alone accuracy? (Bender et al. 2018, on a chain SuperNet.)

For each repeat (seed): train the chain SuperNet one-shot (one subnet per minibatch) and record every
studied subnet's test top-1 after each epoch; measure each subnet's mean symmetrised KL divergence to
the all-on reference network on the training set; train every studied subnet alone for the same
epochs. Report the table, Kendall tau / Spearman rho between one-shot and stand-alone accuracy, the
Spearman rho between KL and stand-alone accuracy, plots, and OUT/results.json.

    python experiments/oneshot_vs_standalone.py --dataset mnist --data-root ../shared/data/mnist --repeats 3
"""
from __future__ import annotations

import argparse
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

from nas.data import DATASETS, load_dataset
from nas.errors import UserError, exit_on_user_error
from nas.metrics import count_parameters, flops_millions, kendall_tau, spearman_rho, symmetrised_kl
from nas.oneshot import LR_SCHEDULES, OPTIMIZERS, TrainConfig, fixed_batches, predict, train_oneshot, train_standalone
from search_spaces.chain import (
    DEFAULT_OPS,
    HEAD_GRID,
    SHARING_MODES,
    ChainSuperNet,
    Choice,
    StandaloneNet,
    enumerate_choices,
    validate_ops,
)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="mnist", choices=DATASETS[:3])
    p.add_argument("--data-root", default="data")
    p.add_argument("--sharing", default="sum", choices=SHARING_MODES)
    p.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    p.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    p.add_argument("--optimizer", default=TrainConfig.optimizer, choices=OPTIMIZERS)
    p.add_argument("--lr", type=float, default=TrainConfig.lr)
    p.add_argument("--lr-schedule", default=TrainConfig.lr_schedule, choices=LR_SCHEDULES)
    p.add_argument("--path-dropout", type=float, default=TrainConfig.path_dropout,
                   help="> 0: one-shot trains the all-on network with this op dropout instead of one subnet a batch")
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


def _train_config(args: argparse.Namespace) -> TrainConfig:
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
                      lr_schedule=args.lr_schedule, path_dropout=args.path_dropout)
    cfg.validate()
    return cfg


def _study_choices(args: argparse.Namespace, num_ops: int) -> list[Choice]:
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


def run_repeat(args: argparse.Namespace, cfg: TrainConfig, ops: tuple[str, ...], choices: list[Choice],
               seed: int, data: dict[str, Any]) -> dict[str, Any]:
    """One seed: one-shot curves, KL to the all-on network, stand-alone curves, and their correlations."""
    start = time.time()
    torch.manual_seed(seed)
    supernet = _channels_last(ChainSuperNet(data["in_channels"], data["num_classes"], args.filters, args.blocks, ops,
                                            args.sharing, args.head_grid))
    oneshot = train_oneshot(supernet, data["train"], data["test_batches"], cfg, choices, seed)
    reference = predict(supernet, data["train_batches"])
    kl = {c: symmetrised_kl(predict(supernet, data["train_batches"], path=c), reference).mean().item()
          for c in choices}
    subnets = []
    for i, choice in enumerate(choices):
        torch.manual_seed(seed * 1_000_003 + i)
        net = _channels_last(StandaloneNet(choice, data["in_channels"], data["num_classes"], args.filters, ops,
                                           args.head_grid))
        curve = train_standalone(net, data["train"], data["test_batches"], cfg, seed)
        subnets.append({
            "choice": list(choice),
            "ops": [ops[k] for k in choice],
            "params": count_parameters(net),
            "flops_M": flops_millions(net, (1, data["in_channels"], data["size"], data["size"])),
            "oneshot_acc": oneshot[choice][-1],
            "standalone_acc": curve[-1],
            "kl": kl[choice],
            "oneshot_curve": oneshot[choice],
            "standalone_curve": curve,
        })
    return {"seed": seed, "subnets": subnets, **_correlations(subnets), "wall_s": time.time() - start}


def _correlations(subnets: list[dict[str, Any]]) -> dict[str, float]:
    one = [s["oneshot_acc"] for s in subnets]
    alone = [s["standalone_acc"] for s in subnets]
    kl = [s["kl"] for s in subnets]
    return {"kendall_tau": kendall_tau(one, alone), "spearman_rho": spearman_rho(one, alone),
            "kl_spearman_rho": spearman_rho(kl, alone)}


def _mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value)."""
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), (float(arr.std(ddof=1)) if len(arr) > 1 else None)


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-subnet means over repeats, correlations of the mean columns, and tau/rho mean and std over repeats."""
    subnets = []
    for k, first in enumerate(runs[0]["subnets"]):
        entry: dict[str, Any] = {"choice": first["choice"], "ops": first["ops"], "params": first["params"],
                                 "flops_M": first["flops_M"]}
        for key in ("oneshot_acc", "standalone_acc", "kl"):
            entry[key], entry[f"{key}_std"] = _mean_std([run["subnets"][k][key] for run in runs])
        subnets.append(entry)
    repeats: dict[str, Any] = {"runs": runs}
    for key in ("kendall_tau", "spearman_rho", "kl_spearman_rho"):
        repeats[f"{key}_mean"], repeats[f"{key}_std"] = _mean_std([run[key] for run in runs])
    return {"subnets": subnets, **_correlations(subnets), "repeats": repeats}


def _label(subnet: dict[str, Any]) -> str:
    return " > ".join(subnet["ops"])


def format_table(summary: dict[str, Any], n_repeats: int) -> str:
    """The per-subnet table and the correlation lines, as printed."""
    def pm(mean: float, std: float | None, digits: int = 2) -> str:
        return f"{mean:.{digits}f}" + (f" +- {std:.{digits}f}" if std is not None else "")

    rows = [f"{'subnet':<32} {'params':>7} {'one-shot top-1':>16} {'stand-alone top-1':>18} {'KL to all-on':>16}"]
    for s in summary["subnets"]:
        rows.append(f"{_label(s):<32} {s['params']:>7} {pm(s['oneshot_acc'], s['oneshot_acc_std']):>16} "
                    f"{pm(s['standalone_acc'], s['standalone_acc_std']):>18} {pm(s['kl'], s['kl_std'], 3):>16}")
    rep = summary["repeats"]
    pairs = len(summary["subnets"]) * (len(summary["subnets"]) - 1) // 2
    rows += [
        "",
        f"over {n_repeats} repeat(s): Kendall tau {pm(rep['kendall_tau_mean'], rep['kendall_tau_std'])}, "
        f"Spearman rho {pm(rep['spearman_rho_mean'], rep['spearman_rho_std'])}, "
        f"KL-vs-stand-alone Spearman rho {pm(rep['kl_spearman_rho_mean'], rep['kl_spearman_rho_std'])}",
        f"on the repeat-mean columns: Kendall tau {summary['kendall_tau']:.2f}, Spearman rho "
        f"{summary['spearman_rho']:.2f}, KL Spearman rho {summary['kl_spearman_rho']:.2f}",
        f"({len(summary['subnets'])} subnets = {pairs} pairs: tau moves in steps of {2 / pairs:.2f}; "
        "negative KL rho means closer to the all-on network goes with higher stand-alone accuracy)",
    ]
    return "\n".join(rows)


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


def _json_safe(value: Any) -> Any:
    """NaN (an undefined correlation) as null, so results.json stays strict JSON."""
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    start = time.time()
    args = parse_args(argv)
    cfg = _train_config(args)
    ops = validate_ops(args.ops)
    choices = _study_choices(args, len(ops))
    if args.threads <= 0:
        raise UserError(f"--threads must be positive, got {args.threads}")
    torch.set_num_threads(args.threads)
    train = load_dataset(args.dataset, args.data_root, train=True)
    test = load_dataset(args.dataset, args.data_root, train=False)
    train_set = _limited(train.dataset, args.limit_train, "--limit-train", args.seed)
    test_set = _limited(test.dataset, args.limit_test, "--limit-test", args.seed)
    data = {"train": train_set, "in_channels": train.in_channels, "num_classes": train.num_classes,
            "size": train.size, "train_batches": fixed_batches(train_set, cfg.eval_batch_size),
            "test_batches": fixed_batches(test_set, cfg.eval_batch_size)}
    print(f"{args.dataset}: {len(train_set)} train / {len(test_set)} test images; "
          f"{len(choices)} subnets, sharing {args.sharing}, {cfg.epochs} epochs, {args.repeats} repeat(s)")
    runs = [run_repeat(args, cfg, ops, choices, args.seed + r, data) for r in range(args.repeats)]
    summary = summarise(runs)
    print(format_table(summary, args.repeats))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_plots(summary, out)
    results = {**summary, "config": vars(args), "wall_s": time.time() - start}
    (out / "results.json").write_text(json.dumps(_json_safe(results), indent=2))
    print(f"wall time {results['wall_s']:.0f} s; results and plots in {out}")
    return results


if __name__ == "__main__":
    with exit_on_user_error():
        main()
