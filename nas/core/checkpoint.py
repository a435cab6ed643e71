"""Atomic checkpoints with a previous-good fallback, and the RNG states that make a resume exact.

A run directory holds `checkpoint.pt` and, after the second save, `checkpoint.prev.pt`. A save writes
a temporary file, fsyncs it, moves the current checkpoint to `.prev` and the new one into place, so a
kill at any moment leaves at least one complete checkpoint. Loads use `torch.load(weights_only=True)`:
checkpoints hold only tensors, numbers, strings and containers of them.
"""
from __future__ import annotations

import os
import random
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nas.core.errors import UserError

CHECKPOINT = "checkpoint.pt"
PREVIOUS = "checkpoint.prev.pt"


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(run_dir: str | os.PathLike, state: dict[str, Any], kind: str) -> Path:
    """Write `state` atomically as the run's checkpoint, tagged with `kind` ("search" or "eval").

    On a failed write (a full disk, say) the temporary file is removed, the existing checkpoints stay
    as they were, and a UserError says what happened.
    """
    run_dir = Path(run_dir)
    target = run_dir / CHECKPOINT
    fd, tmp_name = tempfile.mkstemp(dir=run_dir, prefix=".checkpoint-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save({"format": f"pdarts-nas/{kind}", "version": 1, "state": state}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        if target.exists():
            os.replace(target, run_dir / PREVIOUS)
        os.replace(tmp_name, target)
        _fsync_dir(run_dir)
    except OSError as err:
        Path(tmp_name).unlink(missing_ok=True)
        raise UserError(f"could not write checkpoint in {run_dir}: {err.strerror or err}; "
                        f"free space and resume with --resume {run_dir} (earlier checkpoints are intact)") from None
    return target


def _read(path: Path, kind: str) -> dict[str, Any]:
    """Load one checkpoint file; raise ValueError when it is truncated, foreign or of another kind."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, foreign pickle, unsafe globals: all mean "not ours"
        raise ValueError(f"{path} is not a readable checkpoint ({type(err).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != f"pdarts-nas/{kind}":
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"{path} is not a {kind} checkpoint of this project (found {found!r})")
    return payload["state"]


def load_checkpoint(run_dir: str | os.PathLike, kind: str) -> dict[str, Any]:
    """The newest good checkpoint of a run directory, falling back to the previous one with a warning."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"--resume {run_dir}: no such directory; give the run directory of an earlier run")
    candidates = [p for p in (run_dir / CHECKPOINT, run_dir / PREVIOUS) if p.exists()]
    if not candidates:
        raise UserError(f"--resume {run_dir}: no {CHECKPOINT} in it; give the run directory of an earlier "
                        f"{kind} run")
    problems = []
    for path in candidates:
        try:
            state = _read(path, kind)
        except ValueError as err:
            problems.append(str(err))
            continue
        if problems:
            warnings.warn(f"{problems[0]}; using the previous good checkpoint {path}", stacklevel=2)
        return state
    raise UserError(f"--resume {run_dir}: " + "; ".join(problems))


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) RNG states in a weights_only-loadable form."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what rng_state() captured, with the numerics seed_everything sets (a resumed run computes alike)."""
    torch.set_flush_denormal(True)
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices), and flush denormal floats to zero on CPU.

    Denormals appear in the first steps of a supernet on real images and made CPU steps 10-20x slower
    (measured: 60 s against 3 s per step on digits); flushing them changes no result that matters, but
    it changes results bit for bit, so set_rng_state sets it too.
    """
    torch.set_flush_denormal(True)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
