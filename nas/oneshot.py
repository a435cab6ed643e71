"""One-shot training of a chain SuperNet and stand-alone training of its subnets (Bender et al. 2018).

One-shot: every minibatch trains one subnet, drawn uniformly (default) or from a given distribution
over the subnets; only the ops it runs (and the shared parts) get gradient and are updated. With
path dropout > 0 a minibatch instead trains the all-on network with every op dropped independently
with that probability (at least one kept per block), the regime of the original study.
Both trainings use Adadelta with lr 1.0 by default, as the original study did, decayed to 0 by a
per-step cosine (with a constant lr the final-epoch test top-1 of a stand-alone subnet swung by up
to 14 points between epochs on 5k MNIST images), and report the test top-1 after every epoch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from nas.data import EpochSampler, make_loader
from nas.errors import UserError
from nas.metrics import accuracy
from search_spaces.chain import ChainSuperNet, Choice, Path, enumerate_choices, sample_path_dropout

Batches = list[tuple[torch.Tensor, torch.Tensor]]
OPTIMIZERS = ("adadelta", "sgd", "adam")
LR_SCHEDULES = ("cosine", "constant")


@dataclass
class TrainConfig:
    """How a supernet or a stand-alone subnet is trained."""

    epochs: int = 3
    batch_size: int = 64
    optimizer: str = "adadelta"
    lr: float = 1.0
    lr_schedule: str = "cosine"  # per-step cosine decay to 0 steadies the final-epoch accuracy
    path_dropout: float = 0.0
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


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               **forward_kwargs: Any) -> float:
    """One cross-entropy step; parameters the forward did not use get no gradient (grads set to None first)."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x, **forward_kwargs), y)
    loss.backward()
    optimizer.step()
    return loss.item()


@torch.no_grad()
def predict(model: nn.Module, batches: Batches, **forward_kwargs: Any) -> torch.Tensor:
    """Eval-mode logits of every batch, concatenated (on the CPU)."""
    model.eval()
    device = _device(model)
    return torch.cat([model(x.to(device), **forward_kwargs).cpu() for x, _ in batches])


def evaluate(model: nn.Module, batches: Batches, **forward_kwargs: Any) -> float:
    """Top-1 accuracy (percent) of the model on `batches`."""
    return accuracy(predict(model, batches, **forward_kwargs), torch.cat([y for _, y in batches]))[0]


class SubnetSampler:
    """Draws the path of each one-shot minibatch: a subnet (uniform or from `probs`) or a path-dropout path."""

    def __init__(self, num_blocks: int, num_ops: int, generator: torch.Generator,
                 probs: Sequence[float] | None = None, path_dropout: float = 0.0):
        if probs is not None and path_dropout > 0:
            raise UserError("a subnet distribution and path dropout exclude each other: path dropout trains "
                            "the all-on network")
        self.num_blocks, self.num_ops = num_blocks, num_ops
        self.generator = generator
        self.path_dropout = path_dropout
        self.choices: list[Choice] | None = None
        if probs is not None:
            self.choices = enumerate_choices(num_blocks, num_ops)
            self.probs = torch.as_tensor(probs, dtype=torch.float64)
            if self.probs.shape != (len(self.choices),) or (self.probs < 0).any() or self.probs.sum() <= 0:
                raise UserError(f"subnet distribution needs {len(self.choices)} non-negative weights with a "
                                f"positive sum, got {list(probs)}")

    def __call__(self) -> Path:
        if self.path_dropout > 0:
            return sample_path_dropout(self.num_blocks, self.num_ops, self.path_dropout, self.generator)
        if self.choices is not None:
            return self.choices[int(torch.multinomial(self.probs, 1, generator=self.generator))]
        return tuple(torch.randint(self.num_ops, (self.num_blocks,), generator=self.generator).tolist())


def _fit(model: nn.Module, train_set: Dataset, cfg: TrainConfig, seed: int, next_path: Callable[[], Any] | None,
         after_epoch: Callable[[], str], desc: str) -> None:
    """Train for cfg.epochs, with forward(x, next_path()) per minibatch when next_path is given."""
    cfg.validate()
    device = _device(model)
    optimizer = make_optimizer(cfg.optimizer, model.parameters(), cfg.lr)
    sampler = EpochSampler(list(range(len(train_set))), seed, cfg.batch_size)
    loader = make_loader(train_set, sampler, cfg.batch_size)
    steps = cfg.epochs * len(loader) if cfg.lr_schedule == "cosine" else 0
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / steps)) if steps else 1.0)
    bar = tqdm(range(cfg.epochs), desc=desc, leave=False, disable=None)
    for epoch in bar:
        sampler.set_epoch(epoch)
        for x, y in loader:
            kwargs = {} if next_path is None else {"path": next_path()}
            train_step(model, optimizer, x.to(device), y.to(device), **kwargs)
            scheduler.step()
        bar.set_postfix_str(after_epoch())


def train_oneshot(supernet: ChainSuperNet, train_set: Dataset, test_batches: Batches, cfg: TrainConfig,
                  eval_choices: Sequence[Choice], seed: int,
                  probs: Sequence[float] | None = None) -> dict[Choice, list[float]]:
    """Train the supernet one-shot; return each choice in `eval_choices` -> its test top-1 after every epoch."""
    generator = torch.Generator().manual_seed(seed)
    sample = SubnetSampler(supernet.num_blocks, supernet.num_ops, generator, probs, cfg.path_dropout)
    curves: dict[Choice, list[float]] = {tuple(c): [] for c in eval_choices}

    def after_epoch() -> str:
        for choice, curve in curves.items():
            curve.append(evaluate(supernet, test_batches, path=choice))
        return f"best one-shot top-1 {max(c[-1] for c in curves.values()):.2f}"

    _fit(supernet, train_set, cfg, seed, sample, after_epoch, f"one-shot ({supernet.sharing})")
    return curves


def train_standalone(net: nn.Module, train_set: Dataset, test_batches: Batches, cfg: TrainConfig,
                     seed: int) -> list[float]:
    """Train a plain network; return its test top-1 after every epoch."""
    curve: list[float] = []

    def after_epoch() -> str:
        curve.append(evaluate(net, test_batches))
        return f"top-1 {curve[-1]:.2f}"

    _fit(net, train_set, cfg, seed, None, after_epoch, f"stand-alone {getattr(net, 'choice', '')}")
    return curve
