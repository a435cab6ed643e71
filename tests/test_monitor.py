"""Every documented tag is written by a quick search of its mode, nothing else is, and docs/monitoring.md lists all."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from conftest import ROOT, TINY_RUNS
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from controllers.registry import controller_class
from nas.report.monitor import Monitor, edge_field, tag, tag_kinds, tag_table_markdown, tag_writer
from search_spaces.darts.genotype import CELLS
from search_spaces.ops import DARTS_OPS

FIELD_PATTERNS = {"s": r"\d+", "cell": "(?:normal|reduce)", "e": r"\d\d", "op": r"[a-z0-9_]+"}
STAGES = (1, 2, 3)
ONLY_WITH_LATENCY_TABLE = {"stage{s}/reinforce/latency_mean",  # tests/test_objectives_select.py checks it
                           "stage{s}/reinforce/latency_table"}  # tests/test_latency.py checks it
ONLY_WITH_EDGE_NORM = {"stage{s}/gradient/edge_weights", "stage{s}/gdas/edge_weights"}  # test_partial_channels.py


def written_tags(run_dir: Path) -> dict[str, set[str]]:
    """Per kind, the tags in a run's event files (text summaries are stored as `<tag>/text_summary` tensors)."""
    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    found = events.Tags()
    return {"scalar": set(found["scalars"]), "image": set(found["images"]),
            "text": {name.removesuffix("/text_summary") for name in found["tensors"]}}


def template_regex(template: str, **fixed: object) -> re.Pattern[str]:
    """A regex matching the tags of `template`, with the `fixed` fields set and the others free."""
    parts = re.split(r"\{(\w+)\}", template)
    return re.compile("".join(re.escape(part) if i % 2 == 0 else
                              re.escape(str(fixed[part])) if part in fixed else FIELD_PATTERNS[part]
                              for i, part in enumerate(parts)))


@pytest.fixture(scope="module", params=list(TINY_RUNS))
def run(request, tiny_run) -> tuple[str, dict[str, set[str]]]:
    return request.param, written_tags(tiny_run(request.param))


def test_every_documented_tag_of_the_mode_is_written_in_every_stage(run) -> None:
    mode, written = run
    for kind, table in tag_kinds().items():
        if kind == "image" and shutil.which("dot") is None:
            continue  # the drawings need graphviz's dot (make graphviz installs it)
        for template in table:
            if template in ONLY_WITH_LATENCY_TABLE | ONLY_WITH_EDGE_NORM:
                continue
            writer = tag_writer(template)
            expected = writer in ("every search", "the darts space", f"the {mode} controller") or (
                writer == "searches whose controller scores samples" and controller_class(mode).scores_samples)
            for s in STAGES:
                cells = CELLS if "{cell}" in template else (None,)
                for cell in cells:
                    pattern = template_regex(template, s=s, cell=cell)
                    hits = [name for name in written[kind] if pattern.fullmatch(name)]
                    assert bool(hits) == expected, f"{mode}: {template} (stage {s}, {cell}) -> {hits[:3]}"


def test_nothing_undocumented_is_written(run) -> None:
    mode, written = run
    for kind, names in written.items():
        patterns = [template_regex(template) for template in tag_kinds()[kind]]
        undocumented = [name for name in names if not any(p.fullmatch(name) for p in patterns)]
        assert not undocumented, f"{mode} wrote undocumented {kind} tags: {undocumented[:5]}"


def logged_ops(written: dict[str, set[str]], stage: int, cell: str, e: int) -> set[str]:
    """The ops whose softmax weight was logged on one edge."""
    prefix = f"stage{stage}/{cell}/prob/edge_{edge_field(e)}/"
    return {name.removeprefix(prefix) for name in written["scalar"] if name.startswith(prefix)}


def test_arch_tags_cover_every_edge_and_kept_op(run) -> None:
    _, written = run
    for cell in CELLS:
        argmax = {name for name in written["scalar"] if name.startswith(f"stage1/{cell}/argmax/")}
        assert argmax == {tag("stage{s}/{cell}/argmax/edge_{e}", s=1, cell=cell, e=edge_field(e)) for e in range(14)}
        assert logged_ops(written, 1, cell, 13) == set(DARTS_OPS)  # stage 1 searches every op on every edge
        assert len(logged_ops(written, 3, cell, 0)) == 3  # stage 3 keeps 3 ops per edge (8 -> 5 -> 3)


def test_monitor_refuses_undocumented_tags(tmp_path: Path) -> None:
    monitor = Monitor(tmp_path)
    with pytest.raises(KeyError, match="undocumented"):
        monitor.scalar("stage{s}/made_up", 1.0, 0, s=1)
    with pytest.raises(KeyError, match="undocumented"):
        monitor.stage_scalars(1, {"reinforce/made_up": 1.0}, 0)
    monitor.close()


def test_the_monitoring_page_lists_every_tag_in_the_generated_table() -> None:
    page = (ROOT / "docs" / "monitoring.md").read_text(encoding="utf-8")
    assert tag_table_markdown() in page, "regenerate the table of docs/monitoring.md: python -m nas.report.monitor"
    for table in tag_kinds().values():
        for template in table:
            assert f"`{template}`" in page


def test_a_plugin_registered_after_import_has_its_tags_documented(monkeypatch) -> None:
    """The tag tables read the registries when used: a controller registered after nas.report.monitor was imported
    (a user's plugin, a test's) can log its tags, and the table names it as their writer."""
    from controllers.registry import CONTROLLERS

    late = type("LateController", (), {"tags": {"stage{s}/late/score": "a late plugin's scalar"}})
    monkeypatch.setitem(CONTROLLERS, "late", late)
    assert tag("stage{s}/late/score", s=2) == "stage2/late/score"
    assert "stage{s}/late/score" in tag_kinds()["scalar"]
    assert tag_writer("stage{s}/late/score") == "the late controller"
