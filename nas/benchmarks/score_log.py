"""A resumable log of estimator scores: one CSV row per scored (architecture label, seed), fsynced as it is written.

Studies that score many architectures (experiments/nb201_proxies.py, experiments/darts_proxy_percentiles.py)
append each row at once and read the log back on a re-run, so a killed run resumes where it stopped and nothing is
kept per architecture in memory. A label must not hold a comma (NB201 strings do not; name DARTS genotypes).
"""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any, Sequence

from nas.core.errors import UserError


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to a temp file beside `path`, then os.replace it (readers see the old or the new file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class ScoreLog:
    """`path`: the header `arch,seed,<estimators>,cpu_<estimators>`, then one row per scored (arch, seed)."""

    def __init__(self, path: Path, estimators: Sequence[str]):
        self.path, self.estimators = path, list(estimators)
        self.header = ["arch", "seed", *self.estimators, *(f"cpu_{name}" for name in self.estimators)]
        if path.exists():
            with open(path, newline="") as handle:
                found = next(csv.reader(handle), [])
            if found != self.header:
                raise UserError(f"{path} holds rows of other estimators ({', '.join(found[2:])}); "
                                "give a new --out or the same --estimators")
        else:
            write_text_atomic(path, ",".join(self.header) + "\n")

    def rows(self) -> list[dict[str, Any]]:
        """The complete rows so far (a row cut short by a crash is dropped)."""
        with open(self.path, newline="") as handle:
            out = []
            for row in csv.DictReader(handle):
                try:
                    out.append({"arch": row["arch"], "seed": int(row["seed"]),
                                **{k: float(row[k]) for k in self.header[2:]}})
                except (TypeError, ValueError):
                    continue
            return out

    def append(self, arch: str, seed: int, scored: dict[str, tuple[float, float]]) -> None:
        """One row: each estimator's (score, CPU seconds) for `arch` under `seed`."""
        if "," in arch:
            raise ValueError(f"a score log label holds no comma: {arch!r}")
        values = [repr(scored[name][0]) for name in self.estimators] + [f"{scored[n][1]:.4f}" for n in self.estimators]
        with open(self.path, "a", newline="") as handle:
            handle.write(",".join([arch, str(seed), *values]) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
