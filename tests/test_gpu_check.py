"""experiments/gpu_check.py --cpu: the whole prepared GPU check at tiny sizes on the CPU prints its one table, writes
its JSON, and its two-epoch eval learns; the full mode refuses a machine without CUDA before any work."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import load_script

pytestmark = pytest.mark.usefixtures("one_thread")


def test_cpu_mode_prints_the_table_and_writes_the_json(tmp_path, capsys) -> None:
    gpu_check = load_script("gpu_check")
    out = tmp_path / "gpu.json"
    assert gpu_check.main(["--cpu", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    rows = report["rows"]
    kinds = {(r["row"], r["amp"], r["channels_last"]) for r in rows}
    assert kinds == {(f"search/{k}", amp, cl) for k in ("mixture", "partial", "path") for amp in ("off", "bf16")
                     for cl in (False, True)} | {("eval DARTS_V2", amp, cl) for amp in ("off", "bf16")
                                                  for cl in (False, True)}
    assert all(r["rate"] > 0 and r["peak_mib"] >= 0 and not r["compile"] for r in rows)  # compile: GPU mode only
    first, second = report["epochs"]
    assert second["train_loss"] < first["train_loss"]  # the two-epoch eval learns
    assert all(torch.isfinite(torch.tensor([e["train_loss"], e["test_loss"]])).all() for e in report["epochs"])
    table = printed[printed.index("gpu_check on cpu"):].splitlines()
    assert len(table) == 2 + len(rows) + 2  # title, header, one line per row, one per epoch
    assert table[1].split() == ["row", "amp", "chlast", "compile", "rate", "unit", "peak", "MiB"]


def test_full_mode_without_cuda_is_refused_with_one_line(capsys, monkeypatch) -> None:
    gpu_check = load_script("gpu_check")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_info:
        gpu_check.main(["--data-root", "/nonexistent"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("error: no CUDA device") and err.count("\n") == 1


def test_a_compile_that_fails_is_that_rows_result(monkeypatch) -> None:
    gpu_check = load_script("gpu_check")

    class Broken(torch.nn.Module):  # what torch.compile returns when its backend fails at the first forward
        def forward(self, *args, **kwargs):
            raise RuntimeError("inductor: no C++ compiler")

    def broken_compile(model):
        return Broken()

    monkeypatch.setattr(torch, "compile", broken_compile)
    row = gpu_check.compile_row(gpu_check.TINY, torch.device("cpu"))
    assert row["compile"] and row["error"] == "RuntimeError: inductor: no C++ compiler"
    assert row["rate"] != row["rate"]  # nan: no rate to report
