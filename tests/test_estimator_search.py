"""Training-free estimators in the search (docs/estimators.md): the end-of-stage rescoring with an estimator reward,
progressive pruning by an estimator (controllers/estimator_pruning.py), the best of N random cells by an estimator
(controllers/random_estimator.py), and the NB201 study's estimator methods, which never read the table (their smoke
runs: tests/test_nb201_weight_sharing.py runs the other methods')."""
from __future__ import annotations

import builtins
import io
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from conftest import load_script, shared_path

import search
from controllers.base import ArchStepContext, StageContext
from controllers.estimator_pruning import importance
from controllers.registry import CONTROLLERS
from nas.benchmarks.nb201_table import TabularBenchmark
from nas.core.config import build_dataclass
from nas.core.records import read_record
from nas.engine.selection import stage_candidates
from search_spaces.nb201 import NB201Space, parse_arch

BATCH = (torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.arange(16) % 10)


def tiny_nb201() -> NB201Space:
    return NB201Space(C=4, in_channels=1, eval_C=4, eval_N=1, image_size=8)


def controller(name: str, space: NB201Space, kept: Any, settings: dict[str, dict[str, Any]]) -> Any:
    cls = CONTROLLERS[name]
    sections = {section: build_dataclass(kind, dict(settings.get(section, {})), section)
                for section, kind in cls.config_sections.items()}
    cls.validate_config(sections, 1)
    ctx = StageContext(sections=sections, space=space, kept_ops=kept, stage=0, num_stages=1,
                       generator=torch.Generator().manual_seed(0))
    return cls.from_config(ctx)


def steps(c: Any, model: Any, n: int) -> None:
    for step in range(n):
        c.arch_step(ArchStepContext(model=model, criterion=F.cross_entropy, train_batch=None, val_batch=BATCH,
                                    w_optimizer=None, lr=0.0, stage=0, step=step))


def test_stage_rescoring_with_an_estimator_reward_uses_the_estimator_not_the_untrained_supernet() -> None:
    torch.manual_seed(0)
    space = tiny_nb201()
    kept = space.initial_kept_ops()
    c = controller("reinforce", space, kept, {
        "reinforce": {"sample": "edges", "epsilon": [0.2]},
        "reward": {"estimator": "params", "alpha": [0.0], "p_base": [1.0]}})
    steps(c, space.build_supernet(kept, 1), 3)
    supernet_calls: list[Any] = []

    def evaluate(**kwargs: Any) -> tuple[float, float]:  # the untrained supernet: every cell alike
        supernet_calls.append(kwargs)
        return 2.3, 10.0

    argmax = c.architecture(space, kept)
    candidates, check = stage_candidates(c, space, kept, argmax, evaluate, top_k=5, rescored=10)
    assert not supernet_calls
    rescored = [cand for cand in candidates if "val_acc" in cand] + [check["argmax"]]
    for cand in rescored:
        rank = c.estimator_reward.rank(cand["genotype"], record=False)
        assert cand["val_acc"] == round(100 * rank, 3) and cand["val_reward"] == round(rank, 6)
        assert cand["rescored_by"] == "estimator params"
    best = max(rescored, key=lambda cand: cand["val_reward"])
    assert best["params"] == max(cand["params"] for cand in rescored)


def test_importance_is_the_drop_of_the_mean_score_when_an_op_is_removed() -> None:
    # one edge: the fitted op values are the op means 4, 2, 0 (centred: 2, 0, -2); op 3 is never drawn
    paths = [{"cell": torch.tensor([k])} for k in (0, 1, 1, 2)]
    table = importance(paths, [4.0, 1.0, 3.0, 0.0], {"cell": (1, 4)})["cell"][0].tolist()
    assert table[:3] == pytest.approx([0.0 - (-1.0), 0.0 - 0.0, 0.0 - 1.0], abs=1e-3)  # mean minus mean without
    assert table[3] == pytest.approx(min(table[:3]) - 1)  # never drawn: below every drawn op
    # two edges, additive scores: each edge's ranking is exact although the other edge varies
    paths = [{"cell": torch.tensor([a, b])} for a in range(3) for b in range(3)]
    table = importance(paths, [10.0 * a + b for a in range(3) for b in range(3)], {"cell": (2, 3)})["cell"]
    assert table[0].argsort().tolist() == table[1].argsort().tolist() == [0, 1, 2]
    assert float(table[0, 2] - table[0, 0]) == pytest.approx(10 * float(table[1, 2] - table[1, 0]), rel=1e-3)


def test_pruning_by_params_keeps_the_convolutions() -> None:
    space = tiny_nb201()
    kept = space.initial_kept_ops()
    c = controller("estimator_pruning", space, kept,
                   {"estimator_pruning": {"estimator": "params", "samples": [60], "per_step": 20}})
    steps(c, None, 4)
    assert c.stage_entries(space, kept, {})["samples"] == 60  # the fourth step has nothing left to score
    pruned = space.prune(c.probs(), kept, 2, drop_none_first=False)
    assert pruned["cell"] == [["nor_conv_1x1", "nor_conv_3x3"]] * 6
    assert c.architecture(space, kept) == "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|" \
                                          "nor_conv_3x3~1|nor_conv_3x3~2|"


def test_random_estimator_outputs_the_best_of_its_distinct_candidates() -> None:
    space = tiny_nb201()
    kept = space.initial_kept_ops()
    c = controller("random_estimator", space, kept,
                   {"random_estimator": {"estimator": "params", "candidates": 12, "per_step": 5}})
    steps(c, None, 3)
    keys = c.samples.keys
    assert len(keys) == len(set(keys)) == 12
    best = max(keys, key=space.params_millions)
    assert c.architecture(space, kept) == best
    assert space.path_architecture(c.eval_forward_kwargs()["path"], kept) == best
    rewards = dict(zip(keys, (r for _, r in c.scored_samples())))
    assert rewards[best] == 1.0 and all(0 < r <= 1 for r in rewards.values())


def test_the_estimator_methods_never_open_the_nb201_table(shared_cifar10: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    study = load_script("nb201_weight_sharing")
    table = shared_path("nb201", "nb201_cifar10.csv")
    real_open = io.open

    def guarded(file: Any, *args: Any, **kwargs: Any) -> Any:
        if Path(str(file)).name == table.name:
            raise AssertionError(f"a search opened the NB201 table {file}")
        return real_open(file, *args, **kwargs)

    for module, name in ((builtins, "open"), (io, "open")):
        monkeypatch.setattr(module, name, guarded)
    with pytest.raises(AssertionError, match="opened the NB201 table"):
        TabularBenchmark(table)
    preset = study.PRESETS["smoke"].search
    for method in study.ESTIMATOR_METHODS:
        overrides = study.search_overrides(method, 0, preset, str(shared_cifar10), "cpu")
        run_dir = tmp_path / method
        assert search.main(["-c", str(study.CONFIG), "--run-dir", str(run_dir), "--set", *overrides]) == 0
        record = read_record(run_dir / "genotype.json")
        assert parse_arch(record["genotype"])
        evaluations = [stage["estimator_evaluations"] for stage in record["search"]["stages"]]
        assert all(n >= 1 for n in evaluations)  # what the study matches random_zc's N to
        if method in ("random_zc", "hybrid_zc"):
            assert evaluations == [preset.random_candidates]
        if method == "hybrid_zc":
            assert record["search"]["selection"]["picked"]["by"] == "probe"


def test_the_darts_cifar10_config_prunes_without_training_or_evaluating_the_supernet(
        shared_cifar10: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """experiments/proxy_darts_cifar10.yaml at a tiny size: three stages of estimator pruning end with a DARTS
    genotype of one op per edge, and no stage trains the supernet or runs its validation pass."""
    from nas.engine import search_loop

    def no_pass(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a training-free stage evaluated the untrained supernet")

    monkeypatch.setattr(search_loop.StageRunner, "evaluate", no_pass)
    run_dir = tmp_path / "run"
    config = str(Path(search.__file__).parent / "experiments" / "proxy_darts_cifar10.yaml")
    assert search.main(["-c", config, "--run-dir", str(run_dir), "--set", f"data.root={shared_cifar10}",
                        "data.limit=256", "data.batch_size=16", "model.C=4", "model.eval_C=4", "model.eval_layers=2",
                        "stages.layers=[3,3,3]", "estimator_pruning.samples=[8,6,4]", "run.draw=false"]) == 0
    record = read_record(run_dir / "genotype.json")
    stages = record["search"]["stages"]
    assert [len(s["kept_after"]["normal"][0]) for s in stages] == [5, 3, 1]
    assert len(record["genotype"]["normal"]) == 8 and all(s["val_acc"] is None for s in stages)
