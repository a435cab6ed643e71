"""`nas-report` and the report a search writes at its end: figures (real PNGs) and report.md."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from conftest import ROOT

import search
from nas.cli import report as report_cli
from nas.core.errors import UserError
from nas.core.records import read_record, write_record
from nas.report import run as report

CONFIGS = {controller: str(ROOT / "experiments" / name) for controller, name in
           (("gradient", "quick_digits.yaml"), ("reinforce", "quick_digits_reinforce.yaml"))}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Two stages over small, different normal and reduce op sets: cheap, and the kept ops differ per edge in stage 2.
SMALL_SEARCH = [
    "model.C=4", "stages.layers=[3,3]", "stages.epochs=[1,1]", "stages.warmup_epochs=[0,0]", "stages.keep=[2,1]",
    "stages.skip_dropout=[0.0,0.4]", "data.batch_size=96", "run.log_every=2",
    "model.normal_ops=[none,max_pool_3x3,skip_connect,sep_conv_3x3]",
    "model.reduce_ops=[max_pool_3x3,avg_pool_3x3,skip_connect,dil_conv_3x3]",
]


CONTROLLER_SETTINGS = {"gradient": [], "reinforce": ["reward.alpha=[0.0,0.0]", "reward.p_base=[1.0,1.0]",
                                                     "reinforce.epsilon=[0.2,0.2]", "reinforce.samples_per_update=2"]}


def run_search(run_dir: Path, *extra: str, controller: str = "gradient") -> Path:
    argv = ["-c", CONFIGS[controller], "--run-dir", str(run_dir), "--set", *SMALL_SEARCH,
            *CONTROLLER_SETTINGS[controller], *extra]
    assert search.main(argv) == 0
    return run_dir


def embedded(markdown: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)


@pytest.fixture(scope="module", params=["gradient", "reinforce"])
def finished(request, tmp_path_factory) -> tuple[str, Path]:
    return request.param, run_search(tmp_path_factory.mktemp(request.param), controller=request.param)


def test_search_writes_the_report_at_its_end(finished) -> None:
    _, run_dir = finished
    assert (run_dir / "report.md").is_file() and (run_dir / "report" / "probs_stage2.png").is_file()


def test_nas_report_writes_figures_and_a_report_that_embeds_them(finished, capsys) -> None:
    controller, run_dir = finished
    for path in [run_dir / "report.md", *(run_dir / "report").iterdir()]:
        path.unlink()
    report_cli.main([str(run_dir)])
    assert capsys.readouterr().out.strip() == str(run_dir / "report.md")
    text = (run_dir / "report.md").read_text()
    figures = sorted(p.name for p in (run_dir / "report").iterdir())
    expected = [f"argmax_stage{s}_{cell}.png" for s in (1, 2) for cell in ("normal", "reduce")]
    expected += [f"probs_stage{s}.png" for s in (1, 2)]
    expected += [f"rewards_stage{s}.png" for s in (1, 2)] if controller == "reinforce" else []
    assert figures == sorted(expected)
    links = embedded(text)
    assert {f"report/{name}" for name in figures} <= set(links)
    for link in links:
        assert (run_dir / link).read_bytes()[:8] == PNG_MAGIC, link
    assert "stages/stage2/normal.png" in links  # the stage drawings (run.draw and graphviz)
    record = read_record(run_dir / "genotype.json")
    final = record["search"]["stages"][-1]["genotype_str"]
    assert f"    {final}\n" in text and f"{record['metrics']['params_M']:.3f}M parameters" in text
    for stage in record["search"]["stages"]:
        assert f"| {stage['stage']} | 3 | 1 | " in text and f" {stage['val_acc']:.2f} | " in text
    assert ("argmin acc" in text) == (controller == "reinforce")


@pytest.mark.parametrize("finished", ["gradient"], indirect=True)
def test_report_of_an_unfinished_run_uses_the_latest_stage(finished, tmp_path: Path) -> None:
    run_dir = Path(shutil.copytree(finished[1], tmp_path / "unfinished"))
    (run_dir / "genotype.json").unlink()  # as after `search.py --stage 2` of a longer search
    text = report.write_report(run_dir).read_text()
    stage2 = read_record(run_dir / "stages" / "stage2.json")["stages"][-1]
    assert "after stage 2 (the search is unfinished)" in text
    assert f"    {stage2['genotype_str']}\n" in text and f"{stage2['params_M']:.3f}M parameters" in text


def test_bad_run_directories_are_one_line_user_errors(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        report_cli.main([str(tmp_path / "missing")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1
    with pytest.raises(UserError, match="neither genotype.json nor stages"):
        report.write_report(tmp_path)
    write_record(tmp_path / "genotype.json", {"genotype": {"normal": [], "reduce": []}, "space": "darts"})
    with pytest.raises(UserError, match="no per-stage search results"):
        report.write_report(tmp_path)


def test_skip_limit_table_merges_identical_rows(tmp_path: Path) -> None:
    """Limits that do not bind give one row (`2..8`), the final genotype is named as such, gaps are listed."""
    final, fewer, none_left = "Genotype(final)", "Genotype(one skip)", "Genotype(no skip)"
    by_skip = {str(m): final for m in range(8, 1, -1)} | {"1": fewer, "0": none_left}
    stage = {"stage": 1, "kept_ops": {"normal": [["skip_connect"]]}, "probabilities": {"normal": [[1.0]]},
             "genotype_str": final, "params_M": 1.0, "genotypes_by_max_skip": by_skip}
    write_record(tmp_path / "stages" / "stage1.json", {"genotype": {}, "stages": [stage]})
    text = report.write_report(tmp_path, figures=False).read_text()
    assert "| 2..8 | the final genotype |" in text and f"| 1 | `{fewer}` |" in text
    assert f"| 0 | `{none_left}` |" in text and text.count("the final genotype |") == 1
    by_skip.update({"5": None, "4": None, "0": final})  # a gap (no genotype fits) and a repeat after it
    write_record(tmp_path / "stages" / "stage1.json", {"genotype": {}, "stages": [stage]})
    text = report.write_report(tmp_path, figures=False).read_text()
    assert "| 0, 2..3, 6..8 | the final genotype |" in text and "| 4..5 | - |" in text
