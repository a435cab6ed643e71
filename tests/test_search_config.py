"""Bad configs fail before any work with a one-line error and exit code 2."""
from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import ROOT

import search
from nas.core.config import load_config
from nas.core.errors import UserError
from nas.engine.search_config import SearchConfig

QUICK = str(ROOT / "experiments" / "quick_digits.yaml")
PAPER = str(ROOT / "experiments" / "pdarts_cifar10.yaml")


@pytest.mark.parametrize("overrides, message", [
    (["model.normal_ops=[none,sep_conv_9x9]"], "unknown op 'sep_conv_9x9'"),
    (["stages.epochs=[2,2]"], "stages.epochs has 2 entries but stages.layers has 3"),
    (["stages.keep=[9,3,1]"], "stage 1 searches 8 ops per edge, so it must keep between 1 and 7"),
    (["stages.keep=[5,5,1]"], "stage 2 searches 5 ops per edge"),
    (["stages.epochs=[0,2,2]"], "stages.epochs must be positive"),
    (["stages.warmup_epochs=[5,1,1]"], "stages.warmup_epochs must be between 0"),
    (["model.C=abc"], "model.C must be int, got 'abc'"),
    (["model.C=7"], "model.C must be a positive even number"),
    (["model.colour=3"], "unknown key 'model.colour'"),
    (["optimiser.lr=1"], "unknown key 'optimiser'"),
    (["controller=evolution"], "unknown controller 'evolution'; known controllers: gradient, reinforce"),
    (["space=mobilenet"], "unknown space 'mobilenet'; known spaces: darts"),
    (["reinforce.lr=0.1"], "section 'reinforce' belongs to the controller 'reinforce', but this search uses "
                           "controller 'gradient'"),
    (["modle.C=4"], "unknown key 'modle'; valid keys: controller, data, gradient, model, optim, run, search, space, "
                    "stages"),
    (["data.dataset=svhn"], "unknown dataset 'svhn'"),
    (["data.train_portion=1.5"], "data.train_portion must be in (0, 1)"),
    (["gradient.order=3"], "gradient.order must be 1 or 2"),
    (["gradient.betas=[0.5,1.0]"], "gradient.betas must be two values in [0, 1)"),
    (["gradient.weight_decay=-0.001"], "gradient.weight_decay must be >= 0"),
    (["stages.skip_dropout=[0.0,0.4,1.5]"], "skip_dropout rates must be in [0, 1)"),
    (["run.seed"], "write it as section.key=value"),
])
def test_bad_config_is_one_line_error(overrides, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        search.main(["-c", QUICK, "--set", *overrides])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert message in err


@pytest.mark.parametrize("override", ["gradient.betas=[-0.1,0.999]", "gradient.betas=[0.5,1.0]",
                                      "gradient.weight_decay=-0.001", "gradient.weight_decay=.nan"])
def test_adams_settings_are_checked_with_the_config(override):
    with pytest.raises(UserError, match=r"gradient\.(betas|weight_decay) must"):
        load_config(SearchConfig, QUICK, [override])


def test_old_op_spelling_is_accepted_and_normalised():
    cfg = load_config(SearchConfig, QUICK, ["model.normal_ops=['conv 3x3', skip_connect, none, max_pool_3x3]",
                                            "model.reduce_ops=[max_pool_3x3, avg_pool_3x3, skip_connect, none]",
                                            "stages.keep=[3,2,1]"])
    assert cfg.model.normal_ops[0] == "conv_3x3"


def test_overrides_are_typed():
    cfg = load_config(SearchConfig, PAPER, ["data.batch_size=64", "stages.skip_dropout=[0,0.4,0.7]",
                                            "gradient.betas=[0.9,0.99]"])
    assert cfg.data.batch_size == 64 and cfg.stages.skip_dropout == [0.0, 0.4, 0.7]
    assert cfg.gradient.betas == (0.9, 0.99)
    with pytest.raises(UserError, match="gradient.betas must have 2 entries"):
        load_config(SearchConfig, PAPER, ["gradient.betas=[0.9]"])


def test_paper_config_is_the_papers_schedule():
    cfg = load_config(SearchConfig, PAPER)
    assert cfg.stages.layers == [5, 11, 17] and cfg.stages.keep == [5, 3, 1]
    assert cfg.stages.epochs == [25, 25, 25] and cfg.stages.warmup_epochs == [10, 10, 10]
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay, cfg.optim.grad_clip) == (0.025, 0.9, 3e-4, 5.0)
    assert (cfg.gradient.lr, cfg.gradient.betas, cfg.gradient.weight_decay) == (6e-4, (0.5, 0.999), 1e-3)
    assert len(cfg.model.normal_ops) == 8


def test_missing_dataset_path_exits_2_without_traceback_or_run_directory(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "search.py"), "-c", PAPER, "--set", "data.root=/nonexistent"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "/nonexistent" in lines[0] and "data.download=true" in lines[0]
    assert list(tmp_path.iterdir()) == []  # no runs/<config>-<time>/ with config.yaml and search.log


@pytest.mark.parametrize("argv, message", [
    (["--resume", "{empty}"], "no checkpoint.pt in it"),
    (["--resume", "/nonexistent/run"], "no such directory"),
    ([], "give a config with -c"),
    (["-c", "/nonexistent.yaml"], "config file /nonexistent.yaml not found"),
    (["-c", QUICK, "--stage", "4"], "--stage must be between 1 and 3"),
])
def test_bad_command_line(argv, message, tmp_path, capsys):
    argv = [a.replace("{empty}", str(tmp_path)) for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        search.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_foreign_checkpoint_is_refused(tmp_path, capsys):
    import torch

    torch.save({"weights": torch.ones(2)}, tmp_path / "checkpoint.pt")
    with pytest.raises(SystemExit):
        search.main(["--resume", str(tmp_path)])
    assert "not a search checkpoint of this project" in capsys.readouterr().err


def test_repeated_set_flags_all_apply():
    args = search.parse_args(["-c", QUICK, "--set", "model.C=4", "--set", "data.batch_size=8", "optim.lr=0.1"])
    cfg, _ = search.prepare(args, world_size=1)
    assert (cfg.model.C, cfg.data.batch_size, cfg.optim.lr) == (4, 8, 0.1)
