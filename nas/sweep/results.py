"""A sweep's results: one row per trial read from its run directories' records, written as `sweep.csv`,
`sweep.md` (with a plot of parameters against accuracy coloured by a varied key) and TensorBoard HParams
summaries (`SWEEP_DIR/<trial>/hparams/`), so `tensorboard --logdir SWEEP_DIR` compares the trials.

Everything is rebuilt from the trials' folders, so the driver, a rerun and `nas-report SWEEP_DIR` agree, and each
file is written whole (a temporary file or folder per process, then a rename), so they may run at the same time.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import secrets
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import matplotlib
from matplotlib.figure import Figure

from nas.core.errors import UserError
from nas.report.run import FIGURES
from nas.report.tables import fmt, save_figure, table_row
from nas.sweep.spec import Spec, spec_from_dict
from nas.sweep.trial import DONE, RECORD, read_state, stage_names
from search_spaces.darts.genotype import genotype_from_dict

SWEEP_FILE = "sweep.json"  # the expanded spec, written when the sweep starts
TABLE_CSV, TABLE_MD = "sweep.csv", "sweep.md"
HPARAMS = "hparams"
PLOT = "sweep_params_acc.png"
STALE_TMP_S = 3600  # a temporary HParams folder this old was left by a killed writer
GENOTYPE_COLUMN = "genotype_str"  # the found (or trained) genotype; an eval sweep may vary a key named `genotype`
# Result columns after the varied keys and the seed: (column, markdown header, number format).
METRICS: tuple[tuple[str, str, str], ...] = (
    ("params_M", "params (M)", ".3f"), ("flops_M", "FLOPs (M)", ".1f"), ("argmax_acc", "argmax acc (%)", ".2f"),
    ("best_reward", "best reward", ".3f"), ("top1", "trained top-1 (%)", ".2f"), ("wall_s", "wall (s)", ".0f"))


def load_sweep(sweep_dir: Path) -> Spec:
    """The spec a sweep directory was started with."""
    path = sweep_dir / SWEEP_FILE
    if not path.is_file():
        raise UserError(f"{sweep_dir} holds no {SWEEP_FILE}; give a directory that nas-sweep wrote")
    return spec_from_dict(json.loads(path.read_text(encoding="utf-8")))


def _record(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _search_values(record: dict[str, Any]) -> dict[str, Any]:
    last = record["search"]["stages"][-1]
    metrics = record.get("metrics", {})
    return {GENOTYPE_COLUMN: record.get("genotype_str"), "params_M": metrics.get("params_M"),
            "flops_M": metrics.get("flops_M"), "argmax_acc": last.get("argmax_acc"),
            "best_reward": (last.get("best_recent") or {}).get("reward"),
            "wall_s": record["search"].get("wall_time_s")}


def _trained_values(record: dict[str, Any], with_size: bool) -> dict[str, Any]:
    metrics = record.get("metrics", {}).get("eval")
    if metrics is None:
        return {}
    values = {"top1": metrics["top1"], "wall_s": metrics.get("wall_time_s")}
    if with_size:
        values.update({GENOTYPE_COLUMN: str(genotype_from_dict(record["genotype"])), "params_M": metrics["params_M"],
                       "flops_M": metrics["flops_M"]})
    return values


def trial_row(spec: Spec, sweep_dir: Path, index: int) -> dict[str, Any]:
    """One trial's varied values, seed, status and results (None where there is none yet)."""
    trial = spec.trials[index]
    trial_dir = sweep_dir / trial.name
    state = read_state(trial_dir)
    row: dict[str, Any] = {"trial": trial.name, **{k: trial.params.get(k) for k in spec.varied}, "seed": trial.seed,
                           "status": state["status"], "reason": state.get("reason"), GENOTYPE_COLUMN: None,
                           **{m: None for m, _, _ in METRICS}}
    wall = 0.0
    for stage in stage_names(spec):
        record = _record(trial_dir / stage / RECORD)
        if record is None:
            continue
        values = _search_values(record) if stage == "search" else _trained_values(record, stage == "eval")
        wall += values.pop("wall_s", None) or 0.0
        row.update({k: v for k, v in values.items() if v is not None})
    row["wall_s"] = round(wall, 1) if wall else None
    return row


def _cell(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, dict)) else "" if value is None else str(value)


def write_whole(path: Path, write: Callable[[Path], Any]) -> Path:
    """Call `write(temporary path)`, then move the file to `path` in one step (readers see the old or the new)."""
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.{secrets.token_hex(4)}{path.suffix}")  # keeps the format
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(list(rows[0]))
    writer.writerows([[_cell(v) for v in row.values()] for row in rows])
    write_whole(path, lambda tmp: tmp.write_text(text.getvalue(), encoding="utf-8", newline=""))


def _plot_metric(rows: list[dict[str, Any]]) -> tuple[str, str] | None:
    for metric, label in (("top1", "trained top-1 (%)"), ("argmax_acc", "argmax acc in the search (%)")):
        if any(r[metric] is not None and r["params_M"] is not None for r in rows):
            return metric, label
    return None


def plot(spec: Spec, rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Parameters against accuracy, one colour per value of the first varied key; None without results."""
    chosen = _plot_metric(rows)
    if chosen is None:
        return None
    metric, label = chosen
    key = spec.varied[0] if spec.varied else "seed"
    values = list(dict.fromkeys(_cell(r[key]) for r in rows))
    colours = matplotlib.colormaps["tab10"].colors
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    for i, value in enumerate(values):
        points = [(r["params_M"], r[metric]) for r in rows
                  if _cell(r[key]) == value and r[metric] is not None and r["params_M"] is not None]
        if points:
            xs, ys = zip(*points)
            ax.scatter(xs, ys, color=colours[i % len(colours)], label=f"{key} = {value}", s=40)
    ax.set_xlabel("parameters at eval scale (M)")
    ax.set_ylabel(label)
    ax.legend(fontsize=8)
    ax.set_title(f"{Path(spec.path).stem}: {len(rows)} trials", fontsize=10)
    return write_whole(path, lambda tmp: save_figure(fig, tmp))


def markdown(spec: Spec, rows: list[dict[str, Any]], figure: Path | None, sweep_dir: Path) -> str:
    """The table (one row per trial), the plot and the genotypes."""
    columns = ["trial", *spec.varied, "seed", "status", *(header for _, header, _ in METRICS)]
    lines = [f"# Sweep: {sweep_dir.name}", "", f"Spec `{spec.path}`, base config `{spec.base}`, {len(rows)} trials "
             f"({sum(r['status'] == DONE for r in rows)} done).", "", table_row(columns),
             table_row(["---"] * len(columns))]
    for r in rows:
        numbers = [fmt(r[m], spec_) for m, _, spec_ in METRICS]
        lines.append(table_row([r["trial"], *(_cell(r[k]) for k in spec.varied), r["seed"], r["status"], *numbers]))
    if figure is not None:
        lines += ["", f"![parameters against accuracy]({figure.relative_to(sweep_dir).as_posix()})"]
    failed = [r for r in rows if r["status"] != DONE and r["reason"]]
    if failed:
        lines += ["", "Not finished:", ""]
        lines += [f"- {r['trial']} ({r['status']}): {r['reason']}" for r in failed]
    lines += ["", "Genotypes:", ""]
    lines += [f"- {r['trial']}: `{r[GENOTYPE_COLUMN]}`" for r in rows if r[GENOTYPE_COLUMN] is not None]
    return "\n".join(lines) + "\n"


def _hparam_value(value: Any) -> Any:
    return value if isinstance(value, (int, float, str, bool)) else json.dumps(value)


def write_hparams(spec: Spec, row: dict[str, Any], trial_dir: Path) -> Path:
    """The trial's HParams session (its varied values and seed, its metrics) in `<trial>/hparams/`, written once."""
    from torch.utils.tensorboard import SummaryWriter

    target = trial_dir / HPARAMS
    if target.is_dir():
        return target
    hparams = {k: _hparam_value(row[k]) for k in [*spec.varied, "seed"]}
    domains = {k: [_hparam_value(v) for v in values] for k, values in spec.grid.items()}
    domains["seed"] = list(spec.seeds)
    metrics = {f"sweep/{m}": float(row[m]) for m, _, _ in METRICS if isinstance(row[m], (int, float))
               and math.isfinite(row[m])}
    for stale in trial_dir.glob(f".{HPARAMS}.*.tmp"):  # left by a killed writer; a live one takes a second
        with contextlib.suppress(FileNotFoundError):
            if time.time() - stale.stat().st_mtime > STALE_TMP_S:
                shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=trial_dir, prefix=f".{HPARAMS}.", suffix=".tmp"))  # this writer's own
    try:
        with SummaryWriter(log_dir=str(tmp)) as writer:
            writer.add_hparams(hparams, metrics, hparam_domain_discrete=domains, run_name=".")
        tmp.rename(target)
    except OSError:
        if not target.is_dir():
            raise
    finally:  # the folder of a writer that lost the race to another (the driver or nas-report)
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def write_sweep_report(sweep_dir: str | Path) -> Path:
    """Write sweep.csv, sweep.md and its plot, and the HParams of finished trials; return the path of sweep.md."""
    sweep_dir = Path(sweep_dir)
    spec = load_sweep(sweep_dir)
    rows = [trial_row(spec, sweep_dir, i) for i in range(len(spec.trials))]
    for trial, row in zip(spec.trials, rows):
        if row["status"] == DONE:
            write_hparams(spec, row, sweep_dir / trial.name)
    write_csv(rows, sweep_dir / TABLE_CSV)
    (sweep_dir / FIGURES).mkdir(exist_ok=True)
    figure = plot(spec, rows, sweep_dir / FIGURES / PLOT)
    text = markdown(spec, rows, figure, sweep_dir)
    return write_whole(sweep_dir / TABLE_MD, lambda tmp: tmp.write_text(text, encoding="utf-8"))
