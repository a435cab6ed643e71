"""Shared fixtures: repository paths, the offline shared data, a tiny search config, a disk that fills up."""
from __future__ import annotations

import errno
import sys
from pathlib import Path
from typing import Callable

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture
def disk_full_after_first_save(monkeypatch):
    """torch.save writes the first file, then every later call fails with ENOSPC (a disk that filled up)."""
    import torch

    real_save, calls = torch.save, []

    def save(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)

# A search small enough for a test: 3 stages on digits, every op of the DARTS set in stage 1.
TINY_SEARCH = [
    "model.C=4", "stages.layers=[3,3,3]", "stages.epochs=[1,1,2]", "stages.warmup_epochs=[0,0,1]",
    "data.batch_size=96", "run.log_every=2", "run.draw=false",
    "search.rescore=0",  # REINFORCE: rescore only the SBO check's top 10 (the minimum)
]


@pytest.fixture
def one_thread():
    """One torch intra-op thread, as the subprocesses and studies run: identical numerics, and no OpenMP spinning
    against other processes on a busy 2-core machine (measured 4-10x slower with two threads)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def load_script(name: str):
    """The module of the script experiments/NAME.py, loaded from its path (experiments/ is no package, and no test
    puts it on sys.path)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look a class's module up by name
    spec.loader.exec_module(module)
    return module


def shared_path(*parts: str) -> Path:
    """A path under ../shared/data, skipping the test with a clear reason when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared test data {path} is absent (it ships beside the repo as ../shared/data)")
    return path


CIFAR10_CACHE = Path("~/.cache/pdarts-nas/cifar10").expanduser()  # where nb201_quick.yaml reads the shared batches


@pytest.fixture(scope="session")
def shared_cifar10(tmp_path_factory) -> Path:
    """A data.root holding the shared CIFAR-10's batches: the documented cache when it is there, else built once."""
    import subprocess

    batches = shared_path("cifar10_jpeg", "cifar10_jpeg_q75.npz")
    if (CIFAR10_CACHE / "cifar-10-batches-py" / "batches.meta").is_file():
        return CIFAR10_CACHE
    root = tmp_path_factory.mktemp("cifar10_jpeg")
    subprocess.run([sys.executable, str(batches.parent / "make_batches.py"), str(batches),
                    str(root / "cifar-10-batches-py")], check=True, capture_output=True, timeout=600)
    return root


# The tiny searches several test modules inspect, run once per session: search records, monitor tags, and the
# uninterrupted reference of the fault-injection test (hence the frequent checkpoints).
TINY_RUN_SETTINGS = [*TINY_SEARCH, "run.draw=true", "run.checkpoint_every=3"]
TINY_RUNS = {
    "gradient": ("quick_digits.yaml", []),
    "reinforce": ("quick_digits_reinforce.yaml", ["reinforce.samples_per_update=2", "reinforce.last_n=8"]),
    "gdas": ("quick_digits_gdas.yaml", []),
}


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Callable[[str], Path]:
    """tiny_run(mode) -> the run directory of a finished tiny 3-stage search (with drawings) of that controller."""
    import search

    done: dict[str, Path] = {}

    def get(mode: str) -> Path:
        if mode not in done:
            config, extra = TINY_RUNS[mode]
            run_dir = tmp_path_factory.mktemp(f"tiny-{mode}")
            argv = ["-c", str(ROOT / "experiments" / config), "--run-dir", str(run_dir), "--set", *TINY_RUN_SETTINGS,
                    *extra]
            assert search.main(argv) == 0
            done[mode] = run_dir
        return done[mode]

    return get


@pytest.fixture
def kill_and_resume(monkeypatch) -> Callable[[Callable[[Path], int], Path, Callable[[dict], bool]], int]:
    """kill_and_resume(run, run_dir, dies): run(run_dir) is killed (KeyboardInterrupt) right after the first checkpoint
    whose state makes dies(state) true, before it finished; returns the exit code of `search.py --resume run_dir`."""
    import search
    from nas.engine import search_loop

    def kill_then_resume(run: Callable[[Path], int], run_dir: Path, dies: Callable[[dict], bool]) -> int:
        real_save = search_loop.save_checkpoint

        def save_then_maybe_die(where: Path, state: dict, kind: str) -> None:
            real_save(where, state, kind)
            if dies(state):
                raise KeyboardInterrupt

        with monkeypatch.context() as patch:
            patch.setattr(search_loop, "save_checkpoint", save_then_maybe_die)
            with pytest.raises(KeyboardInterrupt):
                run(run_dir)
        assert not (run_dir / "genotype.json").exists(), "the run finished before it was killed"
        return search.main(["--resume", str(run_dir)])

    return kill_then_resume


def nth_mid_epoch_checkpoint(n: int) -> Callable[[dict], bool]:
    """A `dies` for kill_and_resume: true at the n-th checkpoint saved inside an epoch of a stage."""
    saves: list[int] = []

    def dies(state: dict) -> bool:
        if state["stage"] is not None and state["progress"]["step"] > 0:
            saves.append(1)
            return len(saves) == n
        return False

    return dies


def same_seed_outputs(net: Callable, x, *forward_kwargs: dict) -> list:
    """net(x, **kwargs) for each kwargs, without gradients, each after torch.manual_seed(1): a partial-channel
    supernet then draws the same channels in every forward, so the outputs differ only by the kwargs."""
    import torch

    outputs = []
    with torch.no_grad():
        for kwargs in forward_kwargs:
            torch.manual_seed(1)
            outputs.append(net(x, **kwargs))
    return outputs
