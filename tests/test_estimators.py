"""The training-free estimators (nas/core/estimators): values computed by hand on tiny networks, determinism, the online
rank ensemble, the NB201 ranking study's smoke run and nas-proxy."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT, load_script, shared_path
from torch import nn

from nas.core.errors import UserError
from nas.core.estimators.activation import naswot_logdet
from nas.core.estimators.ensemble import OnlineRankEnsemble, rank_ensemble
from nas.core.estimators.registry import ESTIMATORS, estimator, parse_names, score, score_all
from search_spaces.nb201 import build_network

NB201_ARCH = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"


def tiny_batch(n: int = 8, channels: int = 3, size: int = 8, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, channels, size, size, generator=g), torch.randint(10, (n,), generator=g))]


def test_synflow_of_a_two_layer_linear_network_is_twice_the_absolute_path_sum() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4, bias=False), nn.Linear(4, 2, bias=False))
    w1, w2 = net[0].weight.detach().clone(), net[1].weight.detach().clone()
    # R = 1' |W2| |W1| 1. dR/dW1[i,j] = (1'|W2|)_i, dR/dW2[k,i] = (|W1| 1)_i, so each layer's sum of |w * dR/dw| is R.
    a1, a2 = w1.double().abs(), w2.double().abs()
    path_sum = float(a2.sum(0) @ a1.sum(1))
    x = [(torch.randn(5, 3), torch.zeros(5, dtype=torch.long))]
    assert score("synflow", net, x) == pytest.approx(2 * path_sum, rel=1e-12)
    assert torch.equal(net[0].weight, w1) and torch.equal(net[1].weight, w2), "synflow changed the weights"


def test_naswot_logdet_of_a_hand_made_code_matrix() -> None:
    codes = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 1]])
    # Agreements: K = [[3, 2, 0], [2, 3, 1], [0, 1, 3]]; det = 3 (9 - 1) - 2 (6 - 0) = 12.
    assert naswot_logdet(codes) == pytest.approx(math.log(12.0))
    assert naswot_logdet(torch.tensor([[1, 0], [1, 0]])) == -math.inf  # equal codes: singular kernel


class FunctionalRelu(nn.Module):
    """x -> relu(x) through F.relu, as the project's ops apply their ReLUs, then a fixed linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(x))


def test_nwot_reads_the_codes_of_functional_relus() -> None:
    x = torch.tensor([[1.0, 2.0, -1.0], [3.0, -1.0, -2.0], [-1.0, -3.0, 0.5]])  # the codes of the test above
    assert score("nwot", FunctionalRelu(), [(x, torch.zeros(3, dtype=torch.long))]) == pytest.approx(math.log(12.0))


def test_grad_norm_is_the_sum_of_the_layers_gradient_norms() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 10))
    batch = tiny_batch()
    x, y = batch[0]
    F.cross_entropy(net(x), y).backward()
    direct = float(net[0].weight.grad.norm() + net[4].weight.grad.norm())
    net.zero_grad()
    assert score("grad_norm", net, batch) == pytest.approx(direct, rel=1e-6)


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_every_estimator_is_deterministic_for_a_fixed_seed(name: str, one_thread) -> None:
    values = []
    for _ in range(2):
        torch.manual_seed(3)
        values.append(score(name, build_network(NB201_ARCH, C=4, cells_per_stage=1), tiny_batch()))
    assert math.isfinite(values[0]) and values[0] == values[1]


def test_estimators_read_the_logits_of_a_tuple_output() -> None:
    class WithAux(nn.Module):  # the DARTS eval network returns (logits, auxiliary logits)
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4, 10)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
            return self.fc(F.adaptive_avg_pool2d(F.relu(self.conv(x)), 1).flatten(1)), None

    torch.manual_seed(0)
    scored = score_all(list(ESTIMATORS), WithAux(), tiny_batch())
    assert set(scored) == set(ESTIMATORS)
    assert all(isinstance(value, float) and seconds >= 0 for value, seconds in scored.values())


def test_unknown_estimators_are_user_errors() -> None:
    with pytest.raises(UserError, match="unknown estimator 'naswot'.*nwot"):
        estimator("naswot")
    with pytest.raises(UserError, match="unknown estimator"):
        parse_names("nwot,foo")
    assert parse_names("all") == list(ESTIMATORS)


def test_the_online_ensemble_ranks_each_candidate_among_those_seen_so_far() -> None:
    ens = OnlineRankEnsemble(("a", "b"))
    assert ens.add({"a": 5.0, "b": 1.0}) == 0.0  # the first candidate is the best seen on both
    assert ens.add({"a": 1.0, "b": 0.0}) == pytest.approx(2 * math.log(1 / 2))  # worst of 2 on both
    assert ens.add({"a": 3.0, "b": 2.0}) == pytest.approx(math.log(2 / 3))  # middle on a, best on b
    assert ens.add({"a": float("nan"), "b": 9.0}) == pytest.approx(math.log(1 / 4))  # nan ranks last on a
    before = len(ens)
    assert ens.score({"a": 10.0, "b": 10.0}) == 0.0 and len(ens) == before  # score() does not record


def test_the_offline_ensemble_is_the_sum_of_log_ranks() -> None:
    columns = {"a": [3.0, 1.0, 2.0, 4.0], "b": [1.0, 2.0, 4.0, 3.0]}
    scores = rank_ensemble(columns, ("a", "b"))
    ranks = {"a": [3, 1, 2, 4], "b": [1, 2, 4, 3]}  # 1 = worst
    expected = [math.log(ranks["a"][i] / 4) + math.log(ranks["b"][i] / 4) for i in range(4)]
    assert scores == pytest.approx(expected)


def run_script(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


def test_the_ranking_study_smoke_run_writes_its_tables_and_resumes(tmp_path, shared_cifar10) -> None:
    table = shared_path("nb201", "nb201_cifar10.csv")
    cmd = ["experiments/nb201_proxies.py", "--smoke", "--out", str(tmp_path), "--root", str(shared_cifar10),
           "--table", str(table)]
    first = run_script(*cmd)
    assert first.returncode == 0, first.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["ranking"]) == {*ESTIMATORS, "ensemble", "ensemble_online"}
    for row in results["ranking"].values():
        assert set(row) == {"kendall_tau", "spearman_rho", "precision_top5pct", "cpu_s_per_cell"}
    lines = (tmp_path / "scores.csv").read_text().splitlines()
    assert lines[0].split(",") == ["arch", *ESTIMATORS] and len(lines) == 1 + 6
    rows_before = (tmp_path / "rows.csv").read_text()
    again = run_script(*cmd)
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "rows.csv").read_text() == rows_before, "a re-run scored cells it had already scored"
    (tmp_path / "results.json").unlink()
    assert run_script(*cmd, "--report-only").returncode == 0
    assert json.loads((tmp_path / "results.json").read_text())["cells"] == 6


@pytest.mark.parametrize("argv, message", [
    (["nonsense"], "unknown genotype 'nonsense'"),
    (["|bad~0|+|x|"], "malformed NAS-Bench-201 architecture"),
    ([NB201_ARCH, "-e", "foo"], "unknown estimator 'foo'"),
    ([NB201_ARCH, "--batch-size", "0"], "--batch-size must be >= 1"),
])
def test_nas_proxy_refuses_bad_input_in_one_line(argv: list[str], message: str, capsys) -> None:
    from nas.cli.proxy import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_nas_proxy_scores_a_file_of_architectures_as_json(tmp_path, capsys) -> None:
    from nas.cli.proxy import main

    listing = tmp_path / "cells.txt"
    listing.write_text(f"# two cells\n{NB201_ARCH}\n\n{NB201_ARCH.replace('nor_conv_3x3', 'skip_connect')}\n")
    assert main([str(listing), "-e", "params,synflow", "--json", "--dataset", "digits", "--C", "4", "--layers", "1",
                 "--batch-size", "8"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["space"] for row in rows] == ["nb201", "nb201"]
    assert rows[0]["scores"]["params"] > rows[1]["scores"]["params"]  # convolutions have weights, skips none


def test_an_estimator_reward_drives_reinforce_to_the_planted_best_cell() -> None:
    from controllers.registry import controller_class
    from nas.core.estimators.reward import EstimatorReward

    reinforce = controller_class("reinforce")
    edges, ops = 3, 4
    value = torch.randperm(edges * ops, generator=torch.Generator().manual_seed(1)).view(edges, ops) + 1
    best = tuple(value.argmax(dim=1).tolist())

    def build(arch: tuple[int, ...]) -> nn.Module:  # the planted score: params = sum over edges of value[e, op]
        return nn.Linear(1, int(sum(value[e, op] for e, op in enumerate(arch))), bias=False)

    reward = EstimatorReward(("params",), build, key=lambda arch: arch)
    cfg = reinforce.config_sections["reinforce"](sample="edges")
    controller = reinforce({"cell": (edges, ops)}, cfg, stage=0, generator=torch.Generator().manual_seed(0))
    batch = tiny_batch()[0]
    for _ in range(800):
        paths = controller.sample(cfg.samples_per_update)
        controller.update(paths, [reward(tuple(p["cell"].tolist()), batch) for p in paths])
    assert tuple(controller.argmax_path()["cell"].tolist()) == best
    assert len(reward.scores) < ops ** edges, "every cell was scored: the policy did not narrow the search"


def test_reward_estimator_must_name_an_estimator() -> None:
    from controllers.reward import RewardConfig

    RewardConfig(estimator="ensemble").validate(3)
    RewardConfig(estimator="synflow").validate(3)
    with pytest.raises(UserError, match="reward.estimator is 'naswot'"):
        RewardConfig(estimator="naswot").validate(3)


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_every_estimator_scores_a_cell_cut_off_from_its_input(name: str) -> None:
    cut = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|none~0|none~1|none~2|"  # node 3 adds nothing
    torch.manual_seed(0)
    value = score(name, build_network(cut, C=4, cells_per_stage=1), tiny_batch())
    assert isinstance(value, float) and not math.isnan(value)


def test_a_percentile_counts_the_share_below_with_ties_half() -> None:
    percentile = load_script("darts_proxy_percentiles").percentile
    assert percentile(2.5, [1.0, 2.0, 3.0, 4.0]) == 50.0
    assert percentile(2.0, [1.0, 2.0, 3.0, 4.0]) == 37.5  # one below, one tied: 1.5 of 4
    assert percentile(0.0, [1.0, 2.0]) == 0.0 and percentile(9.0, [1.0, 2.0]) == 100.0


def test_the_published_genotypes_percentile_smoke_run_scores_each_once_and_resumes(tmp_path, shared_cifar10) -> None:
    cmd = ["experiments/darts_proxy_percentiles.py", "--smoke", "--out", str(tmp_path), "--root",
           str(shared_cifar10), "--estimators", "params,synflow", "--ensemble", "params,synflow",
           "--genotype", "mine=DARTS_V2"]
    first = run_script(*cmd)
    assert first.returncode == 0, first.stderr
    results = json.loads((tmp_path / "results.json").read_text())["estimators"]
    for name in ("params", "synflow", "ensemble"):
        published = results[name]["published"]
        assert len(published) == 8 and all(0.0 <= p["percentile"] <= 100.0 for p in published.values())
        assert published["mine"] == published["DARTS_V2"]  # the same cell, built and scored alike
    assert results["ensemble"]["members"] == ["params", "synflow"]
    assert len((tmp_path / "random_genotypes.txt").read_text().splitlines()) == 6
    rows = (tmp_path / "rows.csv").read_text()
    assert len(rows.splitlines()) == 1 + 7 + 1 + 6
    assert run_script(*cmd).returncode == 0
    assert (tmp_path / "rows.csv").read_text() == rows, "a re-run scored genotypes it had already scored"


@pytest.mark.parametrize("argv, message", [
    (["--genotype", "DARTS_V2"], "write LABEL=SPEC"),
    (["--genotype", "PDARTS=DARTS_V2"], "taken by a published or random cell"),
    (["--ensemble", "nwot,zen", "--estimators", "nwot"], "must be among --estimators"),
])
def test_the_percentile_study_refuses_bad_input_in_one_line(argv: list[str], message: str, tmp_path) -> None:
    done = run_script("experiments/darts_proxy_percentiles.py", "--out", str(tmp_path), *argv)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "rows.csv").exists()
