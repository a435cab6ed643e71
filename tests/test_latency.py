"""Latency tables (issue 25, items 13 and 17): the cache knows the timing method, a table must fit the search's
space, eval scale and ops (refused before training), non-positive CLI values are one-line errors, and a table
from any device is accepted (it targets a device) and named in the record, the report and TensorBoard."""
from __future__ import annotations

import json
import re
import shlex

import pytest
import torch
from conftest import ROOT, TINY_SEARCH
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import search
from nas.benchmarks import latency
from nas.core.errors import UserError
from nas.core.records import read_record
from nas.engine import search_loop as nas_search
from search_spaces.darts.space import DartsSpace
from search_spaces.ops import DARTS_OPS

QUICK_RL = str(ROOT / "experiments" / "quick_digits_reinforce.yaml")
EVAL_SCALE = {"C": 4, "layers": 3, "size": 8, "in_channels": 1, "num_classes": 10}  # digits, model.eval_C=4 ...
SCALE_SET = ["model.eval_C=4", "model.eval_layers=3"]
TINY_RL = [*TINY_SEARCH, "reinforce.samples_per_update=2", "reinforce.last_n=8"]
FOREIGN = "cpu: Some Phone CPU x1 threads"
FEWER_STEPS = ["data.limit=200", "stages.epochs=[1,1,1]", "stages.warmup_epochs=[0,0,0]"]


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PDARTS_NAS_CACHE", str(tmp_path / "cache"))


@pytest.fixture(autouse=True)
def keep_threads():
    """`nas-latency --threads` sets torch's threads for the process: give the other tests theirs back."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _build(ops: list[str] | None = None) -> latency.LatencyTable:
    return latency.build_table("darts", torch.device("cpu"), EVAL_SCALE, ops, warmup=0, repeats=1)


def _refused(capsys, entry, argv: list[str]) -> str:
    """The one-line error of a refused command (exit code 2)."""
    with pytest.raises(SystemExit) as exit_info:
        entry(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_build_does_not_return_a_table_timed_by_an_older_method(monkeypatch) -> None:
    """A cached table of an older timing method is measured again, not returned; the same method is a copy."""
    monkeypatch.setattr(latency, "METHOD", latency.METHOD - 1 if hasattr(latency, "METHOD") else 0, raising=False)
    old = _build()
    cached = latency.cache_path(old.device, old.settings)
    data = json.loads(cached.read_text())
    data["entries"] = {key: 1e6 for key in data["entries"]}  # the older method's numbers, told apart by value
    cached.write_text(json.dumps(data))
    monkeypatch.undo()
    monkeypatch.setenv("PDARTS_NAS_CACHE", str(cached.parents[1]))
    new = _build()
    assert new.settings["method"] == latency.METHOD and max(new.entries.values()) < 1e6
    monkeypatch.setattr(latency, "time_module", lambda *a, **k: pytest.fail("a cached table was timed again"))
    assert _build().entries == new.entries


def test_a_table_that_does_not_fit_the_search_is_refused(tmp_path) -> None:
    """Another space, eval scale or a subset of the ops the search samples: refused; a superset is fine."""
    space = DartsSpace(C=4, num_classes=10, in_channels=1, normal_ops=list(DARTS_OPS), reduce_ops=list(DARTS_OPS),
                       eval_C=4, eval_layers=3, image_size=8)
    kept = space.initial_kept_ops()
    full, path = _build(), tmp_path / "t.json"
    full.check_search(space, kept, path)
    with pytest.raises(UserError, match=r"has no entries for sep_conv_5x5, dil_conv_3x3, dil_conv_5x5"):
        _build(["max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3"]).check_search(space, kept, path)
    fewer = {g: [["skip_connect", "sep_conv_3x3"] for _ in edges] for g, edges in kept.items()}
    _build(["skip_connect", "sep_conv_3x3", "max_pool_3x3"]).check_search(space, fewer, path)
    with pytest.raises(UserError, match="at another eval scale: C 4 \\(search: 36\\)"):
        full.check_search(DartsSpace(4, 10, 1, list(DARTS_OPS), list(DARTS_OPS), eval_C=36, eval_layers=3,
                                     image_size=8), kept, path)
    other = latency.LatencyTable(full.device, {**full.settings, "space": "nb201"}, full.entries)
    with pytest.raises(UserError, match="was built for the nb201 space, not for the search's darts space"):
        other.check_search(space, kept, path)


def test_a_table_on_a_subset_of_ops_is_refused_before_training(tmp_path, monkeypatch, capsys) -> None:
    table = latency.write_table(tmp_path / "subset.json", _build(["sep_conv_3x3", "skip_connect"]))
    monkeypatch.setattr(nas_search.StageRunner, "run", lambda self: pytest.fail("the stage trained"))
    err = _refused(capsys, search.main, ["-c", QUICK_RL, "--run-dir", str(tmp_path / "run"), "--set", *TINY_RL,
                                         *SCALE_SET, f"reward.latency_table={table}"])
    assert "has no entries for max_pool_3x3" in err and "nas-latency build --ops" in err


@pytest.mark.parametrize("bad", [["--repeats", "0"], ["--layers", "0"], ["--C", "-4"], ["--size", "0"],
                                 ["--in-channels", "0"], ["--classes", "0"], ["--threads", "0"], ["--warmup", "-1"]])
def test_build_refuses_non_positive_values(bad, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(latency, "build_table", lambda *a, **k: pytest.fail("built with a bad value"))
    err = _refused(capsys, latency.main, ["build", "--C", "4", "--layers", "3", "--size", "8", *bad, "-o",
                                          str(tmp_path / "t.json")])
    assert bad[0] in err
    assert not (tmp_path / "t.json").exists()


@pytest.mark.parametrize("bad", [["--archs", "0"], ["--archs", "1"], ["--repeats", "0"], ["--threads", "-1"]])
def test_check_refuses_bad_counts(bad, tmp_path, capsys) -> None:
    table = latency.write_table(tmp_path / "t.json", _build())
    assert bad[0] in _refused(capsys, latency.main, ["check", str(table), *bad])


def test_a_table_of_another_device_is_accepted_but_checked_only_where_it_was_measured(tmp_path, capsys) -> None:
    data = json.loads(latency.write_table(tmp_path / "t.json", _build()).read_text())
    (tmp_path / "foreign.json").write_text(json.dumps({**data, "device": FOREIGN}))
    assert latency.load_table(tmp_path / "foreign.json").device == FOREIGN
    err = _refused(capsys, latency.main, ["check", str(tmp_path / "foreign.json"), "--archs", "2"])
    assert f"measured on {FOREIGN!r}" in err


def _documented_latency_commands() -> list[list[str]]:
    """The commands of the `nas-latency` example of docs/controllers.md, as argument lists."""
    page = (ROOT / "docs" / "controllers.md").read_text(encoding="utf-8")
    block = re.search(r"### Latency tables \(`nas-latency`\)\n\n```bash\n(.*?)```", page, re.S)
    assert block, "the latency section of docs/controllers.md has no bash block"
    return [shlex.split(line, comments=True) for line in block.group(1).replace("\\\n", " ").splitlines()
            if shlex.split(line, comments=True)]


def _text(run_dir, name: str) -> str:
    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"tensors": 0})
    events.Reload()
    return events.Tensors(f"{name}/text_summary")[-1].tensor_proto.string_val[0].decode()


def test_the_documented_latency_example_runs_as_written(tmp_path, capsys) -> None:
    """The table of docs/controllers.md, built with --threads 1, drives the quick search that runs on 2 threads (tiny
    overrides and a single timed run keep it short); the table's device is in the record, the report and TensorBoard."""
    commands = _documented_latency_commands()
    run = next(c for c in commands if c[:2] == ["python", "search.py"])
    table_name = next(a.split("=", 1)[1] for a in run if a.startswith("reward.latency_table="))
    build = next(c for c in commands if c[:2] == ["nas-latency", "build"] and c[c.index("-o") + 1] == table_name)
    assert "--threads" in build and build[build.index("--threads") + 1] == "1"
    table = tmp_path / table_name
    build[build.index("-o") + 1] = str(table)
    latency.main([*build[1:], "--warmup", "0", "--repeats", "1"])
    device = latency.load_table(table).device
    assert device.endswith("x1 threads")
    torch.set_num_threads(2)  # the search's own threads (torch's default on 2 cores): another device name
    argv = [str(ROOT / a) if a.endswith(".yaml") else a for a in run[2:]]
    argv = [f"reward.latency_table={table}" if a.startswith("reward.latency_table=") else a for a in argv]
    run_dir = tmp_path / "run"
    assert search.main([*argv, "--run-dir", str(run_dir), "--set", *TINY_RL, *FEWER_STEPS]) == 0
    stages = read_record(run_dir / "genotype.json")["search"]["stages"]
    assert all(s["latency_table"] == {"path": str(table), "device": device} for s in stages)
    assert f"measured on {device}" in (run_dir / "report.md").read_text()
    assert device in _text(run_dir, "stage3/reinforce/latency_table")
