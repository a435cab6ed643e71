"""The latency table format: median milliseconds per part of an eval-scale network, measured on one device.

A table records the device it was measured on (`cpu: <model name> x<threads> threads` or `cuda: <GPU name>`) and
is refused on any other device. `nas-latency build` (nas/benchmarks/latency.py) measures tables; a search reads
one from `reward.latency_table: PATH`.
"""
from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from nas.core.device import resolve_device
from nas.core.errors import UserError
from nas.core.records import write_record

FORMAT = "pdarts-nas latency table"


@dataclass
class LatencyTable:
    """Median milliseconds per part key, with the device and the settings they were measured at."""

    device: str
    settings: dict[str, Any]  # space, scale (C, layers, size, ...), ops, batch, threads, warmup, repeats
    entries: dict[str, float]

    def check_scale(self, scale: dict[str, int], path: str | os.PathLike) -> None:
        """UserError unless the table was built at this eval scale."""
        built = self.settings.get("scale", {})
        differ = {k: (built.get(k), v) for k, v in scale.items() if built.get(k) != v}
        if differ:
            what = ", ".join(f"{k} {b} (search: {v})" for k, (b, v) in differ.items())
            raise UserError(f"{path} was built at another eval scale: {what}; build a table at the search's scale")


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
    """Read a table; UserError for an unreadable file, one that is no table, or one measured on another device."""
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
    table = LatencyTable(data["device"], data["settings"], data["entries"])
    kind = table.device.split(":", 1)[0]
    if kind == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{path} was measured on {table.device!r}, but this machine has no CUDA device; build a "
                        "table here (nas-latency build --device cpu)")
    here = device_name(resolve_device(kind))
    if here != table.device:
        raise UserError(f"{path} was measured on {table.device!r}, not on this device ({here!r}); latency does not "
                        f"transfer between devices: build a table here with nas-latency build --device {kind}")
    return table
