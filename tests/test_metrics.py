"""Shared metrics: accuracy, parameter and FLOP counts, rank correlations, symmetrised KL."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from nas.core.metrics import (
    accuracy,
    count_parameters,
    flops_millions,
    kendall_tau,
    precision_at_top,
    ranking_correlations,
    spearman_rho,
    symmetrised_kl,
)


def test_accuracy_top_k_by_hand() -> None:
    logits = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.5, 0.3], [0.1, 0.3, 0.6], [0.5, 0.4, 0.1]])
    target = torch.tensor([0, 2, 1, 2])
    # sample 0 top-1 hit; 1 second; 2 second; 3 last
    assert accuracy(logits, target, topk=(1, 2, 3)) == pytest.approx([25.0, 75.0, 100.0])
    assert accuracy(logits, target) == pytest.approx([25.0])


def test_count_parameters_with_exclude() -> None:
    model = nn.Module()
    model.body = nn.Linear(3, 4)  # 16
    model.auxiliary_head = nn.Linear(4, 2)  # 10
    assert count_parameters(model) == 26
    assert count_parameters(model, exclude="auxiliary") == 16


def test_flops_of_one_conv_in_closed_form_leaves_model_untouched() -> None:
    conv = nn.Conv2d(3, 16, 3, padding=1, bias=False)
    model = nn.Sequential(conv).train()
    assert flops_millions(model, (1, 3, 32, 32)) == pytest.approx(16 * 32 * 32 * 3 * 9 / 1e6)
    strided = nn.Conv2d(8, 8, 5, stride=2, padding=2, groups=8, bias=False)
    assert flops_millions(strided, (1, 8, 16, 16)) == pytest.approx(8 * 8 * 8 * 25 / 1e6)
    assert model.training
    assert not conv._forward_hooks and not list(model.buffers())


def test_rank_correlations_on_known_vectors() -> None:
    a = [1.0, 2.0, 3.0, 4.0]
    assert kendall_tau(a, [10, 20, 30, 40]) == pytest.approx(1.0)
    assert kendall_tau(a, [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert kendall_tau(a, [1, 3, 2, 4]) == pytest.approx(2 / 3)  # 5 concordant, 1 discordant pair
    assert spearman_rho(a, [1, 3, 2, 4]) == pytest.approx(0.8)  # 1 - 6 * 2 / (4 * 15)
    assert spearman_rho(a, [1, 4, 9, 16]) == pytest.approx(1.0)
    assert math.isnan(kendall_tau(a, [1, 1, 1, 1]))


def test_precision_at_the_top() -> None:
    truth = list(range(40))  # the top 5% of 40 is 2 items
    assert precision_at_top(truth, truth) == 1.0
    assert precision_at_top([-t for t in truth], truth) == 0.0
    assert precision_at_top([*range(38), 39, 38], truth) == 1.0  # the top two, swapped
    assert precision_at_top([*range(38), 39, 0], truth) == 0.5  # one of the top two
    assert ranking_correlations(truth, truth) == {"kendall_tau": pytest.approx(1.0),
                                                  "spearman_rho": pytest.approx(1.0), "precision_top5pct": 1.0}


def test_symmetrised_kl() -> None:
    torch.manual_seed(0)
    p = torch.randn(5, 10)
    assert torch.allclose(symmetrised_kl(p, p), torch.zeros(5))
    assert torch.allclose(symmetrised_kl(p, p + 3.0), torch.zeros(5), atol=1e-6)  # logits shift invariant
    q = torch.randn(5, 10)
    d = symmetrised_kl(p, q)
    assert d.shape == (5,) and (d > 0).all()
    torch.testing.assert_close(d, symmetrised_kl(q, p))
    half, skew = torch.tensor([[0.5, 0.5]]).log(), torch.tensor([[0.9, 0.1]]).log()
    expected = 0.4 * math.log(0.9 / 0.5) + 0.4 * math.log(0.5 / 0.1)
    assert symmetrised_kl(half, skew).item() == pytest.approx(expected, rel=1e-5)
    big = symmetrised_kl(torch.tensor([[1e4, 0.0]]), torch.tensor([[0.0, 1e4]]))
    assert torch.isfinite(big).all() and big.item() == pytest.approx(2e4, rel=1e-3)
