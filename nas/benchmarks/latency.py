"""Latency lookup tables: every part of an eval-scale network timed alone on the target device.

    nas-latency build --space darts --device cpu --C 36 --layers 20 --size 32 -o table.json
    nas-latency check table.json --archs 20          # table sums against measured end-to-end latency

`build` asks the space for every part an architecture can have (each op at every position's input shape, plus the
fixed parts: stem, preprocessing, node sums, head; `SearchSpace.latency_parts`), runs each in eval mode at batch 1,
`--warmup` times untimed, then takes the median of `--repeats` timed runs (milliseconds). An architecture's latency
is the sum of its parts' entries (`SearchSpace.latency_ms`); a search reads the table from
`reward.latency_table: PATH`.

A table records the device it was measured on (`cpu: <model name> x<threads> threads` or `cuda: <GPU name>`): the
target whose latency a search optimises, which need not be the machine the search runs on (a search accepts a table
of any device, and refuses one of another space, eval scale or op set). `check` measures networks here, so it
refuses a table of another device. Built tables are cached under `$PDARTS_NAS_CACHE/latency/` (default
`~/.cache/pdarts-nas/latency/`) by device, settings and timing method (`METHOD`), so a second `build` with the same
settings is a copy, and a table timed by an older method is measured again.
Exit codes: 0 done, 2 bad input (one `error: ...` line on stderr).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Sequence

import torch
from scipy import stats
from torch import nn

from nas.core.device import resolve_device
from nas.core.errors import OneLineParser, UserError, exit_on_user_error
from nas.core.latency_table import LatencyTable, device_name, load_table, write_table
from search_spaces.registry import space_class

# The timing method, part of every table's settings and cache key: bump it whenever time_module, the parts or the
# clock change what a table's numbers mean. 3: one cold-cache run (8 MB written before each), the thread's CPU time
# on one CPU thread, median of the repeats.
METHOD = 3
FLUSH_BYTES = 8 << 20  # written before every timed run on a CPU: more than the L2 caches of common CPUs


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _clock(device: torch.device) -> Callable[[], float]:
    """The thread's CPU time on a one-thread CPU (other processes sharing the cores do not inflate it: on a busy
    machine a 100 ms forward is preempted, a 0.1 ms op rarely is), wall time otherwise."""
    return time.thread_time if device.type == "cpu" and torch.get_num_threads() == 1 else time.perf_counter


@torch.no_grad()
def time_module(module: nn.Module, shape: Sequence[int], device: torch.device, warmup: int, repeats: int) -> float:
    """Median milliseconds of module(x) in eval mode, x random of `shape`, after `warmup` untimed runs."""
    module = module.to(device).eval()
    x = torch.randn(*shape, device=device)
    clock = _clock(device)
    for _ in range(warmup):
        module(x)
    flush = torch.empty(FLUSH_BYTES // 4, device=device) if device.type == "cpu" else None
    times = []
    for _ in range(repeats):
        if flush is not None:  # a cold cache, as in a whole network where the other parts evict this one's data
            flush.fill_(0.0)
        _sync(device)
        tic = clock()
        module(x)
        _sync(device)
        times.append(1e3 * (clock() - tic))
    return statistics.median(times)


def cache_path(device: str, settings: dict[str, Any]) -> Path:
    """Where the table of these settings on this device is cached."""
    root = Path(os.environ.get("PDARTS_NAS_CACHE", Path.home() / ".cache" / "pdarts-nas"))
    digest = hashlib.sha256(json.dumps([device, settings], sort_keys=True).encode()).hexdigest()[:16]
    return root / "latency" / f"{digest}.json"


def build_table(space: str, device: torch.device, scale: dict[str, int], ops: Sequence[str] | None = None,
                warmup: int = 10, repeats: int = 30, use_cache: bool = True) -> LatencyTable:
    """Time every part of the space's eval network at `scale` on `device` (or read the cached table)."""
    space_cls = space_class(space)
    settings = {"method": METHOD, "space": space, "scale": dict(scale), "ops": list(ops) if ops else None,
                "batch": 1, "warmup": warmup, "repeats": repeats}
    name = device_name(device)
    cached = cache_path(name, settings)
    if use_cache and cached.is_file():
        table = load_table(cached)
        if (table.device, table.settings) == (name, settings):
            return table
    parts = space_cls.latency_parts(scale, ops)
    with torch.random.fork_rng(devices=[]):
        entries = {}
        for key, build in parts.items():
            module, shape = build()
            entries[key] = round(time_module(module, shape, device, warmup, repeats), 5)
    table = LatencyTable(name, settings, entries)
    write_table(cached, table)
    return table


def check_measured_here(table: LatencyTable, path: str | os.PathLike) -> None:
    """UserError unless the table was measured on this device (with these CPU threads): `check` times networks
    here, and another device's parts do not add up to this one's networks."""
    kind = table.device.split(":", 1)[0]
    if kind == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{path} was measured on {table.device!r}, but this machine has no CUDA device; check it on "
                        "that device, or build a table here (nas-latency build --device cpu)")
    here = device_name(resolve_device(kind))
    if here != table.device:
        raise UserError(f"{path} was measured on {table.device!r}, not on this device ({here!r}); check it there "
                        f"(with its threads), or build a table here with nas-latency build --device {kind}")


def _threads_settings(device: torch.device, threads: int | None) -> None:
    if device.type == "cpu" and threads:
        torch.set_num_threads(threads)


@torch.no_grad()
def check_table(table: LatencyTable, archs: int = 20, seed: int = 0, warmup: int = 3,
                repeats: int = 20) -> dict[str, Any]:
    """Table sums against the measured end-to-end latency of `archs` random architectures: Spearman's rho, the
    mean absolute error in % of the measured latency, and every pair."""
    space_cls = space_class(table.settings["space"])
    scale = table.settings["scale"]
    device = resolve_device(table.device.split(":", 1)[0])
    data = SimpleNamespace(in_channels=scale["in_channels"], size=scale["size"], num_classes=scale["num_classes"])
    rng = random.Random(seed)
    pairs = []
    with torch.random.fork_rng(devices=[]):
        for _ in range(archs):
            arch = space_cls.random_architecture(rng, table.settings.get("ops"))
            net = space_cls.eval_network(arch, data, C=scale["C"], layers=scale["layers"], auxiliary=False)
            shape = (1, scale["in_channels"], scale["size"], scale["size"])
            measured = time_module(net, shape, device, warmup, repeats)
            pairs.append({"arch": str(arch), "table_ms": round(space_cls.latency_ms(arch, table.entries, scale), 3),
                          "measured_ms": round(measured, 3)})
    table_ms = [p["table_ms"] for p in pairs]
    measured_ms = [p["measured_ms"] for p in pairs]
    rho = stats.spearmanr(table_ms, measured_ms).statistic
    mae = 100 * statistics.mean(abs(t - m) / m for t, m in zip(table_ms, measured_ms))
    return {"spearman": float(rho), "mean_abs_error_pct": mae, "device": table.device, "pairs": pairs}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = OneLineParser(prog="nas-latency", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="time every part of a space's eval network on this device")
    build.add_argument("--space", default="darts")
    build.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    build.add_argument("--C", type=int, default=36)
    build.add_argument("--layers", type=int, default=20)
    build.add_argument("--size", type=int, default=32)
    build.add_argument("--in-channels", type=int, default=3)
    build.add_argument("--classes", type=int, default=10)
    build.add_argument("--ops", nargs="+", help="candidate ops (default: the space's)")
    build.add_argument("--threads", type=int, help="CPU threads to time with (default: torch's)")
    build.add_argument("--warmup", type=int, default=10)
    build.add_argument("--repeats", type=int, default=30)
    build.add_argument("--no-cache", action="store_true", help="measure again even if a cached table exists")
    build.add_argument("-o", "--output", required=True, help="where to write the table (JSON)")
    check = commands.add_parser("check", help="compare a table with measured end-to-end latency")
    check.add_argument("table")
    check.add_argument("--archs", type=int, default=20)
    check.add_argument("--seed", type=int, default=0)
    check.add_argument("--threads", type=int, help="CPU threads (must match the table's)")
    check.add_argument("--repeats", type=int, default=20)
    check.add_argument("--json", action="store_true", help="print every pair as JSON")
    args = parser.parse_args(argv)
    _check_counts(args)
    return args


def _check_counts(args: argparse.Namespace) -> None:
    """UserError for the first count out of range: sizes, repeats and threads positive, warm-up runs >= 0, and at
    least two networks to rank."""
    names = ("C", "layers", "size", "in_channels", "classes", "repeats", "threads") if args.command == "build" else \
        ("repeats", "threads")
    for name in names:
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    if args.command == "build" and args.warmup < 0:
        raise UserError(f"--warmup must be >= 0, got {args.warmup}")
    if args.command == "check" and args.archs < 2:
        raise UserError(f"--archs must be at least 2 (a rank correlation needs two networks), got {args.archs}")


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of `nas-latency` and `python -m nas.benchmarks.latency`."""
    with exit_on_user_error():
        args = parse_args(argv)
        if args.command == "build":
            device = resolve_device(args.device)
            _threads_settings(device, args.threads)
            scale = {"C": args.C, "layers": args.layers, "size": args.size, "in_channels": args.in_channels,
                     "num_classes": args.classes}
            table = build_table(args.space, device, scale, args.ops, args.warmup, args.repeats, not args.no_cache)
            print(f"{write_table(args.output, table)}: {len(table.entries)} parts on {table.device}")
            return
        _threads_settings(torch.device("cpu"), args.threads)
        table = load_table(args.table)
        check_measured_here(table, args.table)
        report = check_table(table, args.archs, args.seed, repeats=args.repeats)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{len(report['pairs'])} architectures on {report['device']}: Spearman {report['spearman']:.3f}, "
              f"mean absolute error {report['mean_abs_error_pct']:.1f}% of the measured latency")


if __name__ == "__main__":
    main()
