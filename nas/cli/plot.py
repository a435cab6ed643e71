"""`nas-plot GENOTYPE -o DIR`: draw the normal and reduce cells of a DARTS genotype (search_spaces/darts/drawing.py)."""
from __future__ import annotations

import argparse

from nas.core.errors import exit_on_user_error
from search_spaces.darts.drawing import FORMATS, plot_genotype
from search_spaces.darts.genotype import load_genotype, shipped_genotype_names


def main(argv: list[str] | None = None) -> None:
    """`nas-plot GENOTYPE -o DIR [--format pdf|png|svg]`: draw both cells of a genotype."""
    parser = argparse.ArgumentParser(prog="nas-plot", description="Draw the normal and reduce cells of a genotype.")
    parser.add_argument("genotype", help=f"a shipped name ({', '.join(shipped_genotype_names())}), "
                                         "a record .json path or a 'Genotype(...)' string")
    parser.add_argument("-o", "--out-dir", required=True, help="folder for normal.FMT, reduce.FMT and .dot sources")
    parser.add_argument("--format", choices=FORMATS, default="png", help="image format (default: png)")
    args = parser.parse_args(argv)
    with exit_on_user_error():
        for path in plot_genotype(load_genotype(args.genotype), args.out_dir, args.format):
            print(path)


if __name__ == "__main__":
    main()
