"""TensorBoard logging and progress bars: the one place that names every logged tag.

Tags are grouped per stage (`stage1/...`) because the meaning of an edge's op indices changes when
a stage drops ops. The step axis is the global weight-step count of the whole search.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Iterable

import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

# Every scalar tag, with {s} the stage (1-based), {cell} normal|reduce, {e} the edge, {op} an op name.
TAGS: dict[str, str] = {
    "stage{s}/{cell}/argmax/edge_{e}": "index (in the stage's kept ops) of the most probable op: index convergence",
    "stage{s}/{cell}/prob/edge_{e}/{op}": "softmax weight of each kept op on each edge",
    "stage{s}/train/loss": "supernet training loss (weight steps, running mean over the epoch)",
    "stage{s}/train/acc": "supernet training top-1 (%)",
    "stage{s}/val/loss": "supernet validation loss on the architecture half, end of epoch",
    "stage{s}/val/acc": "supernet validation top-1 (%), end of epoch",
    "stage{s}/lr/weights": "learning rate of the weight optimizer",
    "stage{s}/lr/arch": "learning rate of the architecture optimizer",
    "stage{s}/skip_dropout": "P-DARTS dropout rate on identity skip connections",
    "stage{s}/arch/entropy": "mean entropy of the per-edge op distributions (nats)",
    "stage{s}/reinforce/reward_mean": "mean reward of the samples of one policy update",
    "stage{s}/reinforce/reward_max": "best reward of the samples of one policy update",
    "stage{s}/reinforce/baseline": "EMA reward baseline",
    "stage{s}/reinforce/iw_mean": "mean importance weight pi/mu (after truncation)",
    "stage{s}/reinforce/iw_max": "largest importance weight pi/mu (after truncation)",
    "stage{s}/reinforce/acc_mean": "mean validation accuracy of the sampled paths",
    "stage{s}/reinforce/params_mean": "mean eval-scale parameters (M) of the sampled architectures",
    "stage{s}/reinforce/flops_mean": "mean eval-scale FLOPs (M) of the sampled architectures",
    "stage{s}/reinforce/best_recent_reward": "max reward among the last N samples",
    "stage{s}/reinforce/argmax_acc": "validation top-1 of the argmax architecture (%), end of epoch",
    "stage{s}/reinforce/argmin_acc": "validation top-1 of the argmin architecture (%), end of epoch",
}
TEXT_TAGS: dict[str, str] = {
    "stage{s}/reinforce/best_recent_arch": "the max-reward architecture among the last N samples",
    "stage{s}/genotype": "the genotype derived at the end of the stage",
}
IMAGE_TAGS: dict[str, str] = {
    "stage{s}/cell/{cell}": "graphviz drawing of the stage's derived normal and reduce cells",
}


def tag(template: str, **fields: Any) -> str:
    """Fill a documented tag template; refuses templates that are not in the tag tables."""
    if template not in TAGS and template not in TEXT_TAGS and template not in IMAGE_TAGS:
        raise KeyError(f"undocumented tag {template!r}: add it to nas.monitor.TAGS first")
    return template.format(**fields)


class Monitor:
    """Writes a run's TensorBoard events (rank 0 only) and shows tqdm bars on a terminal."""

    def __init__(self, log_dir: str | Path, purge_step: int | None = None, enabled: bool = True):
        self.enabled = enabled
        self.writer = SummaryWriter(str(log_dir), purge_step=purge_step) if enabled else None

    def scalar(self, template: str, value: float, step: int, **fields: Any) -> None:
        if self.writer is not None:
            self.writer.add_scalar(tag(template, **fields), float(value), step)

    def text(self, template: str, value: str, step: int, **fields: Any) -> None:
        if self.writer is not None:
            self.writer.add_text(tag(template, **fields), value, step)

    def image(self, template: str, image_hwc, step: int, **fields: Any) -> None:
        if self.writer is not None and image_hwc is not None:
            self.writer.add_image(tag(template, **fields), image_hwc, step, dataformats="HWC")

    def arch(self, stage: int, probs: dict[str, torch.Tensor], kept_ops: dict[str, list[list[str]]],
             step: int) -> None:
        """Per edge: the argmax op index and the softmax weight of every kept op."""
        if self.writer is None:
            return
        for cell, p in probs.items():
            for e, (row, ops) in enumerate(zip(p.tolist(), kept_ops[cell])):
                edge = f"{e:02d}"
                self.scalar("stage{s}/{cell}/argmax/edge_{e}", max(range(len(row)), key=row.__getitem__), step,
                            s=stage, cell=cell, e=edge)
                for op, value in zip(ops, row):
                    self.scalar("stage{s}/{cell}/prob/edge_{e}/{op}", value, step, s=stage, cell=cell, e=edge,
                                op=op)

    def stage_scalars(self, stage: int, values: dict[str, float], step: int, prefix: str = "") -> None:
        """Log `values` as stage{s}/{prefix}{key}; each resulting template must be documented."""
        for key, value in values.items():
            self.scalar(f"stage{{s}}/{prefix}{key}", value, step, s=stage)

    def progress(self, iterable: Iterable, total: int, desc: str) -> Iterable:
        """A tqdm bar when stdout is a terminal, the bare iterable otherwise."""
        return tqdm(iterable, total=total, desc=desc, leave=False, disable=not (self.enabled and sys.stdout.isatty()))

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
