"""Markdown table cells and figure files shared by the run report (run.py) and the sweep report
(nas/sweep/results.py)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.figure import Figure


def save_figure(fig: Figure, path: Path) -> Path:
    """Save `fig` at the reports' resolution (100 dpi) and return `path`."""
    fig.savefig(path, dpi=100)
    return path


def table_row(cells: list[Any]) -> str:
    """One markdown table row."""
    return "| " + " | ".join(str(c) for c in cells) + " |"


def fmt(value: float | None, spec: str = ".2f") -> str:
    """`value` formatted with `spec`, or `-` for a missing value."""
    return "-" if value is None else format(value, spec)
