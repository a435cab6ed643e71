"""nas-proxy: score architectures with training-free estimators (nas/core/estimators) at initialisation.

An architecture is a shipped genotype name (PDARTS), a `Genotype(...)` string, a record file (.json, any space), an
NB201 architecture string (|nor_conv_3x3~0|+...), or a text file holding any of these, one per line (# comments).
Each is built as its space's evaluation network (NB201: C=16, N=5; DARTS: C=16, 8 layers unless --C/--layers say
otherwise, no auxiliary head), initialised with --seed, and scored on --batches batches of --batch-size training
images drawn with the same seed.

    nas-proxy PDARTS '|nor_conv_3x3~0|+|...|' cells.txt -e nwot,synflow,params [--json]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Sequence

import torch

from nas.core.data import load_dataset
from nas.core.errors import OneLineParser, UserError, exit_on_user_error
from nas.core.estimators.batches import image_batches
from nas.core.estimators.ensemble import DEFAULT_MEMBERS
from nas.core.estimators.registry import parse_names, score_all
from nas.core.records import read_record
from search_spaces.darts.genotype import load_genotype
from search_spaces.registry import space_class

NETWORK_DEFAULTS: dict[str, dict[str, Any]] = {  # per space: the eval network's settings unless --C/--layers
    "nb201": {"C": 16, "layers": 5},
    "darts": {"C": 16, "layers": 8, "auxiliary": False},
}


def _parse(argv: Sequence[str] | None) -> Any:
    p = OneLineParser(prog="nas-proxy", description=__doc__.split("\n\n")[0])
    p.add_argument("archs", nargs="+", help="genotype names, Genotype(...) strings, record files, NB201 strings, "
                                            "or text files of them")
    p.add_argument("-e", "--estimators", default=",".join(DEFAULT_MEMBERS),
                   help="comma-separated names, or all (default: the default ensemble's members)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--seed", type=int, default=0, help="the initialisation's and the batches' seed")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--batches", type=int, default=1)
    p.add_argument("--dataset", default="cifar10_jpeg")
    p.add_argument("--root", default="~/.cache/pdarts-nas/cifar10", help="the dataset's data.root")
    p.add_argument("--C", type=int, help="the network's width (default per space)")
    p.add_argument("--layers", type=int, help="NB201: cells per stage; DARTS: cells (default per space)")
    args = p.parse_args(argv)
    args.estimators = parse_names(args.estimators)
    for key in ("batch_size", "batches", "C", "layers"):
        value = getattr(args, key)
        if value is not None and value < 1:
            raise UserError(f"--{key.replace('_', '-')} must be >= 1, got {value}")
    return args


def _is_nb201(spec: str) -> bool:
    return spec.startswith("|") and "~" in spec


def _nb201_record(path: Path) -> str:
    arch = read_record(path)["genotype"]
    if not isinstance(arch, str):
        raise UserError(f"{path}: an nb201 record's genotype is an architecture string, got {type(arch).__name__}")
    try:
        space_class("nb201").parse_arch(arch)
    except UserError as err:
        raise UserError(f"{path}: {err}") from None
    return arch


def resolve(spec: str, nested: bool = False) -> list[tuple[str, str, Any]]:
    """(label, space name, architecture) of each architecture a command-line argument names; UserError when it
    names none."""
    spec = spec.strip()
    if _is_nb201(spec):
        space_class("nb201").parse_arch(spec)  # UserError when malformed
        return [(spec, "nb201", spec)]
    path = Path(spec)
    if path.is_file() and path.suffix == ".json":
        space = str(read_record(path).get("space", "darts"))
        if space == "nb201":
            return [(spec, space, _nb201_record(path))]
        return [(spec, space_class(space).name, load_genotype(spec))]
    if path.is_file() and not nested:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        found = [item for line in lines if line and not line.startswith("#") for item in resolve(line, nested=True)]
        if not found:
            raise UserError(f"{path}: no architecture in the file; write one per line")
        return found
    return [(spec, "darts", load_genotype(spec))]


def score_archs(archs: list[tuple[str, str, Any]], args: Any) -> list[dict[str, Any]]:
    """Build and score each architecture; a row per architecture."""
    data = load_dataset(args.dataset, args.root, train=True)
    if args.batches * args.batch_size > len(data.dataset):
        raise UserError(f"--batches {args.batches} of --batch-size {args.batch_size} need more images than "
                        f"{args.dataset}'s {len(data.dataset)}")
    batches = image_batches(data.dataset, args.batches, args.batch_size, args.seed)
    rows = []
    for label, space, arch in archs:
        settings = dict(NETWORK_DEFAULTS.get(space, {}))
        settings.update({k: v for k, v in (("C", args.C), ("layers", args.layers)) if v is not None})
        torch.manual_seed(args.seed)
        network = space_class(space).eval_network(arch, data, **settings)
        scored = score_all(args.estimators, network, batches)
        rows.append({"arch": label, "space": space, "scores": {k: v for k, (v, _) in scored.items()},
                     "cpu_s": {k: round(t, 4) for k, (_, t) in scored.items()}})
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    with exit_on_user_error():
        args = _parse(argv)
        archs = [item for spec in args.archs for item in resolve(spec)]
        rows = score_archs(archs, args)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print("\t".join(["arch", *args.estimators]))
    for row in rows:
        print("\t".join([row["arch"], *(f"{row['scores'][name]:.6g}" for name in args.estimators)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
