"""Issue 17 at tiny scale: every reward objective (params, FLOPs, latency; soft and hard), every final-selection rule
(argmax, best_sampled, vote, probe) with the SBO check, the latency table (cache, device), the per-decision
vote, and the dominance diagnostics with the forced-dominance warning."""
from __future__ import annotations

import json
import logging
import math
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT, TINY_SEARCH
from test_monitor import written_tags

import search
from controllers.base import Controller
from nas.benchmarks import latency
from nas.core.arch_types import CellLayout
from nas.core.data import load_dataset
from nas.core.errors import UserError
from nas.core.records import read_record
from nas.engine.selection import SBO_TOP, SelectConfig, final_choice, probe_accuracy, stage_candidates, vote
from search_spaces.darts.genotype import load_genotype
from search_spaces.darts.space import DartsSpace
from search_spaces.ops import DARTS_OPS

QUICK_RL = str(ROOT / "experiments" / "quick_digits_reinforce.yaml")
TINY_RL = [*TINY_SEARCH, "reinforce.samples_per_update=2", "reinforce.last_n=12", "search.rescore=4"]
EVAL_SCALE = {"C": 4, "layers": 3, "size": 8, "in_channels": 1, "num_classes": 10}  # digits, model.eval_C=4 ...
SCALE_SET = ["model.eval_C=4", "model.eval_layers=3"]


@pytest.fixture
def table_path(tmp_path, monkeypatch):
    """A latency table of the digits eval network at C=4, 3 cells, measured here (cached under tmp_path)."""
    monkeypatch.setenv("PDARTS_NAS_CACHE", str(tmp_path / "cache"))
    table = latency.build_table("darts", torch.device("cpu"), EVAL_SCALE, warmup=1, repeats=3)
    return latency.write_table(tmp_path / "table.json", table)


def _search(run_dir, *settings: str) -> dict:
    assert search.main(["-c", QUICK_RL, "--run-dir", str(run_dir), "--set", *TINY_RL, *settings]) == 0
    return read_record(run_dir / "genotype.json")


def _expected_reward(candidate: dict, metric: str, mode: str, alpha: float, beta: float, base: float) -> float:
    accuracy, cost = candidate["val_acc"] / 100, candidate[metric]
    exponent = alpha if mode == "soft" else (0.0 if cost <= base else beta)
    return accuracy * (cost / base) ** exponent


def _check_stage_rewards(record: dict, metrics: list[str], mode: str, alpha: float, beta: float,
                         bases: list[float]) -> None:
    """Each stage rewards its own metric: every rescored candidate's reward follows the stage's formula."""
    for stage, metric, base in zip(record["search"]["stages"], metrics, bases):
        for candidate in [stage["argmax_rescored"], *stage["candidates"][:4]]:
            assert {"params", "flops"} <= set(candidate)
            expected = _expected_reward(candidate, metric, mode, alpha, beta, base)
            assert candidate["val_reward"] == pytest.approx(expected, rel=2e-3, abs=1e-5), (metric, candidate)
        top = stage["candidates"][:SBO_TOP]  # search.rescore=4: still the top 10, all rescored
        assert stage["sbo"]["top10_reward"] == pytest.approx(sum(c["val_reward"] for c in top) / len(top), abs=1e-6)
        assert all("val_reward" in c for c in top) and stage["sbo"]["scored_by"] == "val_reward"
        assert stage["sbo"]["argmax_reward"] == stage["argmax_rescored"]["val_reward"]


def test_every_objective_soft_with_best_sampled(tmp_path, table_path) -> None:
    """Stage 1 params, stage 2 FLOPs, stage 3 latency (soft); best_sampled outputs the top rescored reward."""
    bases = [0.05, 1.0, 0.5]
    record = _search(tmp_path / "soft", *SCALE_SET, "reward.metric=[params,flops,latency]",
                     "reward.alpha=[-0.5,-0.5,-0.5]", f"reward.p_base={bases}", f"reward.latency_table={table_path}",
                     "search.select=best_sampled")
    _check_stage_rewards(record, ["params", "flops", "latency"], "soft", -0.5, -1.0, bases)
    assert all("latency" in c for c in record["search"]["stages"][2]["candidates"][:4])
    selection = record["search"]["selection"]
    best = max(selection["candidates"], key=lambda c: c["val_reward"])
    assert selection["picked"]["genotype"] == best["genotype"] == record["genotype_str"]
    assert selection["picked"]["by"] == "best_sampled"
    scalars = written_tags(tmp_path / "soft")["scalar"]
    assert {f"stage{s}/reinforce/latency_mean" for s in (1, 2, 3)} <= scalars
    assert {f"stage{s}/select/{k}" for s in (1, 2, 3) for k in ("top10_reward", "argmax_reward")} <= scalars
    report = (tmp_path / "soft" / "report.md").read_text()
    assert "## Final selection: `search.select: best_sampled`" in report and "SBO: top-10 reward" in report


def test_hard_budget_with_probe(tmp_path, table_path) -> None:
    """Hard mode (budget m_base; exponent 0 under it, beta past it) on latency, params and FLOPs; probe trains the
    argmax and the top-k candidates and outputs the best validation accuracy."""
    bases = [1.0, 0.06, 1.2]
    record = _search(tmp_path / "hard", *SCALE_SET, "reward.metric=[latency,params,flops]", "reward.mode=hard",
                     "reward.alpha=[0,0,0]", "reward.beta=[-2.0,-2.0,-2.0]", f"reward.p_base={bases}",
                     f"reward.latency_table={table_path}", "search.select=probe", "search.top_k=2",
                     "search.probe_epochs=1", "search.probe_C=4", "search.probe_layers=3")
    _check_stage_rewards(record, ["latency", "params", "flops"], "hard", 0.0, -2.0, bases)
    selection = record["search"]["selection"]
    pool = [selection["argmax"], *selection["candidates"][:2]]
    assert all(0.0 <= c["probe_acc"] <= 100.0 for c in pool)
    assert all("probe_acc" not in c for c in selection["candidates"][2:])
    assert selection["picked"]["genotype"] == max(pool, key=lambda c: c["probe_acc"])["genotype"] == \
        record["genotype_str"]


def test_vote_picks_the_majority_genotype(tmp_path) -> None:
    record = _search(tmp_path / "vote", "search.select=vote", "search.top_k=3", "stages.epochs=[1,1,1]",
                     "stages.warmup_epochs=[0,0,0]")
    selection, final = record["search"]["selection"], record["search"]["stages"][-1]
    assert selection["picked"]["genotype"] == final["vote"]["genotype"] == record["genotype_str"]
    assert selection["picked"]["source"] == "per-decision majority of the top 3 samples"


@pytest.mark.parametrize("mode", ["reinforce", "gradient"])
def test_dominance_in_record_tensorboard_and_report(mode, tiny_run) -> None:
    run_dir = tiny_run(mode)
    for stage in read_record(run_dir / "genotype.json")["search"]["stages"]:
        for cell, d in stage["dominance"].items():
            argmax = [ops[max(range(len(p)), key=p.__getitem__)]
                      for ops, p in zip(stage["kept_ops"][cell], stage["probabilities"][cell])]
            assert d["share"] == {op: pytest.approx(argmax.count(op) / 14, abs=1e-4) for op in set(argmax)}
            assert d["entropy"] == pytest.approx(-sum(v * math.log(v) for v in d["share"].values()), abs=1e-3)
            assert d["top_share"] == max(d["share"].values()) and len(d["commit_step"]) == 14
    scalars = written_tags(run_dir)["scalar"]
    assert "stage2/normal/dominance/entropy" in scalars and "stage3/reduce/dominance/commit/edge_13" in scalars
    assert "| cell | top op | its share of edges |" in (run_dir / "report.md").read_text()


def test_forced_dominance_warns_once(tmp_path, caplog) -> None:
    """A high policy lr with a strong size penalty on [max_pool, sep_conv_5x5]: max_pool takes the normal cell."""
    settings = ["stages.layers=[3]", "stages.epochs=[2]", "stages.warmup_epochs=[0]", "stages.keep=[1]",
                "stages.skip_dropout=[0.0]", "reinforce.epsilon=[0.0]", "reward.alpha=[-4.0]", "reward.p_base=[1.0]",
                "reward.metric=[params]", "reinforce.lr=0.5", "reinforce.behaviour=multinomial",
                "reinforce.samples_per_update=32", "model.normal_ops=[none,max_pool_3x3,sep_conv_5x5]",
                "model.reduce_ops=[none,max_pool_3x3,sep_conv_5x5]"]
    with caplog.at_level(logging.WARNING, logger="nas.engine.search_loop"):
        record = _search(tmp_path / "dominated", *settings)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "normal cell" in
                r.getMessage()]
    assert len(warnings) == 1  # once per stage and cell, however long the op keeps the cell
    assert "max_pool_3x3 is the most probable op on" in warnings[0] and "reinforce.lr" in warnings[0]
    assert record["search"]["stages"][0]["dominance"]["normal"]["top_share"] >= 0.8


def test_vote_majorities_and_skip_limit() -> None:
    """Per node the majority pair, per chosen edge the majority op among the paths that chose it, skips capped."""
    layout = CellLayout(node_edges=[[0, 1], [2, 3, 4]], ops=[["skip_connect", "sep_conv_3x3"]] * 5, max_skip=1)
    rows = [[0, 0, 1, -1, 0],   # best sample: node 1 reads inputs 0 and 2
            [0, 1, -1, 1, 0],
            [1, 1, 1, -1, 1],
            [0, 1, 1, -1, 0]]
    voted = vote([{"normal": torch.tensor(r)} for r in rows], {"normal": layout})["normal"].tolist()
    # node 0: edge 0 skip (3 of 4) -> one skip used; edge 1 sep (3 of 4). node 1: pair (2, 4) in 3 of 4; edge 2 sep;
    # edge 4 majority skip, but the cell's one skip is spent: its other op
    assert voted == [0, 1, 1, -1, 1]
    edges = vote([{"cell": torch.tensor([2, 0])}, {"cell": torch.tensor([2, 1])}, {"cell": torch.tensor([1, 1])}], None)
    assert edges["cell"].tolist() == [2, 1]


def test_latency_table_cache_and_device(tmp_path, table_path, monkeypatch) -> None:
    table = latency.load_table(table_path)
    assert table.device == latency.device_name(torch.device("cpu")) and all(v > 0 for v in table.entries.values())
    monkeypatch.setattr(latency, "time_module", lambda *a, **k: pytest.fail("a cached table was timed again"))
    again = latency.build_table("darts", torch.device("cpu"), EVAL_SCALE, warmup=1, repeats=3)
    assert again.entries == table.entries
    foreign = json.loads(table_path.read_text())
    foreign["device"] = "cpu: Some Other CPU x1 threads"
    (tmp_path / "foreign.json").write_text(json.dumps(foreign))
    table = latency.load_table(tmp_path / "foreign.json")  # a target device's table (tests/test_latency.py)
    with pytest.raises(UserError, match="was measured on 'cpu: Some Other CPU x1 threads', not on this device"):
        latency.check_measured_here(table, tmp_path / "foreign.json")


def _refused(capsys, entry, argv: list[str]) -> str:
    """The one-line error of a refused command (exit code 2)."""
    with pytest.raises(SystemExit) as exit_info:
        entry(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_bad_tables_and_rules_are_refused_before_any_work(tmp_path, capsys) -> None:
    (tmp_path / "bad.json").write_text("{}")
    assert "is not a latency table" in _refused(capsys, latency.main, ["check", str(tmp_path / "bad.json")])
    argv = ["-c", QUICK_RL, "--run-dir", str(tmp_path / "run"), "--set", *TINY_RL]
    assert "reward.metric latency needs reward.latency_table" in _refused(
        capsys, search.main, [*argv, "reward.metric=[params,params,latency]"])
    assert "cannot read the latency table" in _refused(capsys, search.main, [*argv, "reward.latency_table=/no/t.json"])
    assert "search.select is 'best'" in _refused(capsys, search.main, [*argv, "search.select=best"])
    gradient = ["-c", str(ROOT / "experiments" / "quick_digits.yaml"), "--run-dir", str(tmp_path / "g"), "--set",
                "search.select=vote"]
    assert "the gradient controller does not keep" in _refused(capsys, search.main, gradient)


class _Scored:
    """A controller whose samples are architectures named by strings, each with its one-batch sampled reward."""

    def __init__(self, sampled: dict[str, float]):
        self.sampled = sampled

    def scored_samples(self):
        return [({"cell": name}, reward) for name, reward in self.sampled.items()]

    def path_architecture(self, space, kept_ops, path):
        return path["cell"]

    def reward(self, arch, accuracy):
        return accuracy, {}

    rescore_accuracy = Controller.rescore_accuracy  # the supernet's accuracy, as every weight-sharing controller


class _Names:
    """A space whose architectures are their names."""

    format_arch = arch_to_record = staticmethod(lambda arch: arch)
    architecture_path = staticmethod(lambda arch, kept_ops: {"cell": arch})


@pytest.mark.parametrize("rescore", [0, 4, 12])
def test_sbo_and_best_sampled_use_rescored_rewards_not_the_noisy_sampled_maximum(rescore) -> None:
    """12 samples; the luckiest one-batch reward ('lucky', 0.9) is 0.3 on the whole half. Whatever search.rescore,
    the SBO set is rescored on the argmax's data and best_sampled picks the best rescored sample."""
    sampled = {"lucky": 0.9, **{f"s{i}": 0.8 - 0.01 * i for i in range(10)}, "good": 0.5}
    truth = {"lucky": 30.0, "good": 70.0, "argmax": 60.0, **{f"s{i}": 40.0 for i in range(10)}}
    evaluate = lambda path: (0.0, truth[path["cell"]])  # noqa: E731 (accuracy in %)
    candidates, check = stage_candidates(_Scored(sampled), _Names(), {}, "argmax", evaluate, top_k=2,
                                         rescored=rescore)
    top = candidates[:SBO_TOP]
    assert all("val_reward" in c for c in top) and check["sbo"]["scored_by"] == "val_reward"
    assert check["sbo"]["top10_reward"] == pytest.approx(sum(truth[c["genotype"]] / 100 for c in top) / 10)
    assert check["sbo"]["top10_reward"] < check["sbo"]["argmax_reward"] == 0.6  # no winner's curse: argmax wins
    entry = {"candidates": candidates, "argmax_rescored": check["argmax"]}
    picked = final_choice(entry, SelectConfig(select="best_sampled", rescore=rescore), lambda c: 0.0)["picked"]
    assert picked["genotype"] == ("good" if rescore >= 12 else "s0")  # 'good' (12th) is rescored only if asked


def test_probe_trains_a_sample_equal_to_the_argmax_once_and_records_its_accuracy_on_both() -> None:
    argmax = {"genotype": "a", "record": 0}
    candidates = [{"genotype": "a", "record": 0}, {"genotype": "b", "record": 1}, {"genotype": "c", "record": 2}]
    probed: list[str] = []

    def probe(candidate: dict) -> float:
        probed.append(candidate["genotype"])
        return {"a": 30.0, "b": 50.0, "c": 40.0}[candidate["genotype"]]

    selection = final_choice({"argmax_rescored": argmax, "candidates": candidates},
                             SelectConfig(select="probe", top_k=2), probe)
    assert probed == ["a", "b"]  # the top 2 samples are the argmax and b; c is outside top_k
    assert [c.get("probe_acc") for c in candidates] == [30.0, 50.0, None]
    assert selection["argmax"]["probe_acc"] == 30.0 and selection["picked"]["genotype"] == "b"


def test_probe_leaves_every_global_rng_as_it_was() -> None:
    """torch, Python's random and NumPy continue exactly as if no probe had trained in between."""
    data = load_dataset("digits")
    part = torch.utils.data.Subset(data.dataset, range(64))
    space = DartsSpace(C=4, num_classes=10, in_channels=1, normal_ops=list(DARTS_OPS), reduce_ops=list(DARTS_OPS))
    cfg = SelectConfig(probe_epochs=1, probe_C=4, probe_layers=3)
    draws = []
    for probe in (False, True):
        torch.manual_seed(5), random.seed(5), np.random.seed(5)
        if probe:
            probe_accuracy(space, load_genotype("PDARTS"), data, part, part, 32, cfg, torch.device("cpu"), seed=1)
        draws.append((torch.rand(3).tolist(), random.random(), np.random.rand(3).tolist()))
    assert draws[0] == draws[1]


PROBE_WORKER = """
import json, os, sys
import torch.distributed as tdist
from nas.engine.selection import SelectConfig, final_choice

tdist.init_process_group("gloo")
rank, out = tdist.get_rank(), sys.argv[1]
pool = [{"genotype": f"c{i}", "record": i} for i in range(5)]
entry = {"argmax_rescored": pool[0], "candidates": pool[1:]}

def probe(candidate):
    with open(os.path.join(out, f"probed{rank}.txt"), "a") as f:
        f.write(candidate["genotype"] + "\\n")
    return {"c0": 50.0, "c1": 40.0, "c2": 70.0, "c3": 60.0, "c4": 10.0}[candidate["genotype"]]

selection = final_choice(entry, SelectConfig(select="probe", top_k=4), probe)
with open(os.path.join(out, f"picked{rank}.json"), "w") as f:
    json.dump([selection["picked"]["genotype"], [c["probe_acc"] for c in [selection["argmax"], *pool[1:]]]], f)
tdist.destroy_process_group()
"""


def test_probe_candidates_are_split_over_torchrun_ranks(tmp_path) -> None:
    """Two gloo ranks: each candidate trained once in all (not once per rank), and both ranks pick the same one."""
    (tmp_path / "worker.py").write_text(PROBE_WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             str(tmp_path / "worker.py"), str(tmp_path)], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    probed = [(tmp_path / f"probed{r}.txt").read_text().split() for r in (0, 1)]
    assert sorted(probed[0] + probed[1]) == ["c0", "c1", "c2", "c3", "c4"] and probed[0] and probed[1]
    picks = [json.loads((tmp_path / f"picked{r}.json").read_text()) for r in (0, 1)]
    assert picks[0] == picks[1] == ["c2", [50.0, 40.0, 70.0, 60.0, 10.0]]
