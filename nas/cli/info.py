"""`nas-info`: the size and shape of a genotype's eval network, without training it.

    nas-info PDARTS                                  # CIFAR-10: 32x32, C=36, 20 cells
    nas-info NASNet --dataset imagenet --json        # ImageNet network: 224x224, C=48, 14 cells
    nas-info runs/x/genotype.json --C 16 --layers 8
    nas-info DARTS_V2 PDARTS NASNet --markdown           # one table row per genotype
    nas-info "Genotype(normal=[('sep_conv_3x3', 0), ...], normal_concat=range(2, 6), ...)"

Parameters exclude the auxiliary head; FLOPs are thop's multiply-accumulates of one image, in millions (what
train_eval.py reports). skips counts the skip_connect ops of the normal cell. depth is the number of intermediate
nodes on the longest path from a cell input (c_{k-2} or c_{k-1}) to the cell output in the normal cell.
Exit codes: 0 done, 2 bad input (one `error: ...` line on stderr).
"""
from __future__ import annotations

import argparse
import json
from collections import Counter
from types import SimpleNamespace
from typing import Any, Sequence

from nas.core.errors import OneLineParser, UserError, exit_on_user_error
from search_spaces.darts.genotype import CELLS, Genotype, load_genotype
from search_spaces.registry import space_class

# dataset -> (network, classes, input size, default C, default layers)
DARTS = space_class("darts")  # nas-info describes genotypes of the DARTS cell space
SCALES: dict[str, tuple[str, int, int, int, int]] = {
    "cifar10": ("cifar", 10, 32, 36, 20),
    "cifar100": ("cifar", 100, 32, 36, 20),
    "imagenet": ("imagenet", 1000, 224, 48, 14),
}


def cell_depth(pairs: Sequence[tuple[str, int]], concat: Sequence[int]) -> int:
    """Intermediate nodes on the longest path from a cell input to the output (the concatenated nodes)."""
    depth = [0, 0]  # c_{k-2}, c_{k-1}
    for i in range(0, len(pairs), 2):
        depth.append(1 + max(depth[j] for _, j in pairs[i:i + 2]))
    return max(depth[j] for j in concat)


def op_histogram(pairs: Sequence[tuple[str, int]]) -> dict[str, int]:
    """How often each op occurs in a cell, the most frequent first (ties by name)."""
    counts = Counter(name for name, _ in pairs)
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def genotype_info(genotype: Genotype, dataset: str = "cifar10", C: int | None = None,
                  layers: int | None = None) -> dict[str, Any]:
    """Parameters, FLOPs, op histograms, normal-cell skips and depth of the eval network of `genotype`
    (costs from the DARTS space's `eval_cost`)."""
    network, classes, size, default_C, default_layers = SCALES[dataset]
    C = default_C if C is None else C
    layers = default_layers if layers is None else layers
    if C < 1 or layers < 1:
        raise UserError(f"--C and --layers must be positive integers, got C={C}, layers={layers}")
    data = SimpleNamespace(in_channels=3, size=size, num_classes=classes)
    params, flops = DARTS.eval_cost(genotype, data, C, layers, network)
    return {
        "genotype": repr(genotype),
        "dataset": dataset,
        "network": network,
        "C": C,
        "layers": layers,
        "input_size": size,
        "params": params,
        "flops": round(flops, 3),
        "ops": {cell: op_histogram(getattr(genotype, cell)) for cell in CELLS},
        "skips": sum(name == "skip_connect" for name, _ in genotype.normal),
        "depth": cell_depth(genotype.normal, genotype.normal_concat),
    }


def format_info(info: dict[str, Any]) -> str:
    """The human-readable report of :func:`genotype_info`."""
    ops = {cell: ", ".join(f"{name} x{n}" for name, n in info["ops"][cell].items()) for cell in CELLS}
    return "\n".join([
        f"genotype  {info['genotype']}",
        f"network   {info['network']} ({info['dataset']}, {info['input_size']}x{info['input_size']}), "
        f"C={info['C']}, {info['layers']} cells",
        f"params    {info['params']:,} ({info['params'] / 1e6:.2f}M, auxiliary head excluded)",
        f"FLOPs     {info['flops']:.1f}M multiply-adds per image (thop)",
        f"normal    {ops['normal']}",
        f"reduce    {ops['reduce']}",
        f"skips     {info['skips']} skip_connect in the normal cell",
        f"depth     {info['depth']} (normal cell: nodes on the longest input-to-output path)",
    ])


def markdown_table(names: Sequence[str], infos: Sequence[dict[str, Any]]) -> str:
    """A markdown table with one row per genotype: parameters, FLOPs, normal-cell skips and depth."""
    first = infos[0]
    scale = f"{first['dataset']}, {first['input_size']}x{first['input_size']}, C={first['C']}, {first['layers']} cells"
    rows = [f"| genotype ({scale}) | params | FLOPs | skips | depth |", "|---|--:|--:|--:|--:|"]
    rows += [f"| {name} | {info['params']:,} | {info['flops']:.1f}M | {info['skips']} | {info['depth']} |"
             for name, info in zip(names, infos)]
    return "\n".join(rows)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = OneLineParser(prog="nas-info", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("genotypes", nargs="+", metavar="GENOTYPE",
                        help="shipped name (PDARTS, NASNet, ...), a record .json or 'Genotype(...)'")
    parser.add_argument("--dataset", choices=list(SCALES), default="cifar10",
                        help="cifar10 / cifar100: CIFAR network at 32x32; imagenet: ImageNet network at 224x224")
    parser.add_argument("--C", type=int, help="initial channels (default: 36 for CIFAR, 48 for ImageNet)")
    parser.add_argument("--layers", type=int, help="cells (default: 20 for CIFAR, 14 for ImageNet)")
    form = parser.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true", help="print a JSON object (a list for several genotypes) with "
                                                          "the keys params, flops, ops, skips, depth, ...")
    form.add_argument("--markdown", action="store_true", help="print a markdown table, one row per genotype")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of `nas-info` and `python -m nas.cli.info`."""
    with exit_on_user_error():
        args = parse_args(argv)
        genotypes = [load_genotype(spec) for spec in args.genotypes]  # every one checked before any work
        infos = [genotype_info(genotype, args.dataset, args.C, args.layers) for genotype in genotypes]
    if args.json:
        print(json.dumps(infos[0] if len(infos) == 1 else infos, indent=2))
    elif args.markdown:
        print(markdown_table(args.genotypes, infos))
    else:
        print("\n\n".join(format_info(info) for info in infos))


if __name__ == "__main__":
    main()
