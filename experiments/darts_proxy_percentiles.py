"""Where the published DARTS-space cells fall among random ones, by each training-free estimator.

The 7 published genotypes shipped in genotypes/ (NASNet, AmoebaNet, DARTS_V1, DARTS_V2, PDARTS, PC_DARTS_cifar,
PC_DARTS_image) and `--random` genotypes drawn by the DARTS space's `random_architecture` (per node two distinct
inputs, each with a uniformly drawn non-none op; seed `--seed`) are built as the CIFAR eval network (`--C`,
`--layers`, no auxiliary head), each initialised with torch.manual_seed(--seed), and scored on one batch of
`--batch-size` whole-CIFAR-10 training images (the same batch for all). A published cell's percentile for an
estimator is the share of the random cells that score below it (ties count half), in percent. The rank ensemble
of `--ensemble` (nas/core/estimators/ensemble.py) is reported the same way: a cell's ensemble score is its sum of
log rank fractions among the random cells. `--genotype LABEL=SPEC` (repeatable; SPEC a shipped name, a record JSON
or a `Genotype(...)` string) places your own cells beside the published ones, e.g. a search's result.

Every scored genotype is appended to OUT/rows.csv at once (nas/benchmarks/score_log.py), so a killed run resumes;
OUT/random_genotypes.txt holds the random genotypes, one per line (label `random_0000` is the first line), which
`nas-proxy` reads. OUT/results.json: `{estimator: {random_median, cpu_s_per_genotype, published: {name: {score,
percentile}}}}` (`ensemble` among them) and the settings.

    python experiments/darts_proxy_percentiles.py --out OUT [--random 1000] [--estimators all] [--smoke]
        [--ensemble synflow,params,jacob_cov] [--genotype found=runs/proxy_darts/genotype.json]
"""
from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from nas.benchmarks.score_log import ScoreLog, write_text_atomic
from nas.core.data import load_dataset
from nas.core.errors import OneLineParser, UserError, exit_on_user_error
from nas.core.estimators.batches import image_batches
from nas.core.estimators.ensemble import DEFAULT_MEMBERS, OnlineRankEnsemble
from nas.core.estimators.registry import parse_names, score_all
from search_spaces.darts.genotype import load_genotype
from search_spaces.registry import space_class

PUBLISHED = ("NASNet", "AmoebaNet", "DARTS_V1", "DARTS_V2", "PDARTS", "PC_DARTS_cifar", "PC_DARTS_image")
SMOKE = {"random": 6, "C": 4, "layers": 2, "batch_size": 8}


def parse_args(argv: Sequence[str] | None) -> Any:
    p = OneLineParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder of rows.csv, random_genotypes.txt and results.json")
    p.add_argument("--random", type=int, default=1000, help="random genotypes to compare with")
    p.add_argument("--estimators", default="all", help="comma-separated estimator names, or all")
    p.add_argument("--seed", type=int, default=0, help="the random genotypes', the initialisation's and the batch's")
    p.add_argument("--C", type=int, default=16, help="the eval network's width")
    p.add_argument("--layers", type=int, default=8, help="the eval network's cells")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--root", default="~/.cache/pdarts-nas/cifar10", help="data.root of the cifar10_jpeg batches")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--ensemble", default=",".join(DEFAULT_MEMBERS), help="the rank ensemble's estimators")
    p.add_argument("--genotype", action="append", default=[], metavar="LABEL=SPEC",
                   help="a cell of your own to place beside the published ones (repeatable)")
    p.add_argument("--smoke", action="store_true", help="6 random genotypes, a C=4 network of 2 cells, batch 8")
    args = p.parse_args(argv)
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, value)
    for key in ("random", "C", "layers", "batch_size", "threads"):
        if getattr(args, key) < 1:
            raise UserError(f"--{key.replace('_', '-')} must be >= 1, got {getattr(args, key)}")
    args.estimators, args.ensemble = parse_names(args.estimators), parse_names(args.ensemble)
    if not set(args.ensemble) <= set(args.estimators):
        raise UserError(f"the ensemble's estimators {args.ensemble} must be among --estimators {args.estimators}")
    args.extra = [labelled_genotype(spec) for spec in args.genotype]
    return args


def labelled_genotype(text: str) -> tuple[str, Any]:
    """(label, genotype) from LABEL=SPEC; a label that names a published or random cell is refused."""
    label, sep, spec = text.partition("=")
    if not sep or not label.isidentifier():
        raise UserError(f"--genotype {text!r}: write LABEL=SPEC, e.g. found=runs/x/genotype.json")
    if label in PUBLISHED or label.startswith("random_"):
        raise UserError(f"--genotype label {label!r} is taken by a published or random cell; choose another")
    return label, load_genotype(spec)


def random_genotypes(count: int, seed: int) -> list[Any]:
    """`count` genotypes of the DARTS space's uniform random draw."""
    rng, space = random.Random(seed), space_class("darts")
    return [space.random_architecture(rng) for _ in range(count)]


def percentile(score: float, others: Sequence[float]) -> float:
    """The share (%) of `others` below `score`, ties counting half."""
    values = np.asarray(others, dtype=float)
    return float(100.0 * (np.sum(values < score) + 0.5 * np.sum(values == score)) / len(values))


def placed(scores: dict[str, float], randoms: list[float]) -> dict[str, Any]:
    """The random cells' median and each labelled cell's score and percentile among them."""
    return {"random_median": float(np.median(randoms)) if randoms else None,
            "published": {label: {"score": score, "percentile": percentile(score, randoms) if randoms else None}
                          for label, score in scores.items()}}


def summarise(rows: list[dict[str, Any]], estimators: Sequence[str], ensemble: Sequence[str],
              labels: Sequence[str]) -> dict[str, Any]:
    """Per estimator and for the ensemble: the random cells' median, each of `labels`' score and percentile, the
    CPU seconds per genotype."""
    by_label = {row["arch"]: row for row in rows}
    randoms = [row for label, row in by_label.items() if label.startswith("random_")]
    labels = [label for label in labels if label in by_label]
    out: dict[str, Any] = {}
    for name in estimators:
        out[name] = {**placed({label: by_label[label][name] for label in labels}, [row[name] for row in randoms]),
                     "cpu_s_per_genotype": float(np.mean([row[f"cpu_{name}"] for row in by_label.values()]))}
    among = OnlineRankEnsemble(ensemble)  # the random cells' ranks; every cell is scored against them alone
    for row in randoms:
        among.add(row)
    out["ensemble"] = {**placed({label: among.score(by_label[label]) for label in labels},
                                [among.score(row) for row in randoms]),
                       "members": list(ensemble),
                       "cpu_s_per_genotype": sum(out[name]["cpu_s_per_genotype"] for name in ensemble)}
    return out


def run(args: Any) -> dict[str, Any]:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    randoms = random_genotypes(args.random, args.seed)
    write_text_atomic(out / "random_genotypes.txt", "".join(f"{g}\n" for g in randoms))
    archs = [(name, load_genotype(name)) for name in PUBLISHED] + args.extra
    archs += [(f"random_{i:04d}", g) for i, g in enumerate(randoms)]
    log = ScoreLog(out / "rows.csv", args.estimators)
    done = {row["arch"] for row in log.rows() if row["seed"] == args.seed}
    data = load_dataset("cifar10_jpeg", args.root, train=True)
    batches = image_batches(data.dataset, 1, args.batch_size, args.seed)
    space, start = space_class("darts"), time.time()
    for i, (label, arch) in enumerate(archs, start=1):
        if label in done:
            continue
        torch.manual_seed(args.seed)
        network = space.eval_network(arch, data, C=args.C, layers=args.layers, auxiliary=False)
        log.append(label, args.seed, score_all(args.estimators, network, batches))
        if i % 50 == 0:
            print(f"{i}/{len(archs)} genotypes ({time.time() - start:.0f} s)", flush=True)
    results = {"settings": {k: getattr(args, k) for k in ("random", "seed", "C", "layers", "batch_size")},
               "estimators": summarise([r for r in log.rows() if r["seed"] == args.seed], args.estimators,
                                       args.ensemble, [*PUBLISHED, *(label for label, _ in args.extra)])}
    write_text_atomic(out / "results.json", json.dumps(results, indent=1) + "\n")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    with exit_on_user_error():
        args = parse_args(argv)
        results = run(args)
    names = list(results["estimators"])
    print("percentile among random genotypes (%)")
    print(f"{'genotype':16s}" + "".join(f"{name:>10s}" for name in names))
    for label in results["estimators"]["ensemble"]["published"]:
        print(f"{label:16s}" + "".join(f"{results['estimators'][n]['published'][label]['percentile']:10.1f}"
                                       for n in names))
    print(f"results: {Path(args.out) / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
