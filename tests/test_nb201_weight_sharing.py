"""experiments/nb201_weight_sharing.py: --smoke runs the ranking and every search method through search.py on the
shared CIFAR-10 and writes results.json with the documented keys (nothing here judges quality); the study's cell
choice and sampling; the rsps controller's scoring."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, SHARED_DATA, load_script, shared_path

from controllers.base import ArchStepContext
from controllers.rsps import RspsConfig, RspsController
from nas.benchmarks.nb201_ranking import PathSampler, iso_classes, study_cells
from nas.benchmarks.nb201_table import TabularBenchmark
from search_spaces.nb201 import NB201Space, parse_arch

study = load_script("nb201_weight_sharing")
METHODS, main = study.METHODS, study.main

SCRIPT = ROOT / "experiments" / "nb201_weight_sharing.py"
TABLE = SHARED_DATA / "nb201" / "nb201_cifar10.csv"


def test_smoke_runs_the_ranking_and_every_method_and_writes_the_results(shared_cifar10: Path, tmp_path: Path) -> None:
    shared_path("nb201", "nb201_cifar10.csv")
    methods = [m for m in METHODS if m not in study.ESTIMATOR_METHODS]  # tests/test_estimator_search.py runs those
    done = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(tmp_path), "--data-root",
                           str(shared_cifar10), "--methods", *methods], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["complete"] is True
    ranking = results["ranking"]
    for key in ("kendall_tau", "spearman_rho", "precision_top5pct", "kl_spearman_rho"):
        assert isinstance(ranking[key], float)
    assert 0.0 <= ranking["precision_top5pct"] <= 1.0
    assert set(ranking["variants"]) == {"uniform_ops", "uniform_cells", "path_dropout"}
    for variant in ranking["variants"].values():
        assert set(variant["batch_stats"]) == set(variant["recalibrated"]) == {"kendall_tau", "spearman_rho",
                                                                              "precision_top5pct"}
        assert len(variant["oneshot_acc"]["recalibrated_acc"]) == ranking["cells"] == len(ranking["study_cells"])
        assert variant["by_epoch"][-1]["epoch"] == results["setting"]["ranking"]["epochs"]
    assert [e["epoch"] for e in ranking["variants"]["uniform_ops"]["by_epoch"]] == [1, 2]
    assert set(results["search"]) == set(methods)
    bench = TabularBenchmark(TABLE)
    for method, entry in results["search"].items():
        assert set(entry) >= {"test_acc_mean", "test_acc_std", "archs", "wall_s", "cpu_s"}
        assert all(isinstance(entry[key], float) for key in ("test_acc_mean", "wall_s", "cpu_s"))
        assert entry["test_acc_mean"] == pytest.approx(np.mean([bench.query(a) for a in entry["archs"]]))
        run_dir = tmp_path / "searches" / method / "seed0"
        assert json.loads((run_dir / "genotype.json").read_text())["genotype"] == entry["archs"][0]
    assert "darts_v1" in done.stdout and "tau" in done.stdout


def test_a_bad_method_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--smoke", "--out", str(tmp_path), "--methods", "enas"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "enas" in err and not list(tmp_path.iterdir())


def test_a_saved_config_missing_a_since_added_key_is_still_the_same_search(tmp_path: Path) -> None:
    import yaml

    from nas.core.config import load_config
    from nas.engine.search_config import SearchConfig

    overrides = study.search_overrides("darts_v1", 0, study.PRESETS["smoke"].search, str(tmp_path), "cpu")
    tree = load_config(SearchConfig, study.CONFIG, overrides).to_tree()
    saved = json.loads(json.dumps(tree))
    del saved["run"]["amp"]  # as a run saved before the key existed
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    assert study.same_config(tmp_path, tree)
    saved["run"]["seed"] = 1
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    assert not study.same_config(tmp_path, tree)
    saved["run"]["seed"], saved["run"]["retired_key"] = 0, 1
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    assert not study.same_config(tmp_path, tree)


def test_search_epochs_set_every_search_and_split_pdarts_as_the_paper(shared_cifar10: Path, tmp_path: Path) -> None:
    assert study.pdarts_epochs(50) == [20, 15, 15] and study.pdarts_epochs(3) == [1, 1, 1]
    shared_path("nb201", "nb201_cifar10.csv")
    args = study.parse_args(["--smoke", "--out", str(tmp_path), "--data-root", str(shared_cifar10), "--methods",
                             "darts_v1", "pdarts", "--variants", "--search-epochs", "7"])
    _, tasks, _ = study.plan(args)
    epochs = {key[0]: arguments[2]["stages"]["epochs"] for _, kind, key, arguments in tasks}
    assert epochs == {"darts_v1": [7], "pdarts": [3, 2, 2]}
    with pytest.raises(SystemExit) as exit_info:
        main(["--smoke", "--out", str(tmp_path), "--search-epochs", "0"])
    assert exit_info.value.code == 2


def test_the_skip_limited_cells_are_judged_for_the_limits_every_seed_reports() -> None:
    bench = TabularBenchmark(shared_path("nb201", "nb201_cifar10.csv"))
    best, _ = bench.best()
    worst = "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|"
    seeds = [{"6": worst, "2": best, "1": best}, {"6": worst, "2": worst, "0": None}]
    assert study.by_max_skip(seeds, bench) == {"6": bench.query(worst),
                                               "2": pytest.approx((bench.query(best) + bench.query(worst)) / 2)}
    assert study.by_max_skip([], bench) == {}


def test_study_cells_span_the_accuracy_range_and_include_the_best() -> None:
    by_code = np.linspace(10.0, 94.0, 1000)
    codes = study_cells(by_code, 20, 5, seed=0)
    assert len(codes) == len(set(codes)) and 24 <= len(codes) <= 25
    assert set(range(995, 1000)) <= set(codes)
    assert min(codes) < 50 and max(by_code[codes]) == by_code.max()


def test_uniform_over_cells_draws_isomorphism_classes_evenly() -> None:
    classes = iso_classes(str(shared_path("nb201", "nb201_cifar10.csv")))
    assert len(classes) == 6466 and sum(map(len, classes)) == 15625
    owner = {code: i for i, members in enumerate(classes) for code in members}
    biggest = max(range(len(classes)), key=lambda i: len(classes[i]))
    sampler = PathSampler("cells", 0.0, classes, seed=0)
    draws = [owner[NB201Space.index_code(sampler()["path"]["cell"].tolist())] for _ in range(2000)]
    assert draws.count(biggest) < 10  # uniform over ops would draw it len/15625 * 2000 times
    assert len(classes[biggest]) / 15625 * 2000 > 25


def test_path_dropout_keeps_an_op_on_every_edge() -> None:
    sampler = PathSampler("ops", 0.9, None, seed=0)
    masks = torch.stack([sampler()["weights"]["cell"] for _ in range(200)])
    assert (masks.sum(dim=-1) >= 1).all() and 0.05 < masks.mean() < 0.3


def test_rsps_scores_candidates_round_robin_and_outputs_the_best() -> None:
    torch.manual_seed(0)
    space = NB201Space(C=4, in_channels=1)
    kept = space.initial_kept_ops()
    model = space.build_supernet(kept, 1)
    controller = RspsController(RspsController.shapes(kept), RspsConfig(candidates=3), torch.Generator().manual_seed(0))
    batches = [(torch.randn(8, 1, 8, 8), torch.randint(10, (8,))) for _ in range(7)]
    for step, batch in enumerate(batches):
        controller.arch_step(ArchStepContext(model=model, criterion=None, train_batch=None, val_batch=batch,
                                             w_optimizer=None, lr=0.0, stage=0, step=step))
    assert controller.batches.tolist() == [3, 2, 2]
    means = controller.correct / controller.batches
    best = controller.candidate_ops[int(means.argmax())]
    arch = controller.architecture(space, kept)
    assert [NB201Space.ops.index(op) for op in parse_arch(arch)] == best.tolist()
