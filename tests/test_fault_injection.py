"""A search killed with SIGKILL at a random moment and resumed ends exactly like an uninterrupted run."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT, TINY_RUN_SETTINGS, TINY_RUNS

from nas.core.records import read_record


def _search(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "search.py", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("controller", sorted(TINY_RUNS))
def test_sigkill_then_resume_matches_uninterrupted_run(controller, tmp_path, tiny_run):
    """REINFORCE also restores its baseline, Adam state, sample window and sampling generator. The uninterrupted
    reference is the session's tiny run of the controller (the same settings, run in-process)."""
    config, extra = TINY_RUNS[controller]

    def start(run_dir):
        return _search(["-c", str(ROOT / "experiments" / config), "--run-dir", str(run_dir), "--set",
                        *TINY_RUN_SETTINGS, *extra])

    expected = read_record(tiny_run(controller) / "genotype.json")
    duration = expected["search"]["wall_time_s"]

    seed = int(os.environ.get("FAULT_SEED", random.randrange(10**6)))
    rng = random.Random(seed)
    print(f"fault-injection seed {seed} (set FAULT_SEED={seed} to repeat this kill point)")
    fraction = rng.uniform(0.0, 0.8)  # of the time between the first checkpoint and the run's end
    for attempt in range(4):  # a run faster than the reference (less load) can end first: retry, killing earlier
        killed_dir = tmp_path / f"killed{attempt}"
        victim = start(killed_dir)
        victim_started = time.time()
        while not (killed_dir / "checkpoint.pt").exists() and victim.poll() is None:
            time.sleep(0.05)
        first_checkpoint = time.time() - victim_started
        time.sleep(fraction * max(duration - first_checkpoint, 0.0))
        if victim.poll() is None:
            break
        fraction /= 2
    assert victim.poll() is None, "every attempt ended before its kill; the kill point must fall inside the run"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    print(f"killed after {time.time() - victim_started:.1f}s of a {duration:.1f}s run "
          f"(first checkpoint at {first_checkpoint:.1f}s, attempt {attempt + 1})")

    resumed = _search(["--resume", str(killed_dir)])
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()
    got = read_record(killed_dir / "genotype.json")
    assert got["genotype"] == expected["genotype"]
    for a, b in zip(expected["search"]["stages"], got["search"]["stages"]):
        for cell in ("normal", "reduce"):
            assert torch.allclose(torch.tensor(a["probabilities"][cell]), torch.tensor(b["probabilities"][cell]),
                                  atol=1e-6)
        # everything else a stage records (kept ops, accuracies, REINFORCE's best recent sample) is equal too
        assert {k: v for k, v in a.items() if k != "probabilities"} == {k: v for k, v in b.items()
                                                                          if k != "probabilities"}
