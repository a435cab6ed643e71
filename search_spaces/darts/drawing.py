"""Graphviz drawings of a genotype's normal and reduce cells (`nas-plot`, nas/cli/plot.py, draws them
from the command line).

Without graphviz's `dot` program only the .dot sources are written and a one-line install hint is printed.
"""
from __future__ import annotations

import io
import os
import shutil
import sys
from pathlib import Path

import graphviz
import numpy as np

from nas.core.errors import UserError
from search_spaces.darts.genotype import CELLS, Genotype

FORMATS: tuple[str, ...] = ("png", "pdf", "svg")
MISSING_DOT_MESSAGE = ("graphviz's `dot` program was not found, so only the .dot sources were written; install it "
                       "with `apt-get install graphviz` (Debian/Ubuntu) or `brew install graphviz` (macOS) and rerun")
INPUTS: tuple[str, str] = ("c_{k-2}", "c_{k-1}")
OUTPUT = "c_{k}"


def cell_graph(genotype: Genotype, cell: str) -> graphviz.Digraph:
    """The `cell` ('normal' or 'reduce') as a left-to-right graph: inputs, nodes 0.., op-labelled edges, output."""
    if cell not in CELLS:
        raise ValueError(f"cell must be one of {', '.join(CELLS)}, got {cell!r}")
    pairs = getattr(genotype, cell)
    graph = graphviz.Digraph(
        name=cell,
        graph_attr={"rankdir": "LR", "label": f"{cell} cell", "labelloc": "t", "fontname": "helvetica"},
        node_attr={"style": "filled", "shape": "rect", "fontname": "helvetica", "penwidth": "2"},
        edge_attr={"fontname": "helvetica", "fontsize": "12"},
    )
    for name in INPUTS:
        graph.node(name, fillcolor="darkseagreen2")
    for node in range(len(pairs) // 2):
        graph.node(str(node), fillcolor="lightblue")
    graph.node(OUTPUT, fillcolor="palegoldenrod")
    for k, (op, index) in enumerate(pairs):
        graph.edge(INPUTS[index] if index < 2 else str(index - 2), str(k // 2), label=str(op))
    for index in getattr(genotype, f"{cell}_concat"):
        graph.edge(str(int(index) - 2), OUTPUT, color="gray")
    return graph


def _render(graph: graphviz.Digraph, fmt: str) -> bytes | None:
    """The graph rendered by `dot` in `fmt`, or None where `dot` is not installed."""
    if shutil.which("dot") is None:
        return None
    try:
        return graph.pipe(format=fmt)
    except graphviz.ExecutableNotFound:
        return None


def plot_genotype(genotype: Genotype, out_dir: str | os.PathLike, fmt: str = "png") -> list[Path]:
    """Write `normal.dot`/`reduce.dot` and, where `dot` is installed, `normal.FMT`/`reduce.FMT`; return the files.

    Without `dot` it prints MISSING_DOT_MESSAGE to stderr and writes the sources only.
    """
    if fmt not in FORMATS:
        raise UserError(f"unknown drawing format {fmt!r}; use one of {', '.join(FORMATS)}")
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot write drawings to {str(out)!r}: {err.strerror or err}; pick another folder") from None
    written, dot_missing = [], False
    for cell in CELLS:
        graph = cell_graph(genotype, cell)
        source = out / f"{cell}.dot"
        source.write_text(graph.source, encoding="utf-8")
        written.append(source)
        image = _render(graph, fmt)
        if image is None:
            dot_missing = True
            continue
        target = out / f"{cell}.{fmt}"
        target.write_bytes(image)
        written.append(target)
    if dot_missing:
        print(MISSING_DOT_MESSAGE, file=sys.stderr)
    return written


def cell_image_array(genotype: Genotype, cell: str) -> np.ndarray | None:
    """The drawing of `cell` as an HxWx3 uint8 array (for TensorBoard add_image), or None where `dot` is missing."""
    data = _render(cell_graph(genotype, cell), "png")
    if data is None:
        return None
    from PIL import Image  # installed with matplotlib; only this function needs it

    with Image.open(io.BytesIO(data)) as image:
        return np.array(image.convert("RGB"))
