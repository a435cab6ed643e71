"""NAS-Bench-201: architecture strings, the space (supernet, costs, records), tabular benchmark and black-box search."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT, load_script

from controllers.base import StageContext
from controllers.reinforce import ReinforceConfig, ReinforceController
from controllers.reward import RewardConfig
from controllers.sampling import BEHAVIOURS
from nas.benchmarks.nb201_table import METHODS, REINFORCE_BEHAVIOURS, TabularBenchmark, run_method
from nas.core.errors import UserError
from nas.core.metrics import flops_millions
from search_spaces.nb201 import (
    NB201_OPS,
    NB201ModelConfig,
    NB201Space,
    arch_code,
    arch_to_path,
    build_network,
    code_to_arch,
    count_params,
    eval_flops_millions,
    ops_to_arch,
    parse_arch,
    path_to_arch,
)
from search_spaces.registry import space_class

TABLE = ROOT / "../shared/data/nb201/nb201_cifar10.csv"
needs_table = pytest.mark.skipif(not TABLE.is_file(), reason=f"NAS-Bench-201 table {TABLE} is not present")
EXAMPLE = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"
OPTIMUM = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_1x1~2|"


@pytest.fixture(scope="module")
def bench() -> TabularBenchmark:
    return TabularBenchmark(TABLE)


def test_parse_and_format_example() -> None:
    ops = parse_arch(EXAMPLE)
    assert ops == ("nor_conv_3x3", "nor_conv_3x3", "avg_pool_3x3", "skip_connect", "nor_conv_3x3", "skip_connect")
    assert ops_to_arch(ops) == EXAMPLE
    assert code_to_arch(arch_code(EXAMPLE)) == EXAMPLE
    path = arch_to_path(EXAMPLE)
    assert path["cell"].tolist() == [3, 3, 4, 1, 3, 1]
    assert path_to_arch(path) == EXAMPLE


def test_paths_index_into_kept_ops() -> None:
    kept = {"cell": [["skip_connect", "nor_conv_3x3", "avg_pool_3x3"]] * 6}
    path = arch_to_path(EXAMPLE, kept)
    assert path["cell"].tolist() == [1, 1, 2, 0, 1, 0]
    assert path_to_arch(path, kept) == EXAMPLE
    with pytest.raises(UserError, match="not kept"):
        arch_to_path(OPTIMUM, kept)


@pytest.mark.parametrize("bad, why", [
    ("|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|", "2 nodes"),
    ("nor_conv_3x3~0|+|none~0|none~1|+|none~0|none~1|none~2|", "node 1 must be enclosed"),
    ("|nor_conv_3x3~0|+|none~0|+|none~0|none~1|none~2|", "node 2 has 1 inputs"),
    ("|conv_3x3~0|+|none~0|none~1|+|none~0|none~1|none~2|", "unknown op 'conv_3x3'"),
    ("|none~1|+|none~0|none~1|+|none~0|none~1|none~2|", "must read '~0'"),
    ("|none|+|none~0|none~1|+|none~0|none~1|none~2|", "must read '~0'"),
    ("", "1 nodes separated by"),
])
def test_malformed_strings_raise_user_error(bad: str, why: str) -> None:
    with pytest.raises(UserError, match=why):
        parse_arch(bad)


@needs_table
def test_round_trip_every_table_string(bench: TabularBenchmark) -> None:
    with open(TABLE, newline="") as handle:
        archs = [row["arch"] for row in csv.DictReader(handle)]
    assert len(archs) == len(set(archs)) == 15_625
    for arch in archs:
        ops = parse_arch(arch)
        assert ops_to_arch(ops) == arch
        assert path_to_arch(arch_to_path(arch)) == arch
        assert code_to_arch(arch_code(arch)) == arch


@needs_table
def test_best_cell_is_the_documented_optimum(bench: TabularBenchmark) -> None:
    arch, acc = bench.best()
    assert round(acc, 2) == 94.37
    assert arch == OPTIMUM and bench.query(OPTIMUM) == acc == max(bench.by_code)
    assert bench.query(EXAMPLE) == pytest.approx(93.66)


@needs_table
def test_missing_table_or_column_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        TabularBenchmark(tmp_path / "missing.csv")
    with pytest.raises(UserError, match="no column 'cifar100_acc'; its columns: arch, cifar10_test_acc, iso_key"):
        TabularBenchmark(TABLE, column="cifar100_acc")
    bad = tmp_path / "bad.csv"
    bad.write_text("arch,acc\n|none~0|+|none~0|none~1|+|none~0|none~1|none~2|,10.0\n|oops|,1.0\n")
    with pytest.raises(UserError, match=r"bad.csv:3: malformed"):
        TabularBenchmark(bad, column="acc")
    bad.write_text("arch,acc\n")
    with pytest.raises(UserError, match="has no rows"):
        TabularBenchmark(bad, column="acc")


@needs_table
@pytest.mark.parametrize("method", list(METHODS))
def test_methods_respect_budget_and_seed(bench: TabularBenchmark, method: str) -> None:
    trace = run_method(method, bench, 60, seed=3)
    assert 1 <= len(trace) <= 60
    assert [queries for queries, _ in trace] == list(range(1, len(trace) + 1))
    assert all(a <= b for (_, a), (_, b) in zip(trace, trace[1:]))
    assert run_method(method, bench, 60, seed=3) == trace
    assert run_method(method, bench, 25, seed=3) == trace[:25]  # a smaller budget is a prefix
    if method != "reinforce_argmax":  # greedy sampling on a fixed table stalls on its first cells
        assert len(trace) == 60 and run_method(method, bench, 60, seed=4) != trace


@needs_table
def test_unknown_method_lists_the_choices(bench: TabularBenchmark) -> None:
    with pytest.raises(UserError, match="unknown search method 'bohb'; choose from: random, rea, reinforce_"):
        run_method("bohb", bench, 10, 0)


@pytest.mark.parametrize("kept", [None, ["none", "nor_conv_3x3", "avg_pool_3x3"]])
def test_supernet_forward_backward_in_both_modes(kept: list[str] | None) -> None:
    space = NB201Space(C=8, num_classes=5)
    kept_ops = space.initial_kept_ops() if kept is None else {"cell": [kept] * 6}
    net = space.build_supernet(kept_ops, layers=1)
    x = torch.randn(2, 3, 16, 16)
    k = len(kept_ops["cell"][0])
    alphas = torch.zeros(6, k, requires_grad=True)
    out = net(x, weights={"cell": torch.softmax(alphas, dim=-1)})
    assert out.shape == (2, 5)
    out.sum().backward()
    assert alphas.grad is not None and alphas.grad.abs().sum() > 0
    net.zero_grad(set_to_none=True)
    conv = kept_ops["cell"][0].index("nor_conv_3x3")
    path = {"cell": torch.tensor([conv, k - 1, 0, conv, k - 1, conv])}
    net(x, path=path).sum().backward()
    edge = net.blocks[0].edges[0]
    assert all(p.grad is not None for p in edge[conv].parameters())
    assert all(p.grad is None for i, op in enumerate(edge) if i != conv for p in op.parameters())
    with pytest.raises(UserError, match="pass weights= or path="):
        net(x)
    scale = torch.ones(6, requires_grad=True)
    net(x, path=path, path_scale={"cell": scale}).sum().backward()  # GDAS: a differentiable weight per edge
    assert scale.grad is not None and scale.grad[0] != 0


def test_param_table_matches_built_networks() -> None:
    gen = torch.Generator().manual_seed(0)
    archs = [OPTIMUM, EXAMPLE, ops_to_arch(["none"] * 6), ops_to_arch(["nor_conv_3x3"] * 6)]
    archs += [ops_to_arch([NB201_OPS[i] for i in torch.randint(5, (6,), generator=gen).tolist()]) for _ in range(4)]
    for arch in archs:
        built = sum(p.numel() for p in build_network(arch).parameters())
        assert count_params(arch) == built
        assert NB201Space().params_millions(arch) == pytest.approx(built / 1e6)
    assert build_network(OPTIMUM, C=8, cells_per_stage=1)(torch.randn(2, 3, 8, 8)).shape == (2, 10)


def test_derive_takes_the_most_probable_op_per_edge() -> None:
    probs = torch.nn.functional.one_hot(arch_to_path(EXAMPLE)["cell"], 5).float() * 0.6 + 0.08
    assert NB201Space().derive({"cell": probs}, NB201Space().initial_kept_ops()) == EXAMPLE


def test_a_skip_limit_gives_the_least_likely_skips_the_next_op_of_their_edge() -> None:
    """Probabilities by hand: edges 0-3 prefer skip_connect (0.50 < 0.52 < 0.54 < 0.56), second choices conv3x3
    (edges 0, 1) and none (edges 2, 3); edges 4 and 5 prefer avg_pool. A limit of 2 moves edges 0 and 1; a limit of
    0 also edges 2 and 3 (to none, their second op); a skip alone on its edge stays."""
    probs = torch.full((6, 5), 0.05)
    for e in range(4):
        probs[e, NB201_OPS.index("skip_connect")] = 0.50 + 0.02 * e
        probs[e, NB201_OPS.index("nor_conv_3x3" if e < 2 else "none")] = 0.3
    probs[4:, NB201_OPS.index("avg_pool_3x3")] = 0.8
    space, kept = NB201Space(), NB201Space().initial_kept_ops()
    assert space.derive({"cell": probs}, kept) == space.derive({"cell": probs}, kept, 4) == (
        "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|avg_pool_3x3~1|avg_pool_3x3~2|")
    assert space.derive({"cell": probs}, kept, 2) == (
        "|nor_conv_3x3~0|+|nor_conv_3x3~0|skip_connect~1|+|skip_connect~0|avg_pool_3x3~1|avg_pool_3x3~2|")
    assert space.derive({"cell": probs}, kept, 0) == (
        "|nor_conv_3x3~0|+|nor_conv_3x3~0|none~1|+|none~0|avg_pool_3x3~1|avg_pool_3x3~2|")
    alone = {"cell": [["skip_connect"]] * 3 + [["nor_conv_1x1"]] * 3}
    assert space.derive({"cell": torch.ones(6, 1)}, alone, 0) == (
        "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|nor_conv_1x1~0|nor_conv_1x1~1|nor_conv_1x1~2|")


def space_from_config(size: int = 32, **model: int) -> NB201Space:
    """The space as a search builds it: through the registry, from its validated `model:` section."""
    cls = space_class("nb201")
    sections = {"model": NB201ModelConfig(**model)}
    cls.validate_config(sections)
    return cls.from_config(sections, SimpleNamespace(in_channels=3, size=size, num_classes=10))


def test_the_registry_builds_the_space_from_its_section() -> None:
    space = space_from_config(C=4)
    assert isinstance(space, NB201Space) and (space.C, space.eval_C, space.eval_N) == (4, 16, 5)
    assert NB201Space.ops_per_edge({"model": NB201ModelConfig()}) == len(NB201_OPS) == 5
    assert space.cell_layout(space.initial_kept_ops()) is None and space.max_skip_choices() == [6, 5, 4, 3, 2, 1, 0]
    with pytest.raises(UserError, match="too small for NB201's two residual reductions"):
        space_from_config(size=2)
    with pytest.raises(UserError, match="model.eval_N must be a positive integer, got 0"):
        space_from_config(eval_N=0)


def test_prune_keeps_none_and_paths_records_round_trip() -> None:
    space = space_from_config(C=4)
    kept = space.initial_kept_ops()
    probs = torch.softmax(3.0 * F.one_hot(arch_to_path(EXAMPLE)["cell"], 5).float(), -1)
    probs[0] = torch.tensor([0.5, 0.3, 0.1, 0.05, 0.05])  # `none` is the most probable op on edge 0
    pruned = space.prune({"cell": probs}, kept, 2, drop_none_first=True)  # NB201: `none` is an op like any other
    assert pruned["cell"][0] == ["none", "skip_connect"]
    arch = space.derive({"cell": probs}, kept)
    assert parse_arch(arch)[0] == "none" and parse_arch(arch)[1:] == parse_arch(EXAMPLE)[1:]
    for kept_ops in (kept, pruned, {"cell": [[op] for op in parse_arch(arch)]}):
        path = space.architecture_path(arch, kept_ops)
        assert space.path_architecture(path, kept_ops) == arch
    record = json.loads(json.dumps(space.arch_to_record(arch)))
    assert record == arch and space.arch_from_record(record) == arch and space.format_arch(arch) == arch
    with pytest.raises(UserError, match="malformed"):
        space.arch_from_record("|none~0|")
    with pytest.raises(UserError, match="turns an edge off"):
        space.path_architecture({"cell": torch.tensor([0, 0, -1, 0, 0, 0])}, kept)
    with pytest.raises(UserError, match="the same non-zero number of ops"):
        space.build_supernet({"cell": [["none"], ["none", "skip_connect"]] * 3}, 1)


@pytest.mark.parametrize("size, in_channels, classes", [(32, 3, 10), (28, 1, 10), (16, 3, 100)])
def test_costs_are_those_of_the_built_network(size: int, in_channels: int, classes: int) -> None:
    space = NB201Space(C=4, num_classes=classes, in_channels=in_channels, image_size=size)
    data = SimpleNamespace(in_channels=in_channels, size=size, num_classes=classes)
    for arch in (OPTIMUM, ops_to_arch(["none"] * 6), ops_to_arch(["avg_pool_3x3", "skip_connect"] * 3)):
        net = space.eval_network(arch, data)
        assert sum(p.numel() for p in net.parameters()) / 1e6 == pytest.approx(space.params_millions(arch))
        assert flops_millions(net, (1, in_channels, size, size)) == pytest.approx(space.flops_millions(arch))
        assert net(torch.randn(2, in_channels, size, size)).shape == (2, classes)  # odd sizes too (28 -> 14 -> 7)
    assert eval_flops_millions(OPTIMUM) > eval_flops_millions(ops_to_arch(["none"] * 6)) > 0


def test_reinforce_samples_nb201_cells_one_op_per_edge() -> None:
    space = space_from_config(C=4)
    kept = space.initial_kept_ops()

    def controller(sample: str) -> ReinforceController:
        sections = {"reinforce": ReinforceConfig(sample=sample), "reward": RewardConfig()}
        return ReinforceController.from_config(StageContext(sections=sections, space=space, kept_ops=kept, stage=0,
                                                            num_stages=3, generator=torch.Generator().manual_seed(0)))

    with pytest.raises(UserError, match="which the nb201 space does not choose .* set reinforce.sample: edges"):
        controller("genotype")
    edges = controller("edges")
    for path in edges.sample(4):
        arch = path_to_arch(path, kept)
        reward, costs = edges.reward(edges.path_architecture(space, kept, path), 0.5)
        assert (reward, costs) == (0.5, {"params": space.params_millions(arch), "flops": space.flops_millions(arch)})


def test_the_table_compares_every_behaviour_policy() -> None:
    assert set(REINFORCE_BEHAVIOURS) == set(BEHAVIOURS)
    assert set(METHODS) == {"random", "rea"} | {f"reinforce_{b}" for b in BEHAVIOURS}


def _load_bench_script():
    return load_script("nb201_bench")


@needs_table
def test_bench_script_writes_results(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "bench"
    _load_bench_script().main(["--table", str(TABLE), "--budget", "10", "30", "--seeds", "3",
                               "--methods", "random", "rea", "reinforce_uniform", "--out", str(out)])
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"random", "rea", "reinforce_uniform"} and set(results["rea"]) == {"10", "30"}
    assert {"mean", "std", "hit_rate", "queries_to_within_0.1"} <= set(results["rea"]["30"])
    assert results["rea"]["30"]["mean"] >= results["rea"]["10"]["mean"]
    assert 0.0 <= results["random"]["30"]["hit_rate"] <= 1.0
    assert (out / "best_vs_queries.png").stat().st_size > 0
    assert "reinforce_uniform" in capsys.readouterr().out


@needs_table
def test_bench_script_exits_2_on_bad_input() -> None:
    cmd = [sys.executable, str(ROOT / "experiments/nb201_bench.py"), "--table", str(TABLE), "--methods", "bohb"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.startswith("error: unknown search method 'bohb'; choose from: random")
