"""One-shot training of a chain SuperNet and stand-alone training of its subnets (Bender et al. 2018).

One-shot: every minibatch trains one subnet, drawn uniformly (default) or from a given distribution
over the subnets; only the ops it runs (and the shared parts) get gradient and are updated. With
path dropout > 0 a minibatch instead trains the all-on network with every op dropped independently
with that probability (at least one kept per block), the regime of the original study. With `fair`
sampling (FairNAS's strict fairness) a minibatch trains K subnets that together use every op of
every block exactly once (a random permutation per block), their gradients summed into one update.
Both trainings use Adadelta with lr 1.0 by default, as the original study did, decayed to 0 by a
per-step cosine (with a constant lr the final-epoch test top-1 of a stand-alone subnet swung by up
to 14 points between epochs on 5k MNIST images), and report the test top-1 after every epoch.

A subnet's one-shot score can be taken after BatchNorm recalibration: every BatchNorm's running
statistics are re-estimated on training images with that subnet's path, then restored after scoring.
Training uses batch statistics, while the running statistics a shared op ends up with mix the inputs
of every path that ran it.
"""
from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from nas.core.data import EpochSampler, make_loader
from nas.core.errors import UserError
from nas.core.metrics import accuracy
from search_spaces.chain import BlockChoices, ChainSuperNet, Choice, enumerate_choices, sample_path_dropout

Batches = list[tuple[torch.Tensor, torch.Tensor]]
OPTIMIZERS = ("adadelta", "sgd", "adam")
LR_SCHEDULES = ("cosine", "constant")
SAMPLINGS = ("uniform", "fair")


@dataclass
class TrainConfig:
    """How a supernet or a stand-alone subnet is trained."""

    epochs: int = 3
    batch_size: int = 64
    optimizer: str = "adadelta"
    lr: float = 1.0
    lr_schedule: str = "cosine"  # per-step cosine decay to 0 steadies the final-epoch accuracy
    path_dropout: float = 0.0
    sampling: str = "uniform"  # one-shot only: one subnet a minibatch, or `fair` (every op once a minibatch)
    eval_batch_size: int = 250

    def validate(self) -> None:
        if self.epochs <= 0 or self.batch_size < 2 or self.eval_batch_size <= 0:
            raise UserError(f"epochs must be positive and batch size at least 2, got {self.epochs} and "
                            f"{self.batch_size}")
        if self.optimizer not in OPTIMIZERS:
            raise UserError(f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        if self.lr <= 0:
            raise UserError(f"learning rate must be positive, got {self.lr}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise UserError(f"unknown lr schedule {self.lr_schedule!r}; choose one of {', '.join(LR_SCHEDULES)}")
        if not 0.0 <= self.path_dropout < 1.0:
            raise UserError(f"path dropout must be in [0, 1), got {self.path_dropout}")
        if self.sampling not in SAMPLINGS:
            raise UserError(f"unknown sampling {self.sampling!r}; choose one of {', '.join(SAMPLINGS)}")
        if self.sampling == "fair" and self.path_dropout > 0:
            raise UserError("fair sampling and path dropout exclude each other: path dropout trains the all-on network")


def make_optimizer(name: str, params: Any, lr: float) -> torch.optim.Optimizer:
    """Adadelta, SGD (momentum 0.9) or Adam at learning rate `lr`."""
    if name == "adadelta":
        return torch.optim.Adadelta(params, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    raise UserError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


def fixed_batches(dataset: Dataset, batch_size: int) -> Batches:
    """The dataset as a list of (images, labels) batches in order, built once and reused by every evaluation."""
    return list(DataLoader(dataset, batch_size=batch_size, shuffle=False))


def shuffled_batches(dataset: Dataset, count: int, batch_size: int, seed: int) -> Batches:
    """`count` images drawn at random (seeded) in random order, as fixed batches: every batch mixes classes even
    when the files are sorted by class, as BatchNorm recalibration needs."""
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:count].tolist()
    return fixed_batches(Subset(dataset, order), batch_size)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               paths: Sequence[BlockChoices | None] | None = None) -> float:
    """One update: cross-entropy of model(x), or of model(x, path) for each of `paths` with the gradients summed.

    Parameters no forward used get no gradient (grads set to None first), and a path with nothing trainable
    (frozen or parameter-free ops only) gets no backward pass; returns the mean loss.
    """
    model.train()
    optimizer.zero_grad(set_to_none=True)
    losses = []
    for path in paths if paths is not None else [None]:
        loss = F.cross_entropy(model(x) if paths is None else model(x, path), y)
        if loss.requires_grad:
            loss.backward()
        losses.append(loss.item())
    optimizer.step()
    return sum(losses) / len(losses)


@torch.no_grad()
def predict(model: nn.Module, batches: Batches, **forward_kwargs: Any) -> torch.Tensor:
    """Eval-mode logits of every batch, concatenated (on the CPU)."""
    model.eval()
    device = _device(model)
    return torch.cat([model(x.to(device), **forward_kwargs).cpu() for x, _ in batches])


def evaluate(model: nn.Module, batches: Batches, **forward_kwargs: Any) -> float:
    """Top-1 accuracy (percent) of the model on `batches`."""
    return accuracy(predict(model, batches, **forward_kwargs), torch.cat([y for _, y in batches]))[0]


def _batch_norms(model: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


@contextmanager
def bn_stats_kept(model: nn.Module) -> Iterator[None]:
    """Restore every BatchNorm's running statistics and momentum on exit."""
    saved = [(m, m.momentum, {k: v.clone() for k, v in m.named_buffers()}) for m in _batch_norms(model)]
    try:
        yield
    finally:
        for m, momentum, buffers in saved:
            m.momentum = momentum
            for k, v in buffers.items():
                getattr(m, k).copy_(v)


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Batches, **forward_kwargs: Any) -> None:
    """Re-estimate every BatchNorm's running statistics as the plain average over `batches` (the rest in eval mode)."""
    model.eval()
    for m in _batch_norms(model):
        m.reset_running_stats()
        m.momentum = None
        m.train()
    device = _device(model)
    for x, _ in batches:
        model(x.to(device), **forward_kwargs)
    model.eval()


def oneshot_predict(supernet: ChainSuperNet, batches: Batches, path: BlockChoices | None,
                    recal_batches: Batches | None = None) -> torch.Tensor:
    """Eval-mode logits of one path, after BatchNorm recalibration on `recal_batches` when given (undone after)."""
    if not recal_batches:
        return predict(supernet, batches, path=path)
    with bn_stats_kept(supernet):
        recalibrate_bn(supernet, recal_batches, path=path)
        return predict(supernet, batches, path=path)


def score_subnets(supernet: ChainSuperNet, choices: Sequence[Choice], batches: Batches,
                  recal_batches: Batches | None = None) -> dict[Choice, float]:
    """One-shot top-1 (percent) of every choice on `batches`, each recalibrated first when `recal_batches` is given."""
    labels = torch.cat([y for _, y in batches])
    return {tuple(c): accuracy(oneshot_predict(supernet, batches, c, recal_batches), labels)[0] for c in choices}


class SubnetSampler:
    """Draws the paths of each one-shot minibatch: one subnet (uniform or from `probs`), one path-dropout path,
    or with `fair` K subnets that use every op of every block once."""

    def __init__(self, num_blocks: int, num_ops: int, generator: torch.Generator,
                 probs: Sequence[float] | None = None, path_dropout: float = 0.0, fair: bool = False):
        if sum((probs is not None, path_dropout > 0, fair)) > 1:
            raise UserError("a subnet distribution, path dropout and fair sampling exclude each other")
        self.num_blocks, self.num_ops = num_blocks, num_ops
        self.generator = generator
        self.path_dropout = path_dropout
        self.fair = fair
        self.choices: list[Choice] | None = None
        if probs is not None:
            self.choices = enumerate_choices(num_blocks, num_ops)
            self.probs = torch.as_tensor(probs, dtype=torch.float64)
            if self.probs.shape != (len(self.choices),) or (self.probs < 0).any() or self.probs.sum() <= 0:
                raise UserError(f"subnet distribution needs {len(self.choices)} non-negative weights with a "
                                f"positive sum, got {list(probs)}")

    def __call__(self) -> list[BlockChoices]:
        if self.path_dropout > 0:
            return [sample_path_dropout(self.num_blocks, self.num_ops, self.path_dropout, self.generator)]
        if self.fair:
            perms = [torch.randperm(self.num_ops, generator=self.generator).tolist() for _ in range(self.num_blocks)]
            return list(zip(*perms))
        if self.choices is not None:
            return [self.choices[int(torch.multinomial(self.probs, 1, generator=self.generator))]]
        return [tuple(torch.randint(self.num_ops, (self.num_blocks,), generator=self.generator).tolist())]


def _fit(model: nn.Module, train_set: Dataset, cfg: TrainConfig, seed: int,
         next_paths: Callable[[], list[BlockChoices]] | None, after_epoch: Callable[[], str], desc: str) -> list[float]:
    """Train for cfg.epochs, on the paths next_paths() draws per minibatch when given; frozen parameters
    (requires_grad False) stay out of the optimizer. Returns the training seconds up to each epoch's end
    (evaluation excluded)."""
    cfg.validate()
    device = _device(model)
    optimizer = make_optimizer(cfg.optimizer, [p for p in model.parameters() if p.requires_grad], cfg.lr)
    sampler = EpochSampler(list(range(len(train_set))), seed, cfg.batch_size)
    loader = make_loader(train_set, sampler, cfg.batch_size)
    steps = cfg.epochs * len(loader) if cfg.lr_schedule == "cosine" else 0
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / steps)) if steps else 1.0)
    bar = tqdm(range(cfg.epochs), desc=desc, leave=False, disable=None)
    seconds, elapsed = [], 0.0
    for epoch in bar:
        sampler.set_epoch(epoch)
        start = time.perf_counter()
        for x, y in loader:
            train_step(model, optimizer, x.to(device), y.to(device), None if next_paths is None else next_paths())
            scheduler.step()
        elapsed += time.perf_counter() - start
        seconds.append(elapsed)
        bar.set_postfix_str(after_epoch())
    return seconds


@dataclass
class OneShotRun:
    """What one-shot training measured: per studied choice its test top-1 after every epoch, and the training
    seconds up to each epoch's end (evaluation excluded)."""

    curves: dict[Choice, list[float]]
    train_s: list[float] = field(default_factory=list)


def train_oneshot(supernet: ChainSuperNet, train_set: Dataset, test_batches: Batches, cfg: TrainConfig,
                  eval_choices: Sequence[Choice], seed: int, probs: Sequence[float] | None = None,
                  recal_batches: Batches | None = None) -> OneShotRun:
    """Train the supernet one-shot, scoring every choice in `eval_choices` on the test batches after every epoch
    (after BatchNorm recalibration on `recal_batches` when given)."""
    generator = torch.Generator().manual_seed(seed)
    sample = SubnetSampler(supernet.num_blocks, supernet.num_ops, generator, probs, cfg.path_dropout,
                           cfg.sampling == "fair")
    run = OneShotRun({tuple(c): [] for c in eval_choices})

    def after_epoch() -> str:
        for choice, acc in score_subnets(supernet, eval_choices, test_batches, recal_batches).items():
            run.curves[choice].append(acc)
        return f"best one-shot top-1 {max(c[-1] for c in run.curves.values()):.2f}"

    run.train_s = _fit(supernet, train_set, cfg, seed, sample, after_epoch, f"one-shot ({supernet.sharing})")
    return run


def train_standalone(net: nn.Module, train_set: Dataset, test_batches: Batches, cfg: TrainConfig,
                     seed: int) -> tuple[list[float], list[float]]:
    """Train a plain network; return its test top-1 after every epoch and the training seconds up to each epoch's end
    (evaluation excluded)."""
    curve: list[float] = []

    def after_epoch() -> str:
        curve.append(evaluate(net, test_batches))
        return f"top-1 {curve[-1]:.2f}"

    seconds = _fit(net, train_set, cfg, seed, None, after_epoch, f"stand-alone {getattr(net, 'choice', '')}")
    return curve, seconds
