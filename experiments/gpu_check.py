"""The GPU path measured by one prepared script (issue 24): one table of throughput and peak memory per switch, then
a short DARTS_V2 eval that shows the loss falls.

Rows, each timed after warm-up steps with the switches of `run:` (nas/core/accel.py) set as named:
  search/<mixture>  one supernet weight step (forward, backward, SGD) of the DARTS space, all 8 ops on every edge:
                    mixture (softmax weights), partial (model.mixture: partial, K=4, with edge normalisation) and
                    path (one Gumbel-max op per edge, drawn per step by the GDAS controller), in steps per second
  eval              a training step of the DARTS_V2 eval network through the eval Trainer (the code train_eval.py
                    runs, auxiliary head on), in images per second
for amp off / bf16 (and fp16 on CUDA) and channels_last off / on; one eval row compiles. Peak memory is
torch.cuda.max_memory_allocated on CUDA, and on the CPU the growth of the peak RSS over the row's steps (the peak
is reset before each row through /proc/self/clear_refs, where Linux allows it). Then DARTS_V2 trains two epochs
with bf16 and channels_last (on the CPU in float32: bf16 without AMX is slow) and prints its train and test loss.

Sizing of the full (GPU) mode, to finish in at most 8 minutes on one H200: the search rows use DARTS's search
settings (C=16, 8 cells, batch 64, 32x32): a mixture step of that supernet takes about 0.1-0.2 s on a V100-class
GPU in float32, so 18 rows (3 supernets x 3 amp modes x 2 layouts) x (3 warm-up + 10 timed) steps take about a
minute even at 0.25 s a step (the path and bf16 rows are several times faster). The eval rows use the CIFAR-10
recipe's network (C=36, 20 cells, batch 96): 13 steps per row, 6 eager rows, well under a minute. The two
CIFAR-10 epochs are 2 x 521 steps of batch 96 plus the 10,000 test images: DARTS's 600-epoch recipe takes about
1.5 GPU-days on a 1080 Ti (3.6 min an epoch), and an H200 in bf16 is well over 5x faster, so about 1.5 minutes
with 8 loader workers. torch.compile compiles the 20-cell network for forward and backward, which takes a few
minutes, so only one row compiles (bf16, channels_last: the settings a GPU run would use; compare it with the
same eager row), and it runs last: a compile that fails or runs long costs only that row (a failure is reported
in it). Total: about 4 minutes before the compile row.

    python experiments/gpu_check.py --data-root ~/.cache/pdarts-nas/cifar10 [--dataset cifar10] [--json OUT]
    python experiments/gpu_check.py --cpu [--json OUT]      # tiny sizes, under a minute on a CPU (CI)

--cpu: C=4 (partial K=2), 3 cells, 8x8 inputs, 2 timed steps per row, the compile rows skipped (compiling even the
tiny network takes minutes on a CPU), and the two epochs on 512 of scikit-learn's digits. fp16 rows run on CUDA
only (the CPU refuses run.amp=fp16).
"""
from __future__ import annotations

import argparse
import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset, TensorDataset

from controllers.edge_weights import edge_nodes
from controllers.gdas import GdasConfig, GdasController
from controllers.gradient import GradientConfig, GradientController
from nas.core.accel import Precision, memory_format, set_cudnn_benchmark
from nas.core.data import load_dataset
from nas.core.distributed import DistInfo
from nas.core.errors import OneLineParser, UserError, exit_on_user_error
from nas.core.records import write_record
from nas.engine.trainer import EvalConfig, EvalData, Trainer
from search_spaces.darts.genotype import load_genotype
from search_spaces.darts.space import DartsSpace
from search_spaces.ops import DARTS_OPS

MIXTURES = ("mixture", "partial", "path")


@dataclass(frozen=True)
class Sizes:
    """Everything the two modes size differently."""

    search_C: int
    partial_k: int  # model.partial_k of the partial rows (C must be a multiple of 2K)
    search_layers: int
    search_batch: int
    eval_C: int
    eval_layers: int
    eval_batch: int
    size: int
    warmup: int
    steps: int
    compile_rows: bool
    epochs_images: int  # training images of the two-epoch eval (0: the whole training set)


FULL = Sizes(16, 4, 8, 64, 36, 20, 96, 32, warmup=3, steps=10, compile_rows=True, epochs_images=0)
TINY = Sizes(4, 2, 3, 16, 4, 3, 32, 8, warmup=1, steps=2, compile_rows=False, epochs_images=512)


# ----- memory -----

def _rss_peak_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _reset_peak(device: torch.device) -> int:
    """Start a row's peak: the CUDA counters, or the RSS high-water mark (0 on CUDA; the RSS now on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return 0
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: the peak RSS restarts from the current RSS
    except OSError:
        pass
    return _rss_peak_kib()


def _peak_mib(device: torch.device, start: int) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return max(_rss_peak_kib() - start, 0) / 1024


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# ----- rows -----

def _search_step(kind: str, sizes: Sizes, device: torch.device, amp: str, channels_last: bool) -> Callable[[], None]:
    """One weight step of the supernet `kind` on a fixed random batch, as the search loop takes it."""
    partial = kind == "partial"
    space = DartsSpace(C=sizes.search_C, num_classes=10, in_channels=3, normal_ops=list(DARTS_OPS),
                       reduce_ops=list(DARTS_OPS), image_size=sizes.size, partial_k=sizes.partial_k if partial else 1,
                       edge_norm=partial)
    kept = space.initial_kept_ops()
    layout = memory_format(channels_last)
    model = space.build_supernet(kept, sizes.search_layers).to(device, memory_format=layout)
    shapes = GradientController.shapes(kept)
    if kind == "path":
        controller: Any = GdasController(shapes, GdasConfig(), torch.Generator().manual_seed(0))
    else:
        controller = GradientController(shapes, GradientConfig(), edge_nodes(space, kept))
    controller.to(device)
    params, precision = list(model.parameters()), Precision(amp, device)
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    x = torch.randn(sizes.search_batch, 3, sizes.size, sizes.size, device=device).contiguous(memory_format=layout)
    y = torch.randint(0, 10, (sizes.search_batch,), device=device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with precision.autocast():
            loss = F.cross_entropy(model(x, **controller.weight_forward_kwargs()), y)
        precision.backward(loss)
        precision.step(opt, params, 5.0)

    return step


def _eval_trainer(sizes: Sizes, device: torch.device, amp: str, channels_last: bool, compile_eval: bool,
                  in_channels: int = 3) -> Trainer:
    config = EvalConfig()
    config.model.C, config.model.layers, config.train.batch_size = sizes.eval_C, sizes.eval_layers, sizes.eval_batch
    config.run.amp, config.run.channels_last, config.run.compile_eval = amp, channels_last, compile_eval
    config.model.auxiliary = sizes is FULL
    net = DartsSpace.eval_network(load_genotype("DARTS_V2"), _Shape(in_channels, sizes.size), C=sizes.eval_C,
                                  layers=sizes.eval_layers, auxiliary=config.model.auxiliary)
    return Trainer(config, net, device, DistInfo())


@dataclass(frozen=True)
class _Shape:
    in_channels: int
    size: int
    num_classes: int = 10


def _eval_rate(sizes: Sizes, device: torch.device, amp: str, channels_last: bool, compile_eval: bool
               ) -> tuple[float, float]:
    """(images per second, peak MiB) of the eval Trainer's training epochs over random batches."""
    trainer = _eval_trainer(sizes, device, amp, channels_last, compile_eval)
    n = sizes.eval_batch

    def batches(count: int) -> DataLoader:
        data = TensorDataset(torch.randn(count * n, 3, sizes.size, sizes.size), torch.randint(0, 10, (count * n,)))
        return DataLoader(data, batch_size=n)

    start = _reset_peak(device)
    trainer.train_epoch(batches(sizes.warmup), 0, "")
    _sync(device)
    tic = time.perf_counter()
    trainer.train_epoch(batches(sizes.steps), 0, "")
    _sync(device)
    return sizes.steps * n / (time.perf_counter() - tic), _peak_mib(device, start)


def _search_rate(kind: str, sizes: Sizes, device: torch.device, amp: str, channels_last: bool
                 ) -> tuple[float, float]:
    """(steps per second, peak MiB) of the supernet's weight steps."""
    start = _reset_peak(device)
    step = _search_step(kind, sizes, device, amp, channels_last)
    for _ in range(sizes.warmup):
        step()
    _sync(device)
    tic = time.perf_counter()
    for _ in range(sizes.steps):
        step()
    _sync(device)
    return sizes.steps / (time.perf_counter() - tic), _peak_mib(device, start)


def table_rows(sizes: Sizes, device: torch.device) -> Iterator[dict[str, Any]]:
    """Every eager row, as it is measured."""
    amps = ("off", "bf16", "fp16") if device.type == "cuda" else ("off", "bf16")
    for kind in MIXTURES:
        for amp in amps:
            for channels_last in (False, True):
                rate, peak = _search_rate(kind, sizes, device, amp, channels_last)
                yield {"row": f"search/{kind}", "amp": amp, "channels_last": channels_last, "compile": False,
                       "rate": rate, "unit": "steps/s", "peak_mib": peak}
    for amp in amps:
        for channels_last in (False, True):
            rate, peak = _eval_rate(sizes, device, amp, channels_last, False)
            yield {"row": "eval DARTS_V2", "amp": amp, "channels_last": channels_last, "compile": False,
                   "rate": rate, "unit": "images/s", "peak_mib": peak}


def compile_row(sizes: Sizes, device: torch.device) -> dict[str, Any]:
    """The compiled eval row (bf16 where the device has it); a compile that fails gives a row saying why."""
    amp = "bf16" if device.type == "cpu" or torch.cuda.is_bf16_supported() else "fp16"
    row = {"row": "eval DARTS_V2", "amp": amp, "channels_last": True, "compile": True, "unit": "images/s"}
    try:
        rate, peak = _eval_rate(sizes, device, amp, True, True)
    except Exception as err:  # noqa: BLE001 - any compiler failure is this row's result, not the script's end
        return {**row, "rate": float("nan"), "peak_mib": float("nan"), "error": f"{type(err).__name__}: {err}"[:200]}
    return {**row, "rate": rate, "peak_mib": peak}


# ----- the two epochs -----

def two_epochs(sizes: Sizes, device: torch.device, dataset: str, data_root: str) -> list[dict[str, float]]:
    """Train DARTS_V2 for two epochs (bf16 and channels_last on CUDA, float32 on the CPU); per epoch the train and
    test loss and test top-1."""
    name = "digits" if sizes is TINY else dataset
    train = load_dataset(name, data_root, train=True, augment=True, cutout=16)
    test = load_dataset(name, data_root, train=False)
    if sizes.epochs_images:
        train = _first(train, sizes.epochs_images)
        test = _first(test, sizes.epochs_images // 2)
    amp = "bf16" if device.type == "cuda" else "off"
    trainer = _eval_trainer(sizes, device, amp, True, False, train.in_channels)
    workers = 8 if device.type == "cuda" and name != "digits" else 0
    data = EvalData(train, test, sizes.eval_batch, workers, 0, DistInfo(), trainer.config.run, device)
    epochs = []
    for epoch in range(2):
        trained = trainer.train_epoch(data.train_epoch(epoch), epoch, "")
        scored = trainer.evaluate(data.test, train.num_classes)
        epochs.append({"epoch": epoch + 1, "train_loss": trained["loss"], "test_loss": scored["loss"],
                       "test_top1": scored["top1"]})
    return epochs


def _first(data: Any, n: int) -> Any:
    """The same ImageData over its first n images."""
    return type(data)(Subset(data.dataset, range(min(n, len(data.dataset)))), data.in_channels, data.size,
                      data.num_classes)


# ----- output -----

def format_table(rows: list[dict[str, Any]], epochs: list[dict[str, float]], device: str) -> str:
    lines = [f"gpu_check on {device}",
             f"{'row':<16} {'amp':<5} {'chlast':<6} {'compile':<7} {'rate':>10} {'unit':<9} {'peak MiB':>9}"]
    for r in rows:
        lines.append(f"{r['row']:<16} {r['amp']:<5} {'on' if r['channels_last'] else 'off':<6} "
                     f"{'on' if r['compile'] else 'off':<7} {r['rate']:>10.2f} {r['unit']:<9} {r['peak_mib']:>9.1f}")
    for e in epochs:
        lines.append(f"eval epoch {e['epoch']}: train loss {e['train_loss']:.4f}  test loss {e['test_loss']:.4f}  "
                     f"test top-1 {e['test_top1']:.2f}%")
    return "\n".join(lines)


def _progress(row: dict[str, Any]) -> None:
    print(f"measured {row['row']} amp={row['amp']} channels_last={row['channels_last']} compile={row['compile']}: "
          f"{row['rate']:.2f} {row['unit']}{'  ' + row['error'] if 'error' in row else ''}", flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = OneLineParser(prog="gpu_check.py", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="tiny sizes on the CPU (CI)")
    parser.add_argument("--dataset", default="cifar10", choices=("cifar10", "cifar10_jpeg"),
                        help="the two-epoch eval's dataset (full mode)")
    parser.add_argument("--data-root", default="~/.cache/pdarts-nas/cifar10", help="its data.root (full mode)")
    parser.add_argument("--json", metavar="OUT", help="also write the rows and epochs as JSON")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    with exit_on_user_error():
        args = parse_args(argv)
        if not args.cpu and not torch.cuda.is_available():
            raise UserError("no CUDA device is visible; run on a GPU machine, or pass --cpu for the tiny CPU mode")
        if not args.cpu and not Path(args.data_root).expanduser().exists():
            raise UserError(f"--data-root {args.data_root} does not exist; point it at the folder holding "
                            "cifar-10-batches-py")
        device = torch.device("cpu" if args.cpu else "cuda")
        sizes = TINY if args.cpu else FULL
        set_cudnn_benchmark(True, device)
        torch.manual_seed(0)
        rows = []
        for row in table_rows(sizes, device):
            rows.append(row)
            _progress(row)
        epochs = two_epochs(sizes, device, args.dataset, args.data_root)
        print(f"two epochs: train loss {epochs[0]['train_loss']:.4f} -> {epochs[1]['train_loss']:.4f}", flush=True)
        if sizes.compile_rows:
            rows.append(compile_row(sizes, device))
            _progress(rows[-1])
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores, " \
            f"{torch.get_num_threads()} threads)"
        print(format_table(rows, epochs, name))
        if args.json:
            write_record(Path(args.json), {"device": name, "mode": "cpu" if args.cpu else "full", "rows": rows,
                                           "epochs": epochs, "torch": torch.__version__})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
