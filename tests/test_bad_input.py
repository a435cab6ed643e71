"""The bad-input table: each case is one line on stderr, exit code 2, and nothing saved before is lost."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import ROOT, TINY_SEARCH

import search
import train_eval
from nas.core import checkpoint
from nas.core.data import ImageData
from search_spaces.darts.genotype import load_genotype

QUICK = str(ROOT / "experiments" / "quick_digits.yaml")
GOOD = str(load_genotype("DARTS_V2"))  # the DARTS string form, edited below into bad variants


def _one_line_exit_2(entry, argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        entry(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("genotype, message", [
    (GOOD[:60], "not valid syntax"),
    ("__import__('os').system('x')", "attribute access is not allowed"),
    (GOOD.replace("'dil_conv_3x3', 2", "'sep_conv_9x9', 2"), "sep_conv_9x9"),
    (GOOD.replace("('dil_conv_3x3', 2)", "('dil_conv_3x3', 7)"), "out of range"),
    ("NO_SUCH_GENOTYPE", "DARTS_V2"),
])
def test_bad_genotype(genotype, message, capsys, tmp_path):
    err = _one_line_exit_2(train_eval.main, ["--genotype", genotype, "--dataset", "digits", "--run-dir",
                                             str(tmp_path / "run")], capsys)
    assert message in err


def test_malformed_record_json(capsys, tmp_path):
    record = tmp_path / "broken.json"
    record.write_text('{"genotype": {"normal": [["sep_conv_3x3", 0]')
    err = _one_line_exit_2(train_eval.main, ["--genotype", str(record), "--dataset", "digits"], capsys)
    assert "broken.json" in err


@pytest.mark.parametrize("overrides, message", [
    (["stages.epochs=two"], "stages.epochs must be a list"),
    (["optim.lrate=0.1"], "unknown key 'optim.lrate'"),
    (["data.dataset=mnist", "data.root=/nonexistent/mnist"], "/nonexistent/mnist"),
])
def test_bad_search_config(overrides, message, capsys, tmp_path):
    err = _one_line_exit_2(search.main, ["-c", QUICK, "--run-dir", str(tmp_path / "r"), "--set", *overrides], capsys)
    assert message in err
    assert not (tmp_path / "r").exists()  # refused before the run directory is made


@pytest.mark.parametrize("marker", ["checkpoint.pt", "genotype.json"])
def test_a_search_into_a_finished_run_is_refused(marker, capsys, tmp_path):
    (tmp_path / marker).write_text("the earlier run")
    err = _one_line_exit_2(search.main, ["-c", QUICK, "--run-dir", str(tmp_path)], capsys)
    assert f"--resume {tmp_path}" in err and "--stage" in err
    assert [p.name for p in tmp_path.iterdir()] == [marker]  # no config.yaml, log or events written
    assert (tmp_path / marker).read_text() == "the earlier run"


@pytest.mark.parametrize("extra, message", [
    (["--seed", "3"], "--seed"),
    (["--run-dir", "{other}"], "--run-dir"),
])
def test_resume_refuses_a_seed_or_another_run_dir(extra, message, capsys, tmp_path):
    argv = ["--resume", str(tmp_path)] + [a.replace("{other}", str(tmp_path / "other")) for a in extra]
    assert message in _one_line_exit_2(search.main, argv, capsys)
    same_dir = ["--resume", str(tmp_path), "--run-dir", str(tmp_path / ".")]
    assert "no checkpoint.pt" in _one_line_exit_2(search.main, same_dir, capsys)  # its own directory is fine


def test_image_too_small_for_the_reductions(monkeypatch, capsys, tmp_path):
    tiny = ImageData(torch.utils.data.TensorDataset(torch.zeros(40, 1, 3, 3), torch.zeros(40, dtype=torch.long)),
                     1, 3, 10)
    monkeypatch.setattr("nas.core.data.load_dataset", lambda *a, **k: tiny)
    err = _one_line_exit_2(search.main, ["-c", QUICK, "--run-dir", str(tmp_path / "r")], capsys)
    assert "too small for the two reduction cells" in err
    assert not (tmp_path / "r").exists()


def test_resume_of_an_empty_directory(capsys, tmp_path):
    assert "no checkpoint.pt" in _one_line_exit_2(search.main, ["--resume", str(tmp_path)], capsys)
    assert "checkpoint" in _one_line_exit_2(train_eval.main, ["--resume", str(tmp_path)], capsys)


def test_full_disk_while_saving_keeps_the_last_checkpoint(disk_full_after_first_save, capsys, tmp_path):
    run_dir = tmp_path / "run"
    err = _one_line_exit_2(search.main, ["-c", QUICK, "--run-dir", str(run_dir), "--set", *TINY_SEARCH,
                                         "run.checkpoint_every=1"], capsys)
    assert "No space left on device" in err and "--resume" in err
    state = checkpoint.load_checkpoint(run_dir, "search")  # the first checkpoint is intact
    assert state["progress"]["global_step"] == 1
    assert not list(run_dir.glob(".checkpoint-*"))  # no half-written temp file left behind


def test_no_traceback_from_the_command_line(tmp_path):
    proc = subprocess.run([sys.executable, "train_eval.py", "--genotype", "Genotype(normal=os.system('x'))"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
