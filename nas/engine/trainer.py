"""The eval trainer: a Genotype's NetworkEval trained from scratch with the DARTS / P-DARTS recipe.

Runs in one process or under torchrun (DDP, DistributedSampler, metrics all-reduced, rank 0 writes).
Data order depends only on (seed, epoch), and the model, optimizer, scheduler, AMP scaler and every
rank's RNG states are checkpointed atomically at each epoch end, so a run killed at any moment and
continued with `--resume` ends (on CPU) with the weights of an uninterrupted run.
"""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.distributed as tdist
import torch.nn.functional as F
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset
from tqdm import tqdm

from nas.core.accel import Precision, compiled, loader_options, memory_format, set_cudnn_benchmark
from nas.core.checkpoint import CHECKPOINT, load_checkpoint, rng_state, save_checkpoint, seed_everything, set_rng_state
from nas.core.config import RunConfigBase, SGDConfig, build_dataclass, load_config, to_dict
from nas.core.data import DATASETS, ImageData, load_dataset
from nas.core.device import resolve_device
from nas.core.distributed import DistInfo, all_sum, broadcast_buffers, dist_info, gather_objects, process_group
from nas.core.errors import UserError
from nas.core.metrics import accuracy, count_parameters, flops_millions
from nas.core.records import make_record, read_record, write_record
from nas.report.monitor import EVAL_TAGS, Monitor
from search_spaces.darts.genotype import (
    SHIPPED_DIR,
    Genotype,
    genotype_from_dict,
    load_genotype,
    shipped_genotype_names,
)
from search_spaces.registry import space_class

KIND = "eval"
RECORD = "genotype.json"
SCHEDULERS = ("cosine", "step")
EVAL_SPACE = space_class("darts")  # the eval trainer trains genotypes of the DARTS cell space
NETWORKS = EVAL_SPACE.eval_networks
# Eval dataset names: nas.core.data's, plus `imagenet`, an ImageFolder root (train/ and val/) trained with the ImageNet
# network; `auto` picks that network for it and for `imagefolder` (nas.core.data crops both to 224x224).
EVAL_DATASETS: tuple[str, ...] = (*DATASETS, "imagenet")
IMAGENET_DATASETS: tuple[str, ...] = ("imagenet", "imagefolder")
# Keys that may differ on --resume: where the data lives and how it is fed; the rest fixes the run's result.
RESUME_KEYS = ("data.root", "data.download", "data.num_workers", "run.device", "run.amp", "run.channels_last",
               "run.cudnn_benchmark", "run.pin_memory", "run.persistent_workers", "run.compile_eval", "run.out_dir")
# What a run saved before run.amp and run.channels_last were typed meant by its values there (null: off on the CPU).
LEGACY_RUN_VALUES = {"amp": {None: "off", False: "off", True: "bf16"}, "channels_last": {None: False}}


# ---------------------------------------------------------------------------------------------- config

@dataclass
class EvalDataConfig:
    """The `data:` section: which dataset and how it is fed."""

    dataset: str = "cifar10"  # one of EVAL_DATASETS
    root: str = "data"
    download: bool = False
    cutout: int = 16
    num_workers: int | None = None  # None: 0 for in-memory sets, else min(8, cores per process)


@dataclass
class EvalModelConfig:
    """The `model:` section: which NetworkEval (CIFAR or ImageNet stems), its scale and its regularisers."""

    network: str = "auto"  # cifar | imagenet (DARTS's NetworkCIFAR / NetworkImageNet) | auto: from the dataset
    C: int = 36
    layers: int = 20
    auxiliary: bool = True
    auxiliary_weight: float = 0.4
    drop_path_prob: float = 0.2  # reached at the last epoch, scaled linearly from 0


@dataclass
class EvalTrainConfig(SGDConfig):
    """The `train:` section: SGD, the lr schedule (cosine or step per epoch) and the loss."""

    epochs: int = 600
    batch_size: int = 96  # global: split evenly over the processes of a DDP run
    scheduler: str = "cosine"
    lr_gamma: float = 0.97  # per-epoch decay of the step scheduler
    label_smoothing: float = 0.0


@dataclass
class EvalRunConfig(RunConfigBase):
    """The `run:` section: seed, device, the GPU-path switches, and torch.compile of the network (`compile_eval`)."""

    compile_eval: bool = False


@dataclass
class EvalConfig:
    """A whole eval run; the defaults are the DARTS / P-DARTS CIFAR-10 recipe."""

    data: EvalDataConfig = field(default_factory=EvalDataConfig)
    model: EvalModelConfig = field(default_factory=EvalModelConfig)
    train: EvalTrainConfig = field(default_factory=EvalTrainConfig)
    run: EvalRunConfig = field(default_factory=EvalRunConfig)

    def validate(self) -> None:
        """Raise UserError on the first value that cannot work."""
        d, m, t, r = self.data, self.model, self.train, self.run
        checks = [
            (d.dataset in EVAL_DATASETS, f"data.dataset {d.dataset!r} is unknown; choose one of "
                                         f"{', '.join(EVAL_DATASETS)}"),
            (d.cutout >= 0, f"data.cutout must be >= 0 (0 disables it), got {d.cutout}"),
            (d.num_workers is None or d.num_workers >= 0, f"data.num_workers must be >= 0, got {d.num_workers}"),
            (m.network in ("auto", *NETWORKS), f"model.network {m.network!r} is unknown; choose auto, "
                                               f"{', '.join(NETWORKS)}"),
            (m.C >= 1, f"model.C must be >= 1, got {m.C}"),
            (self.network != "imagenet" or m.C % 2 == 0, f"model.C must be even for the ImageNet network (its first "
                                                         f"cell halves C-channel maps), got {m.C}"),
            (m.layers >= 3, f"model.layers must be >= 3 (two reduction cells and a normal cell), got {m.layers}"),
            (m.auxiliary_weight >= 0, f"model.auxiliary_weight must be >= 0, got {m.auxiliary_weight}"),
            (0 <= m.drop_path_prob < 1, f"model.drop_path_prob must be in [0, 1), got {m.drop_path_prob}"),
            (t.epochs >= 1, f"train.epochs must be >= 1, got {t.epochs}"),
            (t.batch_size >= 2, f"train.batch_size must be >= 2 (BatchNorm needs 2 images), got {t.batch_size}"),
            (t.scheduler in SCHEDULERS, f"train.scheduler {t.scheduler!r} is unknown; choose one of "
                                        f"{', '.join(SCHEDULERS)}"),
            (0 < t.lr_gamma <= 1, f"train.lr_gamma must be in (0, 1], got {t.lr_gamma}"),
            (0 <= t.label_smoothing < 1, f"train.label_smoothing must be in [0, 1), got {t.label_smoothing}"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)
        t.validate_sgd("train")
        r.validate_device()

    @property
    def network(self) -> str:
        """The network that model.network names; auto: imagenet for IMAGENET_DATASETS, else cifar."""
        if self.model.network != "auto":
            return self.model.network
        return "imagenet" if self.data.dataset in IMAGENET_DATASETS else "cifar"


def _lookup(config: Any, dotted: str) -> tuple[Any, str]:
    """The object holding the last part of a dotted key, and that part's name."""
    *parents, name = dotted.split(".")
    for part in parents:
        config = getattr(config, part)
    return config, name


def resumed_config(saved: dict[str, Any], overrides: Sequence[str]) -> EvalConfig:
    """The saved config of a run; overrides may change only RESUME_KEYS (others must repeat the saved value)."""
    # A run saved before model.network existed built the CIFAR network whatever its dataset.
    saved = {**saved, "model": {"network": "cifar", **saved.get("model", {})}}
    run = dict(saved.get("run", {}))
    for key, meanings in LEGACY_RUN_VALUES.items():
        if key in run and not isinstance(run[key], str) and run[key] in meanings:
            run[key] = meanings[run[key]]
    saved["run"] = run
    config = build_dataclass(EvalConfig, saved)
    if overrides:
        wanted = load_config(EvalConfig, None, overrides)  # checks keys and types
        for key in dict.fromkeys(a.partition("=")[0].strip() for a in overrides):
            (old_owner, name), (new_owner, _) = _lookup(config, key), _lookup(wanted, key)
            old, new = getattr(old_owner, name), getattr(new_owner, name)
            if old != new and key not in RESUME_KEYS:
                raise UserError(f"--resume: {key} was {old!r} in this run and cannot change to {new!r} on resume; "
                                f"start a new run with --run-dir (changeable on resume: {', '.join(RESUME_KEYS)})")
            setattr(old_owner, name, new)
    config.validate()
    return config


# ---------------------------------------------------------------------------------------------- setup

def genotype_source(spec: str, genotype: Genotype) -> tuple[str, dict[str, Any]]:
    """A short name for run directories and the record to extend: the source record, or a new one."""
    spec = spec.strip()
    if spec.startswith("Genotype"):
        return "custom", make_record(genotype, space="darts", source="genotype string given to train_eval.py")
    path = SHIPPED_DIR / f"{spec}.json" if spec in shipped_genotype_names() else Path(spec)
    name = path.parent.name if path.stem == "genotype" else path.stem
    return name, read_record(path)


@dataclass
class RunSetup:
    """Everything decided and validated before any training starts."""

    config: EvalConfig
    genotype: Genotype
    record: dict[str, Any]
    run_dir: Path
    state: dict[str, Any] | None  # the checkpoint to resume from


def prepare(genotype_spec: str | None, config_path: str | None, run_dir: str | None, resume: str | None,
            overrides: Sequence[str]) -> RunSetup:
    """Read and check the config, the genotype and the run directory (new run or --resume)."""
    if resume is None:
        if genotype_spec is None:
            raise UserError("--genotype is required (a shipped name like PDARTS, a record .json or 'Genotype(...)'); "
                            "or continue a run with --resume RUN_DIR")
        config = load_config(EvalConfig, config_path, overrides)
        genotype = load_genotype(genotype_spec)
        name, record = genotype_source(genotype_spec, genotype)
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        path = Path(run_dir) if run_dir else Path(config.run.out_dir) / f"eval-{name}-{stamp}"
        if (path / CHECKPOINT).exists():
            raise UserError(f"{path} already holds a checkpoint; continue it with --resume {path} or choose another "
                            "--run-dir")
        return RunSetup(config, genotype, record, path, None)
    if run_dir is not None and Path(run_dir).resolve() != Path(resume).resolve():
        raise UserError(f"--run-dir {run_dir} and --resume {resume} differ; a resumed run stays in its directory")
    if config_path is not None:
        raise UserError("-c/--config cannot be used with --resume: the run keeps its saved config")
    state = load_checkpoint(resume, KIND)
    genotype = genotype_from_dict(state["genotype"])
    if genotype_spec is not None and load_genotype(genotype_spec) != genotype:
        raise UserError(f"--genotype {genotype_spec} differs from the genotype of the run in {resume}; leave "
                        "--genotype out to resume, or start a new run")
    record_path = Path(resume) / RECORD
    record = read_record(record_path) if record_path.exists() else make_record(genotype, source="resumed eval run")
    return RunSetup(resumed_config(state["config"], overrides), genotype, record, Path(resume), state)


# ---------------------------------------------------------------------------------------------- data

def _loader_seed(seed: int, epoch: int, rank: int) -> int:
    return (seed * 1_000_003 + epoch) * 1_009 + rank


class EvalData:
    """Train and test loaders whose order and worker seeds depend only on (seed, epoch, rank)."""

    def __init__(self, train: ImageData, test: ImageData, batch_size: int, num_workers: int | None, seed: int,
                 info: DistInfo, run: RunConfigBase, device: torch.device):
        """`run` and `device` decide pinned memory and persistent workers (nas.core.accel.loader_options)."""
        per_rank = batch_size // info.world_size
        workers = num_workers if num_workers is not None else self._auto_workers(train, info)
        feed = loader_options(run, device, workers)
        self.seed, self.rank = seed, info.rank
        self.sampler = DistributedSampler(train.dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True,
                                          seed=seed)
        self.generator = torch.Generator()
        self.train = DataLoader(train.dataset, batch_size=per_rank, sampler=self.sampler, num_workers=workers,
                                drop_last=len(self.sampler) % per_rank == 1, generator=self.generator, **feed)
        shard = list(range(info.rank, len(test.dataset), info.world_size))  # every test image exactly once
        self.test = DataLoader(test.dataset, batch_size=per_rank, sampler=shard, num_workers=workers, **feed)

    @staticmethod
    def _auto_workers(data: ImageData, info: DistInfo) -> int:
        if isinstance(data.dataset, TensorDataset):
            return 0
        return min(8, max(1, (os.cpu_count() or 1) // info.world_size - 1))

    def train_epoch(self, epoch: int) -> DataLoader:
        """The training loader for `epoch`: reshuffled and its workers reseeded from (seed, epoch, rank)."""
        self.sampler.set_epoch(epoch)
        self.generator.manual_seed(_loader_seed(self.seed, epoch, self.rank))
        return self.train


# ---------------------------------------------------------------------------------------------- training

class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; the message names the epoch, the step and the checkpoint kept."""


class Trainer:
    """One NetworkEval with its optimizer, lr schedule and AMP state, trained on this process's shard."""

    def __init__(self, config: EvalConfig, net: nn.Module, device: torch.device, info: DistInfo):
        self.config, self.net, self.device, self.info = config, net, device, info
        run, train = config.run, config.train
        self.memory_format = memory_format(run.channels_last)
        net.to(device=device, memory_format=self.memory_format)
        model: nn.Module = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None) \
            if info.world_size > 1 else net
        self.model = compiled(model, self._warn) if run.compile_eval else model
        self.params = list(net.parameters())
        self.optimizer = torch.optim.SGD(self.params, lr=train.lr, momentum=train.momentum,
                                         weight_decay=train.weight_decay)
        if train.scheduler == "cosine":
            self.scheduler: torch.optim.lr_scheduler.LRScheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
                self.optimizer, T_max=train.epochs, eta_min=train.lr_min)
        else:
            self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=1, gamma=train.lr_gamma)
        self.amp = Precision(run.amp, device)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=train.label_smoothing)

    def _warn(self, message: str) -> None:
        if self.info.is_main:
            tqdm.write(message)

    @property
    def precision(self) -> str:
        return self.amp.name

    def state_dict(self) -> dict[str, Any]:
        """Model, optimizer, lr schedule and the GradScaler (its scale and growth tracker under fp16, else empty)."""
        return {"model": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.amp.scaler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state["scaler"]:
            self.amp.scaler.load_state_dict(state["scaler"])

    def _batch(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        return x, y.to(self.device, non_blocking=True)

    def _all_sum(self, values: list[float]) -> list[float]:
        """Sums over this trainer's ranks (a one-process trainer inside a torchrun search keeps its own)."""
        return all_sum(values) if self.info.world_size > 1 else values

    def _check_finite(self, loss: torch.Tensor, epoch: int, step: int, last_good: str) -> None:
        """Raise NonFiniteLoss on every rank at the same step when any rank's loss is NaN or infinite."""
        bad = (~torch.isfinite(loss.detach())).float()
        if self.info.world_size > 1:
            tdist.all_reduce(bad)
        if bad.item():
            local = loss.item()
            what = local if not math.isfinite(local) else "non-finite on another process"
            raise NonFiniteLoss(f"loss became {what} at epoch {epoch + 1} step {step + 1}; stopped. {last_good} "
                                "Lower train.lr or check the data, then start a new run or resume.")

    def train_epoch(self, loader: DataLoader, epoch: int, last_good: str) -> dict[str, float]:
        """One pass over this rank's shard; returns loss and top-1 summed over all ranks."""
        self.model.train()
        clip, aux_weight = self.config.train.grad_clip, self.config.model.auxiliary_weight
        loss_sum = correct = count = 0.0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}", leave=False,
                   disable=not (self.info.is_main and sys.stdout.isatty()))
        for step, (x, y) in enumerate(bar):
            x, y = self._batch(x, y)
            with self.amp.autocast():
                logits, aux = self.model(x)
                loss = self.criterion(logits, y)
                total = loss if aux is None else loss + aux_weight * self.criterion(aux, y)
            self._check_finite(total, epoch, step, last_good)
            self.optimizer.zero_grad(set_to_none=True)
            self.amp.backward(total)
            self.amp.step(self.optimizer, self.params, clip)
            n = y.size(0)
            loss_sum += loss.item() * n
            correct += round(accuracy(logits, y)[0] * n / 100)
            count += n
            bar.set_postfix(loss=f"{loss_sum / count:.3f}", refresh=False)
        loss_sum, correct, count = self._all_sum([loss_sum, correct, count])
        return {"loss": loss_sum / count, "top1": 100 * correct / count, "samples": int(count)}

    @torch.no_grad()
    def evaluate(self, loader: DataLoader, num_classes: int) -> dict[str, float]:
        """Test loss, top-1 and top-5 over the whole test set (each rank scores its shard)."""
        if self.info.world_size > 1:  # every rank scores with rank 0's BatchNorm statistics
            broadcast_buffers(self.net)
        self.net.eval()
        k = min(5, num_classes)
        loss_sum = c1 = c5 = count = 0.0
        for x, y in loader:
            x, y = self._batch(x, y)
            with self.amp.autocast():
                logits, _ = self.net(x)
            loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").item()
            top1, top5 = accuracy(logits, y, (1, k))
            c1, c5, count = c1 + round(top1 * y.size(0) / 100), c5 + round(top5 * y.size(0) / 100), count + y.size(0)
        loss_sum, c1, c5, count = self._all_sum([loss_sum, c1, c5, count])
        return {"loss": loss_sum / count, "top1": 100 * c1 / count, "top5": 100 * c5 / count, "samples": int(count)}



# ---------------------------------------------------------------------------------------------- the run

def _train_seed(seed: int, rank: int) -> int:
    """Per-rank stream for drop path and augmentation, distinct from the model-initialisation seed."""
    return seed + 7_919 * (rank + 1)


def _restore_rng(states: list[dict[str, Any]], seed: int, epoch: int, info: DistInfo, log: Any) -> None:
    if len(states) == info.world_size:
        set_rng_state(states[info.rank])
        return
    log(f"warning: the checkpoint has RNG states of {len(states)} processes, this run has {info.world_size}; "
        "reseeding (the run continues correctly but is not bit-identical to an uninterrupted one)")
    seed_everything(_train_seed(seed, info.rank) + 104_729 * epoch)


class EvalRun:
    """A configured eval run: builds data and model, trains epoch by epoch, checkpoints and reports."""

    def __init__(self, setup: RunSetup, info: DistInfo):
        self.setup, self.info = setup, info
        cfg = setup.config
        if cfg.train.batch_size % info.world_size:
            raise UserError(f"train.batch_size {cfg.train.batch_size} is the global batch and must divide evenly "
                            f"over {info.world_size} processes")
        self.device = resolve_device(cfg.run.device, info.local_rank)
        d = cfg.data
        name = "imagefolder" if d.dataset == "imagenet" else d.dataset
        train = load_dataset(name, d.root, train=True, augment=True, cutout=d.cutout, download=d.download)
        test = load_dataset(name, d.root, train=False, download=d.download)
        self.num_classes, self.input_shape = train.num_classes, (1, train.in_channels, train.size, train.size)
        seed_everything(cfg.run.seed)
        net = EVAL_SPACE.eval_network(setup.genotype, train, C=cfg.model.C, layers=cfg.model.layers,
                                      auxiliary=cfg.model.auxiliary, network=cfg.network)
        self.params_m = count_parameters(net, exclude="auxiliary") / 1e6
        self.flops_m = flops_millions(net, self.input_shape)
        self.data = EvalData(train, test, cfg.train.batch_size, d.num_workers, cfg.run.seed, info, cfg.run,
                             self.device)
        self.net = net

    def log(self, message: str) -> None:
        if self.info.is_main:
            tqdm.write(message)

    def _start(self, trainer: Trainer) -> tuple[int, dict[str, Any]]:
        """(first epoch to train, progress so far) for a new or a resumed run."""
        cfg, state = self.setup.config, self.setup.state
        progress: dict[str, Any] = {"best_top1": -1.0, "best_epoch": 0, "elapsed_s": 0.0, "last": {}}
        if state is None:
            seed_everything(_train_seed(cfg.run.seed, self.info.rank))
            return 0, progress
        trainer.load_state_dict(state)
        _restore_rng(state["rng"], cfg.run.seed, state["epoch"], self.info, self.log)
        progress.update(state["progress"])
        self.log(f"resumed {self.setup.run_dir} after epoch {state['epoch']}/{cfg.train.epochs}")
        return state["epoch"], progress

    def _write_start_files(self) -> None:
        run_dir = self.setup.run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        if self.setup.state is None:
            (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(self.setup.config), sort_keys=False))
            write_record(run_dir / RECORD, self.setup.record)

    def train(self) -> dict[str, Any]:
        """Train the remaining epochs; returns the `metrics.eval` entry written into the run's record."""
        cfg, info, run_dir = self.setup.config, self.info, self.setup.run_dir
        trainer = Trainer(cfg, self.net, self.device, info)
        start, progress = self._start(trainer)
        if info.is_main:
            self._write_start_files()
        writer = Monitor(run_dir / "tb", purge_step=start, enabled=info.is_main)
        self.log(f"run {run_dir} | genotype {self.setup.genotype} | {cfg.data.dataset}, {cfg.network} network | "
                 f"{self.params_m:.3f}M params (aux excluded), {self.flops_m:.1f}M FLOPs | {self.device}, "
                 f"{info.world_size} process(es), {trainer.precision}")
        last_good = "No checkpoint was written yet."
        if start:
            last_good = f"The last good checkpoint {run_dir / CHECKPOINT} (epoch {start}) is kept."
        try:
            for epoch in range(start, cfg.train.epochs):
                tic = time.perf_counter()
                self.net.drop_path_prob = cfg.model.drop_path_prob * epoch / cfg.train.epochs
                lr = trainer.optimizer.param_groups[0]["lr"]
                train = trainer.train_epoch(self.data.train_epoch(epoch), epoch, last_good)
                test = trainer.evaluate(self.data.test, self.num_classes)
                trainer.scheduler.step()
                if test["top1"] > progress["best_top1"]:
                    progress["best_top1"], progress["best_epoch"] = test["top1"], epoch + 1
                progress["elapsed_s"] += time.perf_counter() - tic
                progress["last"] = {"train_loss": train["loss"], "train_top1": train["top1"],
                                    "train_samples": train["samples"], "test_loss": test["loss"],
                                    "top1": test["top1"], "top5": test["top5"], "test_samples": test["samples"]}
                self._save(trainer, epoch + 1, progress)
                last_good = f"The last good checkpoint {run_dir / CHECKPOINT} (epoch {epoch + 1}) is kept."
                values = {"train/loss": train["loss"], "train/top1": train["top1"], "test/loss": test["loss"],
                          "test/top1": test["top1"], "test/top5": test["top5"], "lr": lr,
                          "drop_path_prob": self.net.drop_path_prob}
                for tag_name in EVAL_TAGS:
                    writer.scalar(tag_name, values[tag_name], epoch)
                writer.flush()
                self.log(f"epoch {epoch + 1}/{cfg.train.epochs} | train loss {train['loss']:.4f} top1 "
                         f"{train['top1']:.2f} | test loss {test['loss']:.4f} top1 {test['top1']:.2f} top5 "
                         f"{test['top5']:.2f} | lr {lr:.6f} drop path {self.net.drop_path_prob:.3f} | "
                         f"{time.perf_counter() - tic:.1f}s")
        finally:
            writer.close()
        return self._finish(trainer, progress)

    def _save(self, trainer: Trainer, epochs_done: int, progress: dict[str, Any]) -> None:
        rng = gather_objects(rng_state())  # collective: every rank takes part, rank 0 writes
        if self.info.is_main:
            state = {**trainer.state_dict(), "rng": rng, "epoch": epochs_done, "progress": progress,
                     "config": to_dict(self.setup.config), "genotype": self.setup.genotype.to_dict(),
                     "world_size": self.info.world_size}
            save_checkpoint(self.setup.run_dir, state, kind=KIND)

    def _finish(self, trainer: Trainer, progress: dict[str, Any]) -> dict[str, Any]:
        cfg, last = self.setup.config, progress["last"]
        metrics = {"top1": last["top1"], "top5": last["top5"], "test_loss": last["test_loss"],
                   "best_top1": progress["best_top1"], "best_epoch": progress["best_epoch"],
                   "train_loss": last["train_loss"], "train_top1": last["train_top1"],
                   "params_M": round(self.params_m, 6), "flops_M": round(self.flops_m, 3),
                   "epochs": cfg.train.epochs, "dataset": cfg.data.dataset, "test_samples": last["test_samples"],
                   "world_size": self.info.world_size, "batch_size": cfg.train.batch_size, "seed": cfg.run.seed,
                   "network": cfg.network, "C": cfg.model.C, "layers": cfg.model.layers,
                   "precision": trainer.precision,
                   "device": self.device.type, "wall_time_s": round(progress["elapsed_s"], 1),
                   "run_dir": str(self.setup.run_dir)}
        if self.info.is_main:
            record = dict(self.setup.record)
            record["metrics"] = {**record.get("metrics", {}), "eval": metrics}
            write_record(self.setup.run_dir / RECORD, record)
        self.log(f"final: test top-1 {metrics['top1']:.2f}% top-5 {metrics['top5']:.2f}% | params "
                 f"{metrics['params_M']:.2f}M (aux excluded) | FLOPs {metrics['flops_M']:.1f}M | record "
                 f"{self.setup.run_dir / RECORD}")
        return metrics


def run_eval(genotype_spec: str | None, config_path: str | None = None, run_dir: str | None = None,
             resume: str | None = None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Validate everything, then train (under torchrun: one process per GPU); returns `metrics.eval`."""
    info = dist_info()
    setup = prepare(genotype_spec, config_path, run_dir, resume, overrides)
    run = EvalRun(setup, info)
    set_cudnn_benchmark(setup.config.run.cudnn_benchmark, run.device)
    with process_group(info, run.device):
        return run.train()
