"""NAS-Bench-201 through search.py: records in architecture strings, --stage and --resume, the report, the quick
config on the shared CIFAR-10, and a one-line error for REINFORCE sampling DARTS genotypes on it."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from conftest import ROOT, SHARED_DATA, nth_mid_epoch_checkpoint

import search
from nas.core.config import load_config
from nas.core.data import CIFAR10_JPEG_MD5
from nas.core.records import read_record
from nas.engine.search_config import SearchConfig
from search_spaces.nb201 import NB201_OPS, parse_arch

QUICK = ROOT / "experiments" / "nb201_quick.yaml"
# A tiny NB201 search: 400 digits images, C=4, one cell per stage, two stages (5 -> 2 -> 1 ops per edge).
TINY = ["space=nb201", "data.dataset=digits", "data.root=data", "data.limit=400", "data.batch_size=50", "model.C=4",
        "stages.layers=[1,1]", "stages.epochs=[2,1]", "stages.warmup_epochs=[1,0]", "stages.keep=[2,1]",
        "stages.skip_dropout=[0.0,0.0]", "run.log_every=2", "run.checkpoint_every=3"]
CONTROLLER = {"gradient": [],
              "reinforce": ["reinforce.sample=edges", "reinforce.epsilon=[0.2,0.2]", "reinforce.samples_per_update=2",
                            "reward.alpha=[0.0,0.0]", "reward.p_base=[1.0,1.0]"]}


def run(run_dir: Path, controller: str, *extra: str) -> int:
    return search.main(["-c", str(QUICK), "--run-dir", str(run_dir), "--set", *TINY, f"controller={controller}",
                        *CONTROLLER[controller], *extra])


@pytest.fixture(scope="module", params=list(CONTROLLER))
def finished(request, tmp_path_factory) -> tuple[str, Path]:
    run_dir = tmp_path_factory.mktemp(f"nb201-{request.param}")
    assert run(run_dir, request.param) == 0
    return request.param, run_dir


def test_a_search_records_an_nb201_architecture_string(finished) -> None:
    controller, run_dir = finished
    record = read_record(run_dir / "genotype.json")
    assert record["space"] == "nb201" and record["search"]["controller"] == controller
    arch = record["genotype"]
    assert len(parse_arch(arch)) == 6 and record["genotype_str"] == arch
    stages = record["search"]["stages"]
    assert [len(s["kept_ops"]["cell"][0]) for s in stages] == [5, 2]
    assert [len(s["kept_after"]["cell"][0]) for s in stages] == [2, 1]
    assert [ops[0] for ops in stages[-1]["kept_after"]["cell"]] == list(parse_arch(arch))
    assert set(NB201_OPS) == set(stages[0]["kept_ops"]["cell"][0]) and record["metrics"]["params_M"] > 0
    report = (run_dir / "report.md").read_text()
    assert arch in report and (run_dir / "report" / "probs_stage2.png").stat().st_size > 0
    assert (run_dir / "report" / "argmax_stage1_cell.png").is_file()
    assert (controller == "reinforce") == (run_dir / "report" / "rewards_stage1.png").is_file()


def test_per_stage_runs_repeat_the_full_run(finished, tmp_path: Path) -> None:
    controller, run_dir = finished
    assert run(tmp_path, controller, "--stage", "1") == 0
    assert not (tmp_path / "genotype.json").exists() and (tmp_path / "stages" / "stage1.json").is_file()
    assert run(tmp_path, controller, "--stage", "2") == 0
    full, staged = (read_record(d / "genotype.json") for d in (run_dir, tmp_path))
    assert staged["genotype"] == full["genotype"]
    for a, b in zip(full["search"]["stages"], staged["search"]["stages"]):
        assert (a["kept_after"], a["probabilities"]) == (b["kept_after"], b["probabilities"])


def test_a_killed_search_resumes_exactly(finished, tmp_path: Path, kill_and_resume) -> None:
    controller, run_dir = finished
    assert kill_and_resume(lambda where: run(where, controller), tmp_path, nth_mid_epoch_checkpoint(3)) == 0
    full, resumed = (read_record(d / "genotype.json") for d in (run_dir, tmp_path))
    assert resumed["genotype"] == full["genotype"]
    assert resumed["search"]["stages"] == full["search"]["stages"]


def test_reinforce_sampling_genotypes_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    settings = [*TINY, "controller=reinforce", "reward.alpha=[0.0,0.0]", "reward.p_base=[1.0,1.0]",
                "reinforce.epsilon=[0.2,0.2]"]
    with pytest.raises(SystemExit) as exit_info:
        search.main(["-c", str(QUICK), "--run-dir", str(tmp_path), "--set", *settings])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: reinforce.sample=genotype samples two inputs per cell node")
    assert "set reinforce.sample: edges" in err


@pytest.mark.parametrize("controller", ["gradient", "reinforce", "gdas"])
def test_the_quick_config_is_valid_with_every_controller(controller: str) -> None:
    extra = {"reinforce": ["reinforce.sample=edges"]}.get(controller, [])
    cfg = load_config(SearchConfig, QUICK, [f"controller={controller}", *extra])
    assert (cfg.space, cfg.controller, cfg.data.dataset, cfg.data.limit) == ("nb201", controller, "cifar10_jpeg", 2000)
    one_stage = ["stages.layers=[1]", "stages.epochs=[3]", "stages.warmup_epochs=[1]", "stages.keep=[1]",
                 "stages.skip_dropout=[0.0]"]
    one_stage += {"reinforce": ["reinforce.epsilon=[0.2]", "reward.alpha=[0.0]", "reward.p_base=[1.0]"]}.get(
        controller, [])
    assert load_config(SearchConfig, QUICK, [f"controller={controller}", *extra, *one_stage]).num_stages == 1


def test_the_md5s_the_loader_checks_are_those_of_the_published_batches(shared_cifar10: Path) -> None:
    listed = dict(line.split()[::-1] for line in (SHARED_DATA / "cifar10_jpeg" / "BATCHES.SHA256").read_text()
                  .splitlines())
    folder = shared_cifar10 / "cifar-10-batches-py"
    assert {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in listed} == listed
    assert {name: hashlib.md5((folder / name).read_bytes()).hexdigest() for name in listed} == CIFAR10_JPEG_MD5


def test_a_very_short_quick_search_on_the_shared_cifar10(shared_cifar10: Path, tmp_path: Path) -> None:
    settings = [f"data.root={shared_cifar10}", "data.limit=200", "data.batch_size=50", "model.C=4",
                "stages.epochs=[1,1,1]", "stages.warmup_epochs=[0,0,0]", "run.draw=false"]
    assert search.main(["-c", str(QUICK), "--run-dir", str(tmp_path), "--set", *settings]) == 0
    record = read_record(tmp_path / "genotype.json")
    assert record["search"]["dataset"] == "cifar10_jpeg" and len(record["search"]["stages"]) == 3
    assert len(parse_arch(record["genotype"])) == 6
    assert json.loads(json.dumps(record["search"]["config"]["data"]))["limit"] == 200
