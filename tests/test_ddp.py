"""A 2-process gloo DDP eval run on CPU through torchrun: it finishes and rank 0 records the reduced metrics."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from nas.core.checkpoint import load_checkpoint
from nas.core.data import load_dataset
from nas.core.metrics import accuracy
from search_spaces.darts.genotype import load_genotype
from search_spaces.darts.networks import NetworkEval

ROOT = Path(__file__).resolve().parents[1]


def test_two_process_gloo_run_reduces_metrics_over_ranks(tmp_path):
    run_dir = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "train_eval.py"), "--genotype", "PDARTS", "--dataset", "digits", "--epochs", "1",
           "--run-dir", str(run_dir), "--set", "model.C=4", "model.layers=3", "train.batch_size=64"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("final: test top-1") == 1  # only rank 0 reports

    metrics = json.loads((run_dir / "genotype.json").read_text())["metrics"]["eval"]
    test = load_dataset("digits", train=False)
    assert metrics["world_size"] == 2
    assert metrics["test_samples"] == len(test.dataset)  # both shards, each image once

    state = load_checkpoint(run_dir, "eval")
    assert len(state["rng"]) == 2  # every rank's RNG states, for an exact resume
    net = NetworkEval(load_genotype("PDARTS"), 4, 10, 3, 1, auxiliary=True)
    net.load_state_dict(state["model"])
    net.eval()
    x, y = test.dataset.tensors
    with torch.no_grad():
        logits, _ = net(x)
    top1, top5 = accuracy(logits, y, (1, 5))
    assert abs(metrics["top1"] - top1) < 1e-3 and abs(metrics["top5"] - top5) < 1e-3  # the reduced = the whole
