"""The latency table format: median milliseconds per part of an eval-scale network, measured on one device.

A table records the device it was measured on (`cpu: <model name> x<threads> threads` or `cuda: <GPU name>`): the
target whose latency a search optimises, which need not be the machine the search runs on. `nas-latency build`
(nas/benchmarks/latency.py) measures tables, and its `check` refuses another device's; a search reads one from
`reward.latency_table: PATH`.
"""
from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from nas.core.arch_types import KeptOps
from nas.core.errors import UserError
from nas.core.records import write_record

FORMAT = "pdarts-nas latency table"


@dataclass
class LatencyTable:
    """Median milliseconds per part key, with the device and the settings they were measured at."""

    device: str
    settings: dict[str, Any]  # method, space, scale (C, layers, size, ...), ops, batch, warmup, repeats
    entries: dict[str, float]

    def check_search(self, space: Any, kept_ops: KeptOps, path: str | os.PathLike) -> None:
        """UserError unless the table was built for this search space (a SearchSpace), at its eval scale, with an
        entry for every part an architecture of `kept_ops` can have. The device may be any: it is the target."""
        if self.settings.get("space") != space.name:
            raise UserError(f"{path} was built for the {self.settings.get('space')} space, not for the search's "
                            f"{space.name} space; build a table with nas-latency build --space {space.name}")
        scale = space.latency_scale()
        built = self.settings.get("scale", {})
        differ = {k: (built.get(k), v) for k, v in scale.items() if built.get(k) != v}
        if differ:
            what = ", ".join(f"{k} {b} (search: {v})" for k, (b, v) in differ.items())
            raise UserError(f"{path} was built at another eval scale: {what}; build a table at the search's scale")
        ops = list(dict.fromkeys(op for edges in kept_ops.values() for names in edges for op in names))
        missing = [op for op in ops if not set(space.latency_parts(scale, [op])) <= self.entries.keys()]
        if missing:
            raise UserError(f"{path} has no entries for {', '.join(missing)}, which the search samples; build a "
                            f"table with every op (nas-latency build --ops {' '.join(ops)})")


def device_name(device: torch.device) -> str:
    """`cuda: NVIDIA H200` or `cpu: <model name> x<threads> threads`: what a table's timings belong to."""
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        model = names[0] if names else model
    return f"cpu: {model} x{torch.get_num_threads()} threads"


def write_table(path: str | os.PathLike, table: LatencyTable) -> Path:
    return write_record(path, {"format": FORMAT, **asdict(table)})


def load_table(path: str | os.PathLike) -> LatencyTable:
    """Read a table, measured on any device; UserError for an unreadable file or one that is no table."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise UserError(f"{path}: cannot read the latency table ({err.strerror or err}); build one with "
                        "nas-latency build") from None
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not valid JSON ({err.msg} at line {err.lineno}); build the table again") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise UserError(f"{path} is not a latency table written by nas-latency build")
    return LatencyTable(data["device"], data["settings"], data["entries"])
