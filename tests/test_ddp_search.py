"""The search under torchrun on CPU (2 processes, gloo): one architecture on every rank, a different sampled path
per rank, the one-process result in mixture mode, an exact resume after one rank is killed, the refusal of a resume
on another number of processes, and a NaN on one rank stopping every rank with the search's own error.

Each run goes through tests/ddp_search_worker.py, which records every rank's logits and paths (DDP_TRACE), kills
a rank (DDP_KILL) or poisons one rank's batch (DDP_NAN).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT
from torch import nn

import search
from nas.core import distributed
from nas.core.checkpoint import CHECKPOINT, load_checkpoint, save_checkpoint
from nas.core.records import read_record
from search_spaces.darts.space import DartsSpace

WORKER = str(ROOT / "tests" / "ddp_search_worker.py")
EXPERIMENTS = ROOT / "experiments"
# 192 images: 96 train the weights and 96 score architectures, in 2 global batches of 48 (24 per rank).
TINY = ["model.C=4", "data.limit=192", "data.batch_size=48", "run.draw=false"]
ONE_STAGE = ["stages.layers=[3]", "stages.epochs=[2]", "stages.warmup_epochs=[0]", "stages.keep=[1]",
             "stages.skip_dropout=[0.0]", "data.augment=false"]
# Three REINFORCE stages (8 weight steps) with crops and skip dropout (per-rank randomness), a checkpoint every 3
# weight steps.
REINFORCE = ["-c", str(EXPERIMENTS / "quick_digits_reinforce.yaml"), "--set", *TINY, "stages.layers=[3,3,3]",
             "stages.epochs=[2,1,1]", "stages.warmup_epochs=[0,0,0]", "data.augment=true",
             "reinforce.samples_per_update=2", "run.checkpoint_every=3"]


def torchrun(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", WORKER, *args]
    return subprocess.run(cmd, cwd=cwd, env={**os.environ, "OMP_NUM_THREADS": "1", **env}, capture_output=True,
                          text=True, timeout=300)


def traced_run(tmp: Path, args: list[str]) -> tuple[Path, list[dict]]:
    """A finished 2-process search and each rank's trace."""
    run_dir, trace = tmp / "run", tmp / "trace"
    trace.mkdir()
    result = torchrun([*args, "--run-dir", str(run_dir)], tmp, DDP_TRACE=str(trace))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert result.stdout.count("genotype: ") == 1  # rank 0 alone reports
    return run_dir, [torch.load(trace / f"rank{r}.pt", weights_only=True) for r in (0, 1)]


def assert_same_logits(traces: list[dict], steps: int) -> None:
    rank0, rank1 = (t["logits"] for t in traces)
    assert len(rank0) == len(rank1) == steps
    assert all(torch.equal(a, b) for a, b in zip(rank0, rank1))  # bit for bit, after every step
    assert not torch.equal(rank0[0], rank0[-1])  # and they did move


@pytest.fixture(scope="module")
def reinforce_run(tmp_path_factory) -> tuple[Path, list[dict]]:
    return traced_run(tmp_path_factory.mktemp("reinforce"), REINFORCE)


class PerHalfBatchNorm(nn.Module):
    """One process imitating two ranks' BatchNorm: the supernet runs on each half of the batch alone."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        return torch.cat([self.net(half, **kwargs) for half in x.tensor_split(2)])

    def set_skip_dropout(self, p: float) -> None:
        self.net.set_skip_dropout(p)


def test_two_process_mixture_search_equals_one_process_with_the_global_batch(tmp_path, monkeypatch):
    # Without max pooling: on the digits' flat background its gradient goes to one of several tied maxima, and
    # float noise (1e-9 in the logits after the first all-reduce) picks which; that moves the weights by 1e-4.
    ops = "[none,avg_pool_3x3,skip_connect,sep_conv_3x3,sep_conv_5x5,dil_conv_3x3,dil_conv_5x5]"
    args = ["-c", str(EXPERIMENTS / "quick_digits.yaml"), "--set", *TINY, *ONE_STAGE, f"model.normal_ops={ops}",
            f"model.reduce_ops={ops}"]
    two_dir, traces = traced_run(tmp_path, args)
    assert_same_logits(traces, steps=4)

    build = DartsSpace.build_supernet
    monkeypatch.setattr(DartsSpace, "build_supernet", lambda self, *a: PerHalfBatchNorm(build(self, *a)))
    one_dir = tmp_path / "one"
    assert search.main([*args, "--run-dir", str(one_dir)]) == 0
    two, one = read_record(two_dir / "genotype.json"), read_record(one_dir / "genotype.json")
    assert two["genotype"] == one["genotype"]
    for cell, probs in two["search"]["stages"][0]["probabilities"].items():
        assert torch.allclose(torch.tensor(probs), torch.tensor(one["search"]["stages"][0]["probabilities"][cell]),
                              atol=1e-6, rtol=0)
    assert two["search"]["stages"][0]["train_acc"] == pytest.approx(one["search"]["stages"][0]["train_acc"])


def test_reinforce_ranks_share_the_logits_and_train_different_paths(reinforce_run):
    _, traces = reinforce_run
    assert_same_logits(traces, steps=8)  # 4 + 2 + 2 policy updates over the three stages
    paths = [t["paths"] for t in traces]
    assert len(paths[0]) == len(paths[1]) == 8
    differ = [any(not torch.equal(a[g], b[g]) for g in a) for a, b in zip(*paths)]
    assert all(differ)  # a different sampled path on each rank at every step (from the same generator)


@pytest.mark.parametrize("victim", [1])
def test_a_killed_rank_resumes_to_the_same_genotype(reinforce_run, tmp_path, victim):
    full_dir, _ = reinforce_run
    run_dir = tmp_path / "run"
    killed = torchrun([*REINFORCE, "--run-dir", str(run_dir)], tmp_path, DDP_KILL=f"{victim}:3")
    assert killed.returncode != 0 and not (run_dir / "genotype.json").exists()
    assert load_checkpoint(run_dir, "search")["progress"]["global_step"] == 3  # the every-3-steps save, mid-epoch
    resumed = torchrun(["--resume", str(run_dir)], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    full, again = read_record(full_dir / "genotype.json"), read_record(run_dir / "genotype.json")
    assert again["genotype"] == full["genotype"]
    assert again["search"]["stages"] == full["search"]["stages"]  # every probability and accuracy on the way


def test_a_resume_on_another_number_of_processes_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    save_checkpoint(run_dir, {"world_size": 1}, "search")  # prepare reads the world size before anything else
    result = torchrun(["--resume", str(run_dir)], tmp_path)
    assert result.returncode != 0
    assert f"error: {run_dir} was searched by 1 process(es), this is 2; resume it with torchrun " \
           "--nproc_per_node=1" in result.stderr
    assert sorted(p.name for p in run_dir.iterdir()) == [CHECKPOINT]


def test_a_nan_on_one_rank_stops_every_rank_with_the_search_error(tmp_path):
    run_dir = tmp_path / "run"
    args = ["-c", str(EXPERIMENTS / "quick_digits.yaml"), "--set", *TINY, *ONE_STAGE, "run.checkpoint_every=1"]
    result = torchrun([*args, "--run-dir", str(run_dir)], tmp_path, DDP_NAN="1:1")
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: loss became non-finite on rank 1 of 2 at stage 1, epoch 1, step 1; the last good "
                      f"checkpoint and the finished stages are kept in {run_dir}; rerun this stage from them with a "
                      f"lower lr: python search.py -c {run_dir / 'config.yaml'} --run-dir {run_dir} --stage 1 "
                      f"--set optim.lr=0.0125"], result.stderr[-3000:]
    # Every rank stops with the error, and waits (a barrier) until rank 0 has reported it. torchrun may still send
    # SIGTERM to a rank that is tearing its interpreter down when another already exited; any other signal is a crash.
    codes = [line.split(":")[1].split()[0] for line in result.stderr.splitlines()
             if line.strip().startswith("exitcode")]
    assert "1" in codes and set(codes) <= {"1", "-15"}, result.stderr[-3000:]
    assert load_checkpoint(run_dir, "search")["progress"]["global_step"] == 1


def test_all_mean_keeps_float64(tmp_path, monkeypatch):
    """A one-process gloo group posing as two ranks: the mean is the sum over that one rank, halved."""
    import torch.distributed as tdist

    tdist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        monkeypatch.setattr(distributed, "world", lambda: distributed.DistInfo(0, 2, 0))
        fine = torch.tensor([1.0 + 2.0 ** -40], dtype=torch.float64)
        mean, single = distributed.all_mean([fine, torch.ones(2)])
    finally:
        tdist.destroy_process_group()
    assert mean.dtype == torch.float64 and mean.item() == (1.0 + 2.0 ** -40) / 2
    assert single.dtype == torch.float32 and torch.equal(single, torch.full((2,), 0.5))
