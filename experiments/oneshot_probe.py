"""One-seed probe of a one-shot variant against the stand-alone results of an earlier one-shot study.

Trains the chain SuperNet one-shot once, with the study's flags (--sampling, --path-dropout, --oneshot-epochs,
--bn-recal, --warm-start, ...) and the seed of repeat --probe-seed of the earlier run, scores the studied subnets on
the first --probe-test test images after every epoch, and prints Kendall tau against that repeat's stand-alone
accuracies and against their mean over all repeats of the earlier run (a less noisy ground truth), the mean one-shot
top-1 and, per first op, one-shot against stand-alone top-1 (with --bn-recal also with the running BatchNorm
statistics). A minute instead of a study's quarter of an hour, to find which change matters before measuring it with
--repeats 3; writes OUT/probe.json.

    python experiments/oneshot_probe.py --standalone-from runs/study/results.json STUDY-FLAGS --sampling fair
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from nas.benchmarks import oneshot_study as study
from nas.benchmarks.oneshot import Batches, score_subnets, train_oneshot, train_standalone
from nas.core.errors import UserError, exit_on_user_error
from nas.core.metrics import kendall_tau
from search_spaces.chain import parse_choice, validate_ops, warm_start


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, argparse.Namespace]:
    """The probe's own flags, and the study's flags (which must include --standalone-from)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--probe-seed", type=int, default=0, help="which repeat of the earlier run to probe")
    p.add_argument("--probe-test", type=int, default=1000, help="score on the first N test images (0: all)")
    probe, rest = p.parse_known_args(argv)
    args = study.parse_args(rest)
    if not args.standalone_from:
        raise UserError("the probe needs --standalone-from RESULTS of an earlier study run")
    if probe.probe_test < 0:
        raise UserError(f"--probe-test must be 0 (all) or positive, got {probe.probe_test}")
    return probe, args


def _repeats_in(path: str) -> int:
    try:
        return len(json.loads(Path(path).read_text())["repeats"]["runs"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"--standalone-from {path}: not a readable results.json of this study ({err})") from None


def _first_images(batches: Batches, count: int, batch_size: int) -> Batches:
    """The first `count` images of `batches` (all for 0), re-batched."""
    if not count:
        return batches
    x, y = (torch.cat([b[i] for b in batches])[:count] for i in (0, 1))
    return list(zip(x.split(batch_size), y.split(batch_size)))


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    probe, args = parse_args(argv)
    args.repeats = _repeats_in(args.standalone_from)
    if not 0 <= probe.probe_seed < args.repeats:
        raise UserError(f"--probe-seed must lie in [0, {args.repeats}), the repeats of {args.standalone_from}")
    cfg, oneshot_cfg = study.train_configs(args)
    ops = validate_ops(args.ops)
    choices = study.study_choices(args, len(ops))
    study.check_modes(args)
    standalone = study.load_standalone(args.standalone_from, args, choices)
    torch.set_num_threads(args.threads)
    data = study.load_data(args, cfg)
    test = _first_images(data["test_batches"], probe.probe_test, cfg.eval_batch_size)
    seed = args.seed + probe.probe_seed
    start = time.time()
    supernet = study.make_supernet(args, ops, data, seed)
    if args.warm_start:
        source = study.make_standalone(args, ops, data, parse_choice(args.warm_start, ops, args.blocks),
                                   study.source_seed(seed))
        train_standalone(source, data["train"], test, cfg, seed)
        warm_start(supernet, source)
    run = train_oneshot(supernet, data["train"], test, oneshot_cfg, choices, seed, recal_batches=data["recal"])
    alone = [s["standalone_acc"] for s in standalone[probe.probe_seed]]
    mean_alone = np.mean([[s["standalone_acc"] for s in rep] for rep in standalone], axis=0).tolist()
    epochs = [[run.curves[c][e] for c in choices] for e in range(oneshot_cfg.epochs)]
    subnets = [{"ops": s["ops"], "oneshot_acc": run.curves[c][-1], "standalone_acc": a}
               for c, s, a in zip(choices, standalone[probe.probe_seed], mean_alone)]
    if data["recal"]:
        running = score_subnets(supernet, choices, test)
        subnets = [{**s, "oneshot_acc_running": running[c]} for c, s in zip(choices, subnets)]
    result = {"seed": seed, "test_images": sum(len(y) for _, y in test),
              "mean_oneshot_acc": [float(np.mean(e)) for e in epochs],
              "oneshot_acc_std": [float(np.std(e, ddof=1)) for e in epochs], "train_s": run.train_s,
              "kendall_tau": [kendall_tau(e, alone) for e in epochs],
              "kendall_tau_to_seed_mean": [kendall_tau(e, mean_alone) for e in epochs],
              "by_first_op": study.by_first_op(subnets), "subnets": subnets, "wall_s": time.time() - start}
    print(format_probe(result))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "probe.json").write_text(json.dumps(study.json_safe({**result, "config": {**vars(args), **vars(probe)}}),
                                               indent=2))
    return result


def format_probe(result: dict[str, Any]) -> str:
    """Per epoch the mean one-shot top-1 and tau, then the per-first-op breakdown, as printed."""
    rows = [f"seed {result['seed']}, one-shot scored on {result['test_images']} test images",
            f"{'epoch':>5} {'train s':>8} {'one-shot mean +- std over subnets':>34} {'tau (this seed)':>16} "
            f"{'tau (seed mean)':>16}"]
    for e, row in enumerate(zip(result["train_s"], result["mean_oneshot_acc"], result["oneshot_acc_std"],
                                result["kendall_tau"], result["kendall_tau_to_seed_mean"]), 1):
        seconds, acc, std, tau, tau_mean = row
        rows.append(f"{e:>5} {seconds:>8.1f} {f'{acc:.2f} +- {std:.2f}':>34} {tau:>16.2f} {tau_mean:>16.2f}")
    rows.append("by first op (stand-alone: mean over the earlier run's repeats):")
    for op, g in result["by_first_op"].items():
        running = f" (running BN statistics {g['oneshot_acc_running']:.2f})" if "oneshot_acc_running" in g else ""
        rows.append(f"  {op:<14} one-shot {g['oneshot_acc']:.2f}{running}, stand-alone {g['standalone_acc']:.2f}")
    rows.append(f"wall time {result['wall_s']:.0f} s")
    return "\n".join(rows)


if __name__ == "__main__":
    with exit_on_user_error():
        main()
