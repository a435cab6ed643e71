"""TensorBoard logging and progress bars: the one place that names every logged tag.

Tags are grouped per stage (`stage1/...`) because the meaning of an edge's op indices changes when
a stage drops ops. The step axis is the global weight-step count of the whole search.
`python -m nas.report.monitor` prints the tag table of docs/monitoring.md.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Iterable

import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from controllers.registry import CONTROLLERS
from search_spaces.registry import SPACES

# The engine's tags, with {s} the stage (1-based), {cell} normal|reduce, {e} the edge (00..13), {op} an op name.
# Spaces and controllers add their own (their `tags` and `text_tags`): see tag_kinds().
ENGINE_TAGS: dict[str, str] = {
    "stage{s}/{cell}/argmax/edge_{e}": "index (in the edge's kept ops) of the most probable op; a flat line means the "
                                       "edge has decided, every edge on one op early is rich-get-richer",
    "stage{s}/{cell}/prob/edge_{e}/{op}": "softmax weight of each kept op on each edge; pool or skip curves rising on "
                                          "most edges is pool/skip domination",
    "stage{s}/train/loss": "supernet training loss (running mean over the epoch's weight steps)",
    "stage{s}/train/acc": "supernet training top-1 (%, running mean over the epoch)",
    "stage{s}/val/loss": "supernet validation loss on the architecture half, end of epoch",
    "stage{s}/val/acc": "supernet validation top-1 (%) on the architecture half, end of epoch (gradient: the "
                        "mixture, REINFORCE and GDAS: the most probable architecture)",
    "stage{s}/lr/weights": "learning rate of the weight optimizer (cosine per stage)",
    "stage{s}/lr/arch": "learning rate of the architecture optimizer",
    "stage{s}/arch/entropy": "mean entropy of the per-edge op distributions (nats; REINFORCE genotypes: the policy's "
                             "op entropy per chosen edge); ln(ops) is undecided, "
                             "a fast fall to 0 is an early commitment",
    "stage{s}/{cell}/dominance/share/{op}": "share of the cell's edges whose most probable op is {op}; one op near 1 "
                                            "is rich-get-richer (the log warns at 0.8)",
    "stage{s}/{cell}/dominance/entropy": "entropy (nats) of those shares: 0 when one op is the argmax of every edge",
    "stage{s}/{cell}/dominance/commit/edge_{e}": "commitment step of the edge: the weight step since which its most "
                                                 "probable op has not changed (end of stage, at the logging "
                                                 "interval); early steps on every edge are an early commitment",
}
# Written by searches whose controller scores samples (REINFORCE), at every stage's end (nas/engine/selection.py).
SAMPLE_TAGS: dict[str, str] = {
    "stage{s}/select/top10_reward": "SBO check: mean reward of the top 10 distinct sampled architectures, "
                                    "rescored on the whole architecture half with the stage's final supernet",
    "stage{s}/select/argmax_reward": "SBO check: reward of the most probable architecture on the whole architecture "
                                     "half; below top10_reward means the policy's mode is not its best find",
}
ENGINE_TEXT_TAGS: dict[str, str] = {
    "stage{s}/genotype": "the architecture derived at the end of the stage",
    "stage{s}/diverged": "why the search stopped: the non-finite loss or logits, where, and the command that reruns "
                         "the stage with a lower lr",
}
IMAGE_TAGS: dict[str, str] = {
    "stage{s}/cell/{cell}": "graphviz drawing of the stage's derived normal and reduce cells",
}

# Every scalar of an eval run (train_eval.py); the step is the epoch, 0-based.
EVAL_TAGS: dict[str, str] = {
    "train/loss": "training loss of the main head (label smoothing included), mean over the epoch",
    "train/top1": "training top-1 (%) over the epoch, with drop path and augmentation",
    "test/loss": "test cross-entropy at the end of the epoch",
    "test/top1": "test top-1 (%) at the end of the epoch",
    "test/top5": "test top-5 (%) at the end of the epoch (top-k with k = classes when fewer than 5)",
    "lr": "learning rate of the epoch",
    "drop_path_prob": "drop path probability of the epoch (scaled linearly by epoch)",
}


def _plugin_tags() -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """(scalar tags, text tags, writer of each tag) of every registered space and controller."""
    scalars, texts, writers = {}, {}, {}
    for kind, registry in (("space", SPACES), ("controller", CONTROLLERS)):
        for name, plugin in registry.items():
            for table, tags in ((scalars, plugin.tags), (texts, getattr(plugin, "text_tags", {}))):
                table.update(tags)
                writers.update({template: f"the {name} {kind}" for template in tags})
    return scalars, texts, writers


# Engine tags that only some searches write, and which ones (the others: every search).
ENGINE_TAG_WRITERS: dict[str, str] = {"stage{s}/diverged": "a search that diverges"}


def tag_kinds() -> dict[str, dict[str, str]]:
    """Every documented tag template by kind (scalar, text, image), with those of every registered space and
    controller; read from the registries on each call, so a plugin registered after import is included."""
    scalars, texts, _ = _plugin_tags()
    return {"scalar": {**ENGINE_TAGS, **SAMPLE_TAGS, **scalars}, "text": {**ENGINE_TEXT_TAGS, **texts},
            "image": IMAGE_TAGS}


def edge_field(e: int) -> str:
    """The `{e}` field of an edge's tags: two digits, so TensorBoard sorts edges in order."""
    return f"{e:02d}"


def tag_writer(template: str) -> str:
    """Who writes a tag: `every search`, or the plugin that declares it (`the reinforce controller`)."""
    if template in SAMPLE_TAGS:
        return "searches whose controller scores samples"
    if template in ENGINE_TAG_WRITERS:
        return ENGINE_TAG_WRITERS[template]
    return _plugin_tags()[2].get(template, "every search")


def tag_table_markdown() -> str:
    """The tag table of docs/monitoring.md: template, kind, which searches write it, what it tells."""
    rows = ["| tag | kind | written by | what it tells |", "|---|---|---|---|"]
    for kind, table in tag_kinds().items():
        for template, meaning in table.items():
            mode = tag_writer(template)
            if kind == "image":
                mode += " with `run.draw` and graphviz"
            rows.append(f"| `{template}` | {kind} | {mode} | {meaning} |")
    rows += [f"| `{template}` | scalar | train_eval.py | {meaning} |" for template, meaning in EVAL_TAGS.items()]
    return "\n".join(rows)


def tag(template: str, **fields: Any) -> str:
    """Fill a documented tag template; refuses templates that are not in the tag tables."""
    if not any(template in table for table in (*tag_kinds().values(), EVAL_TAGS)):
        raise KeyError(f"undocumented tag {template!r}: add it to nas.report.monitor.ENGINE_TAGS or the plugin's tags")
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
                edge = edge_field(e)
                self.scalar("stage{s}/{cell}/argmax/edge_{e}", max(range(len(row)), key=row.__getitem__), step,
                            s=stage, cell=cell, e=edge)
                for op, value in zip(ops, row):
                    self.scalar("stage{s}/{cell}/prob/edge_{e}/{op}", value, step, s=stage, cell=cell, e=edge,
                                op=op)

    def dominance(self, stage: int, summary: dict[str, dict[str, Any]], step: int) -> None:
        """Per cell, each op's share of the argmax edges and the entropy of the shares (nas/engine/dominance.py)."""
        for cell, s in summary.items():
            for op, share in s["share"].items():
                self.scalar("stage{s}/{cell}/dominance/share/{op}", share, step, s=stage, cell=cell, op=op)
            self.scalar("stage{s}/{cell}/dominance/entropy", s["entropy"], step, s=stage, cell=cell)

    def commit_steps(self, stage: int, commits: dict[str, list[int]], step: int) -> None:
        """Per cell and edge, the step since which the edge's argmax has not changed."""
        for cell, steps in commits.items():
            for e, value in enumerate(steps):
                self.scalar("stage{s}/{cell}/dominance/commit/edge_{e}", value, step, s=stage, cell=cell,
                            e=edge_field(e))

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


if __name__ == "__main__":
    print(tag_table_markdown())
