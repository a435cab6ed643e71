"""The ranking study of experiments/nb201_weight_sharing.py: does one-shot accuracy rank NAS-Bench-201 cells the way
full training does?

A supernet (search_spaces/nb201.py) trains on the weight half of the search split (nas.core.data.search_loaders: the
search's split, augmentation and SGD settings) with one sampled cell per minibatch:

- ``ops``: every edge's op uniform over the 5 ops, i.e. uniform over the 15,625 architecture strings;
- ``cells``: uniform over the table's 6,466 isomorphism classes (its `iso_key` column: cells that compute the same
  function), then uniform over the strings of the class. The strings are not equally many per class (the 341 cells
  whose output is cut off from the input form one class), so this draws structurally distinct cells equally often;
- path dropout p > 0: the all-on network (every op of every edge summed) with every op dropped independently with
  probability p, at least one op kept per edge (Bender et al. 2018); `none` counts as an op.

Each studied cell is scored on held-out images (the CIFAR-10 test set) twice: BatchNorm on the test batch's
statistics, and BatchNorm recalibrated on a few training images of the weight half with that cell's path. The
symmetrised KL divergence of each cell's recalibrated predictions to the all-on network's (recalibrated too) is the
chain study's KL-to-all-on, here on the held-out images. Ground truth is the table's `cifar10_test_acc`, used only
after scoring.
"""
from __future__ import annotations

import csv
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Subset

from nas.benchmarks.oneshot import Batches, bn_stats_kept, fixed_batches, predict, recalibrate_bn, shuffled_batches
from nas.core.batchnorm import batch_stat_eval
from nas.core.data import DataConfig, load_dataset, search_loaders
from nas.core.device import resolve_device
from nas.core.metrics import accuracy, kendall_tau, ranking_correlations, spearman_rho, symmetrised_kl
from search_spaces.nb201 import EDGES, GROUP, NB201_OPS, NB201Space, arch_to_path, code_to_arch

SAMPLINGS = ("ops", "cells")
EVAL_BATCH = 250
ALL_ON = {GROUP: torch.ones(len(EDGES), len(NB201_OPS))}  # the all-on network: every op of every edge summed


@dataclass
class RankingSetting:
    """One supernet training and its scoring."""

    dataset: str = "cifar10_jpeg"
    root: str = "~/.cache/pdarts-nas/cifar10"
    images: int = 10_000  # the search split's images (half train the weights)
    C: int = 8
    cells_per_stage: int = 1
    epochs: int = 20
    score_epochs: list[int] = field(default_factory=lambda: [20])  # score every studied cell after these epochs
    batch_size: int = 64
    lr: float = 0.05
    held_out: int = 500  # CIFAR-10 test images every cell is scored on
    recal: int = 256  # weight-half images that recalibrate BatchNorm per cell
    sampling: str = "ops"
    path_dropout: float = 0.0
    seed: int = 0
    device: str = "auto"


def iso_classes(table_csv: str) -> list[list[int]]:
    """The table's isomorphism classes (its `iso_key` column), each as the architecture codes of its strings."""
    classes: dict[str, list[int]] = defaultdict(list)
    with open(table_csv, newline="") as handle:
        for row in csv.DictReader(handle):
            classes[row["iso_key"]].append(NB201Space.arch_code(row["arch"]))
    return list(classes.values())


def study_cells(by_code: np.ndarray, count: int, top: int, seed: int) -> list[int]:
    """`count` cells stratified over the table's accuracy (one drawn from each of `count` equally populated
    accuracy strata), plus the table's `top` best; codes, without repeats."""
    codes = np.flatnonzero(~np.isnan(by_code))
    ordered = codes[np.argsort(by_code[codes], kind="stable")]
    rng = np.random.default_rng(seed)
    drawn = [int(rng.choice(stratum)) for stratum in np.array_split(ordered, count) if len(stratum)]
    best = [int(c) for c in ordered[::-1][:top]]
    return list(dict.fromkeys(drawn + best))


class PathSampler:
    """The forward arguments of one training minibatch: a sampled cell, or a path-dropout mask of the all-on net."""

    def __init__(self, sampling: str, path_dropout: float, classes: list[list[int]] | None, seed: int):
        self.sampling, self.path_dropout, self.classes = sampling, path_dropout, classes
        self.generator = torch.Generator().manual_seed(seed)

    def _draw(self, n: int) -> int:
        return int(torch.randint(n, (1,), generator=self.generator))

    def __call__(self) -> dict[str, Any]:
        if self.path_dropout > 0:
            keep = torch.rand(len(EDGES), len(NB201_OPS), generator=self.generator) >= self.path_dropout
            empty = ~keep.any(dim=1)
            rescue = torch.randint(len(NB201_OPS), (len(EDGES),), generator=self.generator)
            keep[empty, rescue[empty]] = True
            return {"weights": {GROUP: keep.float()}}
        if self.sampling == "cells":
            members = self.classes[self._draw(len(self.classes))]
            return {"path": arch_to_path(code_to_arch(members[self._draw(len(members))]))}
        return {"path": {GROUP: torch.randint(len(NB201_OPS), (len(EDGES),), generator=self.generator)}}


@torch.no_grad()
def batch_stat_predict(model: nn.Module, batches: Batches, **forward_kwargs: Any) -> torch.Tensor:
    """Logits with BatchNorm on each batch's own statistics (running statistics untouched)."""
    device = next(model.parameters()).device
    with batch_stat_eval(model):
        return torch.cat([model(x.to(device), **forward_kwargs).cpu() for x, _ in batches])


def recal_predict(model: nn.Module, batches: Batches, recal: Batches, **forward_kwargs: Any) -> torch.Tensor:
    """Eval-mode logits after recalibrating BatchNorm on `recal` with the same forward (undone after)."""
    with bn_stats_kept(model):
        recalibrate_bn(model, recal, **forward_kwargs)
        return predict(model, batches, **forward_kwargs)


def score_cells(model: nn.Module, codes: Sequence[int], held_out: Batches, recal: Batches,
                truth: Sequence[float]) -> dict[str, Any]:
    """Both BatchNorm modes' one-shot top-1 of every cell, the KL to all-on, and their correlations with `truth`."""
    labels = torch.cat([y for _, y in held_out])
    reference = recal_predict(model, held_out, recal, weights=ALL_ON)
    batch_acc, recal_acc, kl = [], [], []
    for code in codes:
        path = arch_to_path(code_to_arch(code))
        batch_acc.append(accuracy(batch_stat_predict(model, held_out, path=path), labels)[0])
        logits = recal_predict(model, held_out, recal, path=path)
        recal_acc.append(accuracy(logits, labels)[0])
        kl.append(symmetrised_kl(logits, reference).mean().item())
    return {"batch_stats": ranking_correlations(batch_acc, truth),
            "recalibrated": ranking_correlations(recal_acc, truth),
            "kl_spearman_rho": spearman_rho(kl, truth), "kl_kendall_tau": kendall_tau(kl, truth),
            "cells": {"batch_stats_acc": batch_acc, "recalibrated_acc": recal_acc, "kl": kl}}


def _held_out(setting: RankingSetting) -> Batches:
    test = load_dataset(setting.dataset, setting.root, train=False).dataset
    return fixed_batches(Subset(test, range(min(setting.held_out, len(test)))), EVAL_BATCH)


def run_ranking(setting: RankingSetting, codes: Sequence[int], truth: Sequence[float],
                classes: list[list[int]] | None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train one supernet and score `codes` after each of setting.score_epochs; `truth` is read only to correlate."""
    torch.manual_seed(setting.seed)
    device = resolve_device(setting.device)
    data_cfg = DataConfig(dataset=setting.dataset, root=setting.root, batch_size=setting.batch_size,
                          limit=setting.images)
    data, loader, _ = search_loaders(data_cfg, setting.seed)
    recal = shuffled_batches(Subset(data.dataset, loader.sampler.indices), setting.recal, EVAL_BATCH, setting.seed)
    held_out = _held_out(setting)
    space = NB201Space(C=setting.C, num_classes=data.num_classes, in_channels=data.in_channels)
    model = space.build_supernet(space.initial_kept_ops(), setting.cells_per_stage).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=setting.lr, momentum=0.9, weight_decay=3e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, setting.epochs)
    sample = PathSampler(setting.sampling, setting.path_dropout, classes, setting.seed)
    by_epoch, train_s = [], 0.0
    for epoch in range(setting.epochs):
        start = time.perf_counter()
        model.train()
        loader.sampler.set_epoch(epoch)
        for x, y in loader:
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x.to(device), **sample()), y.to(device)).backward()
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
        scheduler.step()
        train_s += time.perf_counter() - start
        if epoch + 1 in setting.score_epochs:
            scored = score_cells(model, codes, held_out, recal, truth)
            by_epoch.append({"epoch": epoch + 1, "train_s": round(train_s, 1), **scored})
            log(f"  ranking {setting.sampling}/pd{setting.path_dropout} epoch {epoch + 1}: tau batch-stats "
                f"{scored['batch_stats']['kendall_tau']:.3f}, recalibrated {scored['recalibrated']['kendall_tau']:.3f}")
    final = by_epoch[-1]
    return {"setting": asdict(setting), "train_s": round(train_s, 1), "by_epoch": by_epoch,
            **{key: final[key] for key in ("batch_stats", "recalibrated", "kl_spearman_rho", "kl_kendall_tau",
                                           "cells")}}


def check_setting(setting: RankingSetting) -> list[str]:
    """The problems of a setting, as one-line messages (empty: fine)."""
    problems = []
    if setting.sampling not in SAMPLINGS:
        problems.append(f"sampling must be one of {', '.join(SAMPLINGS)}, got {setting.sampling!r}")
    if not 0.0 <= setting.path_dropout < 1.0:
        problems.append(f"path dropout must be in [0, 1), got {setting.path_dropout}")
    if not setting.score_epochs or any(not 1 <= e <= setting.epochs for e in setting.score_epochs):
        problems.append(f"score epochs must lie in [1, {setting.epochs}], got {setting.score_epochs}")
    if setting.epochs not in setting.score_epochs:
        problems.append("the last epoch must be scored")
    if min(setting.held_out, setting.recal, setting.C, setting.cells_per_stage) < 1:
        problems.append("held-out and recalibration images, C and cells per stage must be positive")
    return problems
