"""`nas-report RUN_DIR`: figures and a short markdown report of a search run (a search writes it at its end).
`nas-report SWEEP_DIR` writes a sweep's table and plot instead (nas/sweep/results.py).

Reads the run's record (`genotype.json`, or the latest `stages/stageN.json` of an unfinished run) and its
TensorBoard events (`tb/`), and writes into the run directory:

- `report/probs_stageN.png`: heat maps of the op probabilities per edge at the end of stage N, one per group of
  edges side by side (DARTS: normal and reduce, 14 edges each; each square names its op, since kept ops differ per
  edge);
- `report/argmax_stageN_GROUP.png`: the most probable op of every edge over the logged steps, coloured by op,
  so one op taking every edge, or pools and skips taking over, shows as one colour spreading;
- `report/rewards_stageN.png` (REINFORCE runs): reward mean, max and baseline over the steps;
- `report.md`: the final genotype and its parameter count, a per-stage table, the figures and the stage
  drawings (`stages/stageN/{normal,reduce}.png`).

Figures are drawn on matplotlib's Agg canvas (no display needed).
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from nas.core.errors import UserError
from nas.core.records import read_record
from nas.report.monitor import edge_field, tag
from nas.report.tables import fmt, save_figure, table_row
from search_spaces.darts.drawing import INPUTS
from search_spaces.darts.genotype import CELLS
from search_spaces.ops import OPS

FIGURES = "report"
REPORT = "report.md"
REWARD_TAGS: tuple[str, ...] = ("reward_mean", "reward_max", "baseline")
STAGE_KEYS: tuple[str, ...] = ("stage", "kept_ops", "probabilities", "genotype_str", "params_M")
# One fixed colour per op of the registry, so an op has the same colour in every figure of every run.
OP_COLOURS: dict[str, tuple[float, ...]] = dict(
    zip(OPS, [*matplotlib.colormaps["tab10"].colors, *matplotlib.colormaps["Dark2"].colors]))
_STAGE_FILE = re.compile(r"stage(\d+)\.json")
Stage = dict[str, Any]


def _search_stages(run_dir: Path) -> tuple[list[Stage], dict[str, Any] | None]:
    """The per-stage entries of the run and its final record (None while the search is unfinished)."""
    final = run_dir / "genotype.json"
    if final.is_file():
        source, record = final, read_record(final)
        stages = (record.get("search") or {}).get("stages")
    else:
        partial = sorted((int(m.group(1)), p) for p in (run_dir / "stages").glob("stage*.json")
                         if (m := _STAGE_FILE.fullmatch(p.name)))
        if not partial:
            raise UserError(f"{run_dir} holds neither genotype.json nor stages/stageN.json; give a run directory "
                            "that search.py wrote")
        source, record = partial[-1][1], None
        stages = read_record(source).get("stages")
    if not stages or not all(isinstance(s, dict) and all(k in s for k in STAGE_KEYS) for s in stages):
        raise UserError(f"{source}: holds no per-stage search results; nas-report needs a run directory that "
                        "search.py wrote")
    return stages, record


def _edge_label(group: str, e: int) -> str:
    """`07: node 2 <- node 0`: an edge of a DARTS cell type and the state it reads (edges are ordered node by node);
    the edge's number in any other group."""
    if group not in CELLS:
        return edge_field(e)
    node, j = 0, e
    while j >= 2 + node:
        j, node = j - (2 + node), node + 1
    return f"{edge_field(e)}: node {node} <- {INPUTS[j] if j < 2 else f'node {j - 2}'}"


def probability_figure(stage: Stage, path: Path) -> Path:
    """Heat maps (edges x kept ops) of the stage's final op probabilities, one per group side by side."""
    groups = list(stage["kept_ops"])
    n_ops = max(len(stage["kept_ops"][cell][0]) for cell in groups)
    fig = Figure(figsize=(len(groups) * (1.1 * n_ops + 2.2), 6.5), layout="constrained")
    axes = fig.subplots(1, len(groups), squeeze=False)[0]
    for ax, cell in zip(axes, groups):
        probs, kept = np.array(stage["probabilities"][cell]), stage["kept_ops"][cell]
        shared = all(ops == kept[0] for ops in kept)  # stage 1: every edge searches the same ops
        image = ax.imshow(probs, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
        for e, (row, ops) in enumerate(zip(probs, kept)):
            for k, (p, op) in enumerate(zip(row, ops)):
                ax.text(k, e, f"{p:.2f}" if shared else f"{op}\n{p:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if p < 0.5 else "black")
        ax.set_xticks(range(probs.shape[1]), kept[0] if shared else [f"kept op {k}" for k in range(probs.shape[1])],
                      rotation=30, ha="right", fontsize=7)
        ax.set_yticks(range(len(kept)), [_edge_label(cell, e) for e in range(len(kept))], fontsize=7)
        ax.set_title(f"{cell} edges", fontsize=9)
    fig.colorbar(image, ax=axes, label="softmax weight", shrink=0.8)
    fig.suptitle(f"stage {stage['stage']}: op probabilities per edge at the end of the stage")
    return save_figure(fig, path)


class Scalars:
    """The scalar series of a run's TensorBoard events (every point: no reservoir sampling)."""

    def __init__(self, tb_dir: Path):
        self.events = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
        if tb_dir.is_dir():
            self.events.Reload()
        self.names = set(self.events.Tags()["scalars"])

    def get(self, name: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(steps, values) of a logged scalar, None where the run did not log it."""
        if name not in self.names:
            return None
        points = self.events.Scalars(name)
        return np.array([p.step for p in points]), np.array([p.value for p in points])


def argmax_figure(stage: Stage, cell: str, scalars: Scalars, path: Path) -> Path | None:
    """Edges x logged steps, each square coloured by the edge's most probable op; None where nothing was logged."""
    kept = stage["kept_ops"][cell]
    series = [scalars.get(tag("stage{s}/{cell}/argmax/edge_{e}", s=stage["stage"], cell=cell, e=edge_field(e)))
              for e in range(len(kept))]
    if any(s is None for s in series):
        return None
    length = min(len(values) for _, values in series)
    steps = series[0][0][:length]
    present = {op for edge in kept for op in edge}
    ops = [op for op in OPS if op in present] + sorted(present - set(OPS))  # a space's own op names last
    extra = iter(matplotlib.colormaps["Set2"].colors)
    colours = [OP_COLOURS[op] if op in OP_COLOURS else next(extra) for op in ops]
    codes = np.array([[ops.index(kept[e][int(round(v))]) for v in values[:length]]
                      for e, (_, values) in enumerate(series)])
    step_edges = np.append(steps, steps[-1] + (steps[-1] - steps[-2] if length > 1 else 1))
    fig = Figure(figsize=(9, 5.5), layout="constrained")
    ax = fig.subplots()
    ax.pcolormesh(step_edges, np.arange(len(kept) + 1) - 0.5, codes, shading="flat",
                  cmap=ListedColormap(colours),
                  norm=BoundaryNorm(np.arange(len(ops) + 1) - 0.5, len(ops)))
    ax.set_yticks(range(len(kept)), [_edge_label(cell, e) for e in range(len(kept))], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("weight step")
    ax.set_title(f"stage {stage['stage']}, {cell} edges: most probable op of every edge", fontsize=10)
    fig.legend(handles=[Patch(color=colour, label=op) for op, colour in zip(ops, colours)], loc="outside right center",
               fontsize=8)
    return save_figure(fig, path)


def reward_figure(stage: Stage, scalars: Scalars, path: Path) -> Path | None:
    """REINFORCE reward mean, max and baseline over the steps; None for a run without them."""
    curves = {key: scalars.get(tag(f"stage{{s}}/reinforce/{key}", s=stage["stage"])) for key in REWARD_TAGS}
    if any(c is None for c in curves.values()):
        return None
    fig = Figure(figsize=(8, 4), layout="constrained")
    ax = fig.subplots()
    for key, (steps, values) in curves.items():
        ax.plot(steps, values, label=key, linewidth=1)
    ax.set_xlabel("weight step")
    ax.set_ylabel("reward")
    ax.legend(fontsize=8)
    ax.set_title(f"stage {stage['stage']}: REINFORCE rewards per policy update", fontsize=10)
    return save_figure(fig, path)


def _stage_table(stages: list[Stage]) -> list[str]:
    columns = ["stage", "cells", "epochs", f"ops per edge ({'/'.join(stages[0]['kept_ops'])})", "val acc (%)",
               "params (M)"]
    reinforce = any("argmin_acc" in s for s in stages)
    if reinforce:
        columns += ["argmax acc (%)", "argmin acc (%)", "best recent reward", "best recent acc (%)"]
    sbo = any("sbo" in s for s in stages)
    if sbo:
        columns += ["SBO: top-10 reward", "SBO: argmax reward"]
    lines = [table_row(columns), table_row(["---"] * len(columns))]
    for s in stages:
        cells = [s["stage"], s.get("layers", "-"), s.get("epochs", "-"),
                 "/".join(str(len(edges[0])) for edges in s["kept_ops"].values()), fmt(s.get("val_acc")),
                 f"{s['params_M']:.3f}"]
        if reinforce:
            cells += [fmt(s.get("argmax_acc")), fmt(s.get("argmin_acc")),
                      fmt((s.get("best_recent") or {}).get("reward"), ".3f"), fmt(s.get("best_recent_acc"))]
        if sbo:
            check = s.get("sbo") or {}
            cells += [fmt(check.get("top10_reward"), ".4f"), fmt(check.get("argmax_reward"), ".4f")]
        lines.append(table_row(cells))
    return lines


def _dominance_table(stage: Stage) -> list[str]:
    """Per cell: the op that is the argmax of most edges, its share, the entropy of the shares, commitment steps."""
    lines = [table_row(["cell", "top op", "its share of edges", "share entropy (nats)", "commitment steps per edge"]),
             table_row(["---"] * 5)]
    for cell, d in stage["dominance"].items():
        lines.append(table_row([cell, d["top_op"], f"{100 * d['top_share']:.0f}%", f"{d['entropy']:.3f}",
                           " ".join(str(step) for step in d["commit_step"])]))
    return lines


def _skip_limit_rows(by_skip: dict[str, str | None], final: str) -> list[str]:
    """One row per distinct genotype with the limits M that give it (`2..8`), the final genotype named as such."""
    limits: dict[str | None, list[int]] = {}
    for m, genotype in by_skip.items():
        limits.setdefault(genotype, []).append(int(m))
    rows = []
    for genotype, ms in limits.items():
        runs: list[list[int]] = []
        for m in sorted(ms):
            if runs and m == runs[-1][-1] + 1:
                runs[-1].append(m)
            else:
                runs.append([m])
        shown = "-" if genotype is None else "the final genotype" if genotype == final else f"`{genotype}`"
        rows.append(table_row([", ".join(str(r[0]) if len(r) == 1 else f"{r[0]}..{r[-1]}" for r in runs), shown]))
    return rows


def _latency_lines(stages: list[Stage]) -> list[str]:
    """Which table, measured on which device, the latency costs came from (runs with reward.latency_table)."""
    tables = list(dict.fromkeys((t["path"], t["device"]) for s in stages if (t := s.get("latency_table"))))
    return ["", *(f"Latency (`reward.latency_table`): `{path}`, measured on {device}." for path, device in tables)] \
        if tables else []


def _edge_weight_table(stage: Stage) -> list[str]:
    """PC-DARTS edge weights: per cell and node, its input edges' weights in input order."""
    lines = [table_row(["cell", "node", "edge weights (input 0, 1, ...)"]), table_row(["---"] * 3)]
    return lines + [table_row([cell, i, " ".join(f"{w:.3f}" for w in node)])
                    for cell, nodes in stage["edge_weights"].items() for i, node in enumerate(nodes)]


def _selection_lines(selection: dict[str, Any]) -> list[str]:
    """Which rule picked the output, and every candidate with its scores."""
    picked = selection["picked"]
    lines = ["", f"## Final selection: `search.select: {selection['rule']}`", "",
             f"Output: `{picked['genotype']}` (picked by {picked['source']}).", ""]
    keys = [k for k in ("sampled_reward_max", "times_sampled", "val_acc", "val_reward", "params", "flops", "latency",
                        "probe_acc") if any(k in c for c in [selection["argmax"], *selection["candidates"]])]
    lines += [table_row(["candidate", *keys, "genotype"]), table_row(["---"] * (len(keys) + 2))]
    named = [("argmax", selection["argmax"]), *((f"sample {i + 1}", c) for i, c in enumerate(selection["candidates"]))]
    if "vote" in selection:
        named.append(("vote", selection["vote"]))
    for name, c in named:
        lines.append(table_row([name, *(c.get(k, "-") for k in keys), f"`{c['genotype']}`"]))
    return lines


def _markdown(run_dir: Path, stages: list[Stage], record: dict[str, Any] | None, params_m: float,
              figures: dict[int, list[Path]], have_events: bool) -> str:
    last = stages[-1]
    what = "Final genotype" if record else f"Genotype after stage {last['stage']} (the search is unfinished)"
    shown = (record or {}).get("genotype_str", last["genotype_str"])
    lines = [f"# Search report: {run_dir.name}", "",
             f"{what}, {params_m:.3f}M parameters at eval scale (`metrics.params_M`):", "",
             f"    {shown}", *_latency_lines(stages), "", *_stage_table(stages)]
    by_skip = last.get("genotypes_by_max_skip")
    if by_skip:
        lines += ["", "The final genotype for every limit M on skip_connects in the normal cell (P-DARTS reports "
                  "them all; the search used `model.max_skip`; limits that give the same genotype share a row):",
                  "", table_row(["M", "genotype"]), table_row(["---", "---"]), *_skip_limit_rows(by_skip, shown)]
    selection = ((record or {}).get("search") or {}).get("selection")
    if selection:
        lines += _selection_lines(selection)
    if not have_events:
        lines += ["", "No TensorBoard events under `tb/`: the convergence figures are left out."]
    for s in stages:
        n = s["stage"]
        lines += ["", f"## Stage {n}", "", f"Derived genotype: `{s['genotype_str']}`", ""]
        if "dominance" in s:
            lines += ["Dominance at the end of the stage (the argmax op of every edge):", "", *_dominance_table(s), ""]
        if "edge_weights" in s:
            lines += ["Edge weights at the end of the stage (softmax over each node's inputs; the derivation ranks "
                      "op probability times edge weight):", "", *_edge_weight_table(s), ""]
        lines += [f"![{p.stem}]({p.relative_to(run_dir).as_posix()})" for p in figures[n]]
        drawings = [run_dir / "stages" / f"stage{n}" / f"{cell}.png" for cell in CELLS]
        lines += [f"![stage {n} {p.stem} cell]({p.relative_to(run_dir).as_posix()})" for p in drawings if p.is_file()]
    return "\n".join(lines) + "\n"


def write_report(run_dir: str | os.PathLike, figures: bool = True) -> Path:
    """Write the figures under RUN_DIR/report/ (unless `figures` is false, as a search with `run.draw: false` asks)
    and RUN_DIR/report.md; return the path of report.md."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run directory; give the folder a search wrote (for example runs/<name>)")
    stages, record = _search_stages(run_dir)
    scalars = Scalars(run_dir / "tb")
    made: dict[int, list[Path]] = {s["stage"]: [] for s in stages}
    if figures:
        out = run_dir / FIGURES
        out.mkdir(exist_ok=True)
        for s in stages:
            n = s["stage"]
            drawn = [probability_figure(s, out / f"probs_stage{n}.png"),
                     *(argmax_figure(s, cell, scalars, out / f"argmax_stage{n}_{cell}.png") for cell in s["kept_ops"]),
                     reward_figure(s, scalars, out / f"rewards_stage{n}.png")]
            made[n] = [p for p in drawn if p is not None]
    params_m = stages[-1]["params_M"] if record is None else record.get("metrics", {}).get("params_M",
                                                                                          stages[-1]["params_M"])
    report = run_dir / REPORT
    report.write_text(_markdown(run_dir, stages, record, params_m, made, bool(scalars.names)),
                      encoding="utf-8")
    return report
