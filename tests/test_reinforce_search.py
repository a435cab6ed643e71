"""REINFORCE searches on digits end to end: both modes, the per-stage record, and the size penalty acting."""
from __future__ import annotations

import pytest
from conftest import ROOT, TINY_SEARCH

import search
from nas.core.config import load_config
from nas.core.records import read_record
from nas.engine.search_config import SearchConfig
from search_spaces.darts.genotype import genotype_from_dict, validate_genotype

QUICK_RL = str(ROOT / "experiments" / "quick_digits_reinforce.yaml")
TINY_RL = [*TINY_SEARCH, "reinforce.samples_per_update=2"]


@pytest.mark.parametrize("mode", ["interleaved", "separate"])
def test_reinforce_search_in_both_modes(mode, tmp_path, tiny_run):
    if mode == "interleaved":  # the config's mode: the session's shared tiny REINFORCE run
        run_dir = tiny_run("reinforce")
    else:
        run_dir = tmp_path / mode
        argv = ["-c", QUICK_RL, "--run-dir", str(run_dir), "--set", *TINY_RL, f"reinforce.mode={mode}"]
        assert search.main(argv) == 0
    record = read_record(run_dir / "genotype.json")
    validate_genotype(genotype_from_dict(record["genotype"]))
    stages = record["search"]["stages"]
    assert record["search"]["controller"] == "reinforce" and len(stages) == 3
    for stage, searched in zip(stages, (8, 5, 3)):
        assert {len(edge) for edge in stage["kept_ops"]["normal"]} == {searched}
        assert len(stage["probabilities"]["reduce"]) == 14
        assert 0.0 <= stage["argmax_acc"] <= 100.0 and 0.0 <= stage["argmin_acc"] <= 100.0
    best = stages[-1]["best_recent"]
    assert len(best["ops"]["normal"]) == 14 and best["reward"] > 0


def test_parameter_penalty_shrinks_the_architecture(tmp_path):
    """Same seed, same data: alpha = -1 must end with fewer eval-scale parameters than alpha = 0."""
    settings = [*TINY_SEARCH, "stages.epochs=[2,2,2]", "stages.warmup_epochs=[0,0,0]", "data.batch_size=32",
                "reinforce.lr=0.2", "reinforce.samples_per_update=4", "reinforce.behaviour=multinomial",
                "reward.p_base=[3.0,3.0,3.0]"]
    params = {}
    for alpha in (0.0, -1.0):
        run_dir = tmp_path / f"alpha{alpha}"
        assert search.main(["-c", QUICK_RL, "--run-dir", str(run_dir), "--set", *settings,
                            f"reward.alpha=[{alpha},{alpha},{alpha}]"]) == 0
        params[alpha] = read_record(run_dir / "genotype.json")["metrics"]["params_M"]
    assert params[-1.0] < params[0.0], params


def test_separate_mode_resumed_inside_a_policy_epoch_matches(tmp_path, kill_and_resume):
    """Killed inside the first of two policy epochs (frozen supernet), the resumed stage ends exactly alike."""
    settings = [*TINY_RL, "reinforce.mode=separate", "stages.epochs=[3,1,1]", "stages.warmup_epochs=[1,0,0]",
                "run.checkpoint_every=3", "run.draw=false"]

    def stage_one(run_dir):
        return search.main(["-c", QUICK_RL, "--run-dir", str(run_dir), "--stage", "1", "--set", *settings])

    def inside_the_first_policy_epoch(state):
        return state["progress"]["epoch"] == 3 and state["progress"]["step"] > 0

    assert stage_one(tmp_path / "reference") == 0
    assert kill_and_resume(stage_one, tmp_path / "killed", inside_the_first_policy_epoch) == 0
    expected, got = (read_record(tmp_path / run / "stages" / "stage1.json") for run in ("reference", "killed"))
    assert got["stages"] == expected["stages"] and got["global_step"] == expected["global_step"]


@pytest.mark.parametrize("overrides, message", [
    (["model.normal_ops=[none,skip_connect]"], "no normal cell fits model.max_skip=2"),
    (["reward.mode=hard"], "reward.alpha [-0.1, -0.1, -0.1] is the soft mode's exponent and reward.mode=hard "
                           "ignores it"),
    (["reward.beta=[-1.0,-1.0,-1.0]"], "reward.beta [-1.0, -1.0, -1.0] is the hard mode's exponent and "
                                       "reward.mode=soft ignores it"),
    (["reinforce.importance=edge"], "reinforce.importance=edge (one ratio per edge) belongs to reinforce.sample=edges"),
])
def test_infeasible_or_ignored_settings_are_refused(overrides, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        search.main(["-c", QUICK_RL, "--run-dir", str(tmp_path / "run"), "--set", *overrides])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err
    assert not (tmp_path / "run" / "genotype.json").exists()


def test_hard_mode_without_alpha_and_edge_importance_with_edges_are_accepted():
    cfg = load_config(SearchConfig, QUICK_RL, ["reward.mode=hard", "reward.alpha=[0,0,0]", "reward.beta=[-2,-2,-2]",
                                               "reinforce.sample=edges", "reinforce.importance=edge"])
    assert cfg.reinforce.importance == "decision" and cfg.reward.beta == [-2, -2, -2]
