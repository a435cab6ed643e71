"""The eval trainer's CPU smoke setting (docs/training.md) learns: a few epochs on digits, loss far below chance."""
from __future__ import annotations

import math

import pytest
from conftest import ROOT

import train_eval
from nas.core.records import read_record

SMOKE = str(ROOT / "experiments" / "eval_digits_smoke.yaml")


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


def test_the_smoke_setting_learns_digits_in_a_few_epochs(tmp_path):
    run_dir = tmp_path / "run"
    train_eval.main(["--genotype", "PDARTS", "-c", SMOKE, "--epochs", "3", "--run-dir", str(run_dir),
                     "--set", "model.C=4", "model.layers=3"])
    metrics = read_record(run_dir / "genotype.json")["metrics"]["eval"]
    assert metrics["epochs"] == 3 and metrics["dataset"] == "digits"
    assert metrics["train_loss"] < 0.5 < math.log(10), metrics  # chance is ln(10) = 2.30
    assert metrics["top1"] > 80.0, metrics  # chance is 10%
