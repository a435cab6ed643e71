"""The supernet benchmark runs end to end on a tiny setting and writes every key (no timing assertions)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from conftest import ROOT, load_script

SCRIPT = ROOT / "experiments" / "bench_supernet.py"
CASES = {"mixture", "partial", "path", "child", "baseline", "baseline_cl", "nb201_path", "nb201_child", "nb201_mixture",
         "nb201_partial", "controller"}
RATIOS = {"path_over_child", "nb201_path_over_child", "mixture_over_path", "baseline_over_mixture",
          "baseline_cl_over_mixture", "controller_fraction", "mixture_over_partial", "baseline_over_partial",
          "partial_memory_over_mixture", "partial_memory_over_baseline", "nb201_mixture_over_partial"}
TINY = ["--C", "4", "--layers", "3", "--batch", "2", "--size", "8", "--steps", "1", "--warmup", "1", "--threads", "1",
        "--partial-k", "2", "--nb201-cells", "1"]


def load_bench() -> ModuleType:
    return load_script("bench_supernet")


def test_bench_writes_every_key(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    command = [sys.executable, str(SCRIPT), *TINY, "--json", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=900, check=False)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert set(report["cases"]) == CASES
    for case in report["cases"].values():
        assert {"median_s", "median_cpu_s", "times_s", "peak_memory_mib"} <= set(case)
        assert case["median_s"] > 0 and case["peak_memory_mib"] >= 0
    assert set(report["ratios"]) == RATIOS and all(value > 0 for key, value in report["ratios"].items()
                                                   if "memory" not in key)  # a tiny case's memory can be 0
    assert set(report["met"]) == set(report["targets"]) & RATIOS  # the reference targets need their folders
    assert report["settings"]["C"] == 4 and len(report["path"]["normal"]) == 14
    assert report["path"]["nb201"].count("~") == 6  # the NB201 cell's architecture string
    assert "path_over_child" in result.stdout  # the printed table


def test_bench_runs_only_the_chosen_cases_and_their_ratios(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    command = [sys.executable, str(SCRIPT), *TINY, "--cases", "nb201_path,nb201_child", "--json", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert set(report["cases"]) == {"nb201_path", "nb201_child"}
    assert set(report["ratios"]) == set(report["met"]) == {"nb201_path_over_child"}


@pytest.mark.parametrize("argv,message", [(["--batch", "0"], "--batch must be at least 1"),
                                          (["--cases", "path,bogus"], "--cases takes a comma-separated list"),
                                          (["--cases", "ref_darts"], "case ref_darts needs --reference-darts DIR")])
def test_bench_rejects_bad_arguments(argv: list[str], message: str) -> None:
    result = subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True, text=True,
                            cwd=ROOT, timeout=120, check=False)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("path,expected", [
    ([0] * 14, [[], [], [], []]),
    ([3] * 14, [[("skip_connect", 0), ("skip_connect", 1)], [("skip_connect", 0), ("skip_connect", 1),
                                                           ("skip_connect", 2)]]),
])
def test_child_specs_keep_only_non_none_edges(path: list[int], expected: list) -> None:
    specs = load_bench().child_specs({"normal": path, "reduce": path})
    assert specs["normal"].nodes[:len(expected)] == expected
    assert specs["normal"].concat == [2, 3, 4, 5]


def fake_reference(folder: Path, width: int) -> Path:
    """A checkout shaped like the references: model_search.py importing its own operations and genotypes, and
    alphas built with .cuda() as theirs are."""
    folder.mkdir()
    (folder / "operations.py").write_text(f"WIDTH = {width}\n")
    (folder / "genotypes.py").write_text("PRIMITIVES = ['conv']\n")
    (folder / "model_search.py").write_text(
        "import torch\nfrom operations import WIDTH\nfrom genotypes import PRIMITIVES\n"
        "class Network(torch.nn.Module):\n"
        "    def __init__(self, C, num_classes, layers, criterion):\n"
        "        super().__init__()\n"
        "        self.body = torch.nn.Linear(3 * 8 * 8, WIDTH)\n"
        "        self.head = torch.nn.Linear(WIDTH, num_classes)\n"
        "        self.alphas = torch.zeros(WIDTH, len(PRIMITIVES)).cuda().requires_grad_()\n"
        "    def arch_parameters(self):\n"
        "        return [self.alphas]\n"
        "    def forward(self, x):\n"
        "        return self.head(self.body(x.flatten(1)) * self.alphas.sum().add(1))\n")
    return folder


def test_two_references_with_the_same_module_names_load_side_by_side(tmp_path: Path) -> None:
    bench = load_bench()
    first, second = fake_reference(tmp_path / "darts", 5), fake_reference(tmp_path / "pcdarts", 7)
    widths = [bench.load_reference(folder).WIDTH for folder in (first, second)]
    assert widths == [5, 7] and "model_search" not in sys.modules and "operations" not in sys.modules
    args = bench.parse_args(["--C", "4", "--partial-k", "2", "--reference-darts", str(first)])
    assert args.cases[-2:] == ["ref_darts", "controller"]  # a given reference joins the default cases


def test_a_reference_is_timed_beside_the_partial_mixture(tmp_path: Path) -> None:
    out, reference = tmp_path / "bench.json", fake_reference(tmp_path / "darts", 5)
    command = [sys.executable, str(SCRIPT), *TINY, "--cases", "partial,ref_darts", "--reference-darts",
               str(reference), "--json", str(out)]  # its .cuda() calls run on a machine without CUDA
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert set(report["cases"]) == {"partial", "ref_darts"}
    assert {"ref_darts_over_partial", "partial_memory_over_ref_darts"} <= set(report["met"])


def test_a_reference_folder_without_model_search_is_a_one_line_error(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(SCRIPT), "--reference-darts", str(tmp_path)], capture_output=True,
                            text=True, cwd=ROOT, timeout=120, check=False)
    assert result.returncode == 2 and "has no model_search.py" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
