"""Benchmark: the search under torchrun, 1 against N processes, and the two ways to all-reduce single-path gradients.

    python experiments/bench_ddp.py [--procs 2] [--device cpu|cuda]

1. Search throughput: a one-stage digits search (3 epochs, architecture steps from the first, C=8, 5 cells,
   global batch 256, 512 training images) through search.py's main under `torchrun --nproc_per_node=P` for P = 1
   and N, for the gradient controller (mixture) and GDAS (a sampled path per rank). Samples/s = training images
   per second of the training epochs after the first (weight and architecture steps; the stage's setup and the
   end-of-epoch validation are left out); scaling efficiency = samples/s at N / (N x samples/s at 1). On CPU
   every process runs one thread.
2. Gradient sync of single-path weight steps on N processes (each rank a different uniform path, the same
   supernet): the engine's all-reduce (nas.core.distributed.average_gradients: zeros for ops a rank did not run, one
   flat all-reduce after backward) against DistributedDataParallel(find_unused_parameters=True); ms per step, the
   best of two alternating rounds.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAIN_IMAGES, EPOCHS, BATCH = 512, 3, 256  # data.limit 1024: half of it trains the weights
SEARCH = ["model.C=8", "stages.layers=[5]", f"stages.epochs=[{EPOCHS}]", "stages.warmup_epochs=[0]",
          "stages.keep=[1]", "stages.skip_dropout=[0.0]", f"data.batch_size={BATCH}", f"data.limit={2 * TRAIN_IMAGES}",
          "run.draw=false", "run.log_every=1000"]
CONFIGS = {"gradient": "quick_digits.yaml", "gdas": "quick_digits_gdas.yaml"}
SYNC_STEPS, SYNC_WARMUP, ROUNDS = 12, 3, 2  # timed steps per round, untimed steps first, rounds (the best counts)


def torchrun(procs: int, args: list[str], device: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BENCH_DEVICE": device}
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{result.stderr[-3000:]}")
    return result


def search_rate(controller: str, procs: int, device: str) -> float:
    """Training images per second of the training epochs after the first, of one search on `procs` processes."""
    with tempfile.TemporaryDirectory() as tmp:
        out = torchrun(procs, [__file__, "--search-worker", "-c", str(ROOT / "experiments" / CONFIGS[controller]),
                               "--run-dir", str(Path(tmp) / "run"), "--set", *SEARCH, f"run.device={device}"],
                       device).stdout
    seconds = json.loads(next(line for line in out.splitlines() if line.startswith("[")))[1:]
    return TRAIN_IMAGES * len(seconds) / sum(seconds)


def search_worker(argv: list[str]) -> None:
    """Under torchrun: search.py's main with every training epoch timed; rank 0 prints the seconds as JSON."""
    sys.path.insert(0, str(ROOT))
    import search
    from nas.core.distributed import world
    from nas.engine import search_loop as loop

    seconds: list[float] = []
    train_epoch = loop.StageRunner._train_epoch

    def timed(runner: loop.StageRunner, epoch: int) -> None:
        tic = time.perf_counter()
        train_epoch(runner, epoch)
        seconds.append(time.perf_counter() - tic)
        if world().is_main and len(seconds) == EPOCHS:
            print(json.dumps(seconds), flush=True)

    loop.StageRunner._train_epoch = timed
    search.main(argv)


def sync_worker() -> None:
    """Under torchrun: time single-path weight steps with each gradient sync; rank 0 prints JSON."""
    import torch
    import torch.distributed as tdist
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel

    sys.path.insert(0, str(ROOT))
    from nas.core.data import load_dataset
    from nas.core.device import resolve_device
    from nas.core.distributed import average_gradients, dist_info, process_group
    from search_spaces.registry import space_class

    info = dist_info()
    device = resolve_device(os.environ.get("BENCH_DEVICE", "cpu"), info.local_rank)
    data = load_dataset("digits")
    x_all, y_all = data.dataset.tensors
    per_rank = BATCH // info.world_size
    with process_group(info, device):
        space = space_class("darts").from_config({"model": _model_config(8)}, data)
        kept = space.initial_kept_ops()
        generator = torch.Generator().manual_seed(0)
        times: dict[str, float] = {}
        for mode in ("engine all-reduce", "DDP find_unused_parameters") * ROUNDS:
            torch.manual_seed(0)
            net = space.build_supernet(kept, 5).to(device)
            model = net if mode.startswith("engine") else DistributedDataParallel(
                net, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True,
                forward_sync_buffers=False)
            opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
            params = list(net.parameters())
            for step in range(SYNC_WARMUP + SYNC_STEPS):
                if step == SYNC_WARMUP:
                    tdist.barrier()
                    tic = time.perf_counter()
                paths = [{g: torch.randint(len(edges[0]), (len(edges),), generator=generator)
                          for g, edges in kept.items()} for _ in range(info.world_size)]
                start = (step * BATCH + info.rank * per_rank) % (len(y_all) - per_rank)
                x, y = x_all[start:start + per_rank].to(device), y_all[start:start + per_rank].to(device)
                opt.zero_grad(set_to_none=True)
                loss = F.cross_entropy(model(x, path=paths[info.rank]), y)
                loss.backward()
                if model is net:
                    average_gradients(params, loss)
                opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[mode] = min(times.get(mode, float("inf")), 1000 * (time.perf_counter() - tic) / SYNC_STEPS)
        if info.is_main:
            print(json.dumps(times))


def _model_config(C: int):
    from search_spaces.darts.space import DartsModelConfig

    return DartsModelConfig(C=C)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--procs", type=int, default=2, help="processes of the multi-process runs (default 2)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--sync-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--search-worker", action="store_true", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.search_worker:
        search_worker(rest)
        return
    if args.sync_worker:
        sync_worker()
        return
    print("| search | processes | samples/s | scaling efficiency |\n|---|---|---|---|")
    for controller in CONFIGS:
        one = search_rate(controller, 1, args.device)
        many = search_rate(controller, args.procs, args.device)
        print(f"| {controller} | 1 | {one:.1f} | |")
        print(f"| {controller} | {args.procs} | {many:.1f} | {many / (args.procs * one):.0%} |", flush=True)
    out = torchrun(args.procs, [__file__, "--sync-worker"], args.device).stdout
    times = json.loads(out.strip().splitlines()[-1])
    print(f"\n| gradient sync, single path, {args.procs} processes | ms per weight step |\n|---|---|")
    for mode, ms in times.items():
        print(f"| {mode} | {ms:.1f} |")


if __name__ == "__main__":
    main()
