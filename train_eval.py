"""Train a genotype's eval network from scratch (DARTS / P-DARTS recipe); multi-GPU through torchrun.

    python train_eval.py --genotype PDARTS --dataset cifar10 [-c experiments/eval_cifar10.yaml] [--set a.b=c ...]
    torchrun --nproc_per_node=4 train_eval.py --genotype runs/search-x/genotype.json
    python train_eval.py --resume runs/eval-PDARTS-20250101-120000
    python train_eval.py --genotype PDARTS --dataset imagenet -c experiments/eval_imagenet.yaml --set data.root=DIR

Exit codes: 0 done, 1 the loss became NaN/inf (the last good checkpoint stays), 2 bad input.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from nas.core.errors import OneLineParser, exit_on_user_error
from nas.engine.trainer import NonFiniteLoss, run_eval

# Short options and the config keys they set.
SHORT_FORMS = {"dataset": "data.dataset", "epochs": "train.epochs", "batch_size": "train.batch_size",
               "seed": "run.seed"}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = OneLineParser(prog="train_eval.py", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--genotype", help="shipped name (PDARTS, DARTS_V2, ...), a record .json or 'Genotype(...)'")
    parser.add_argument("-c", "--config", help="YAML config (see experiments/eval_*.yaml); defaults: CIFAR-10 recipe")
    parser.add_argument("--run-dir", help="where to write checkpoints, TensorBoard and the record "
                                          "(default: <run.out_dir>/eval-<genotype>-<time>)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="config overrides, e.g. model.C=16 train.lr=0.05")
    parser.add_argument("--dataset", help="short for --set data.dataset=... (cifar10, cifar100, imagenet: an "
                                          "ImageFolder root with train/ and val/, trained with the ImageNet network)")
    parser.add_argument("--epochs", type=int, help="short for --set train.epochs=...")
    parser.add_argument("--batch-size", type=int, help="short for --set train.batch_size=... (global batch)")
    parser.add_argument("--seed", type=int, help="short for --set run.seed=...")
    return parser.parse_args(argv)


def overrides_of(args: argparse.Namespace) -> list[str]:
    """--set assignments followed by the short forms (so those win)."""
    short = [f"{key}={json.dumps(getattr(args, name))}" for name, key in SHORT_FORMS.items()
             if getattr(args, name) is not None]
    return list(args.overrides) + short


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of `train_eval.py` and `nas-train`."""
    with exit_on_user_error():
        args = parse_args(argv)
        try:
            run_eval(args.genotype, args.config, args.run_dir, args.resume, overrides_of(args))
        except NonFiniteLoss as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(1) from None


if __name__ == "__main__":
    main()
