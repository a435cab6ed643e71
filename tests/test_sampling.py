"""Behaviour policies: probabilities, log-probabilities, sampling frequencies, registry."""
from __future__ import annotations

import math

import pytest
import torch

from controllers.sampling import (
    BEHAVIOURS,
    edge_log_probs,
    make_behaviour,
    stack_paths,
    unstack_paths,
)
from nas.core.errors import UserError

# pi on edge 0 = [1/4, 1/2, 1/4], on edge 1 = [3/5, 1/5, 1/5]; greedy path (1, 0)
LOGITS = {"cell": torch.tensor([[0.0, math.log(2.0), 0.0], [math.log(3.0), 0.0, 0.0]])}
GREEDY = torch.tensor([[1, 0]])
OTHER = torch.tensor([[0, 2]])


@pytest.mark.parametrize("name, greedy_mu, other_mu", [
    ("multinomial", 0.5 * 0.6, 0.25 * 0.2),
    ("uniform", 1 / 9, 1 / 9),
    ("epsilon_greedy", 0.8 * 0.8, 0.1 * 0.1),  # eps = 0.3: greedy 0.1 + 0.7, other 0.1
    ("argmax", 1.0, 0.0),
])
def test_log_prob_hand_computed(name: str, greedy_mu: float, other_mu: float) -> None:
    policy = make_behaviour(name, epsilon=0.3)
    assert policy.log_prob(LOGITS, {"cell": GREEDY}).exp().item() == pytest.approx(greedy_mu, rel=1e-6)
    assert policy.log_prob(LOGITS, {"cell": OTHER}).exp().item() == pytest.approx(other_mu, rel=1e-6, abs=1e-12)


def test_argmax_gives_minus_infinity_off_the_greedy_path() -> None:
    assert make_behaviour("argmax").log_prob(LOGITS, {"cell": OTHER}).item() == -math.inf
    assert make_behaviour("argmax").log_prob(LOGITS, {"cell": GREEDY}).item() == 0.0


@pytest.mark.parametrize("name", list(BEHAVIOURS))
def test_sample_frequencies_match_edge_probs(name: str) -> None:
    logits = {"normal": torch.randn(5, 4, generator=torch.Generator().manual_seed(1)),
              "reduce": torch.randn(3, 6, generator=torch.Generator().manual_seed(2))}
    policy = make_behaviour(name, epsilon=0.25)
    n = 40_000
    batch = policy.sample(logits, n, torch.Generator().manual_seed(0))
    for group, theta in logits.items():
        assert batch[group].shape == (n, theta.shape[0]) and batch[group].dtype == torch.long
        counts = torch.nn.functional.one_hot(batch[group], theta.shape[1]).float().mean(dim=0)
        torch.testing.assert_close(counts, policy.edge_probs(theta), atol=0.012, rtol=0)


def test_sampling_is_reproducible_with_a_generator() -> None:
    policy = make_behaviour("multinomial")
    first = policy.sample(LOGITS, 50, torch.Generator().manual_seed(7))
    again = policy.sample(LOGITS, 50, torch.Generator().manual_seed(7))
    other = policy.sample(LOGITS, 50, torch.Generator().manual_seed(8))
    assert torch.equal(first["cell"], again["cell"])
    assert not torch.equal(first["cell"], other["cell"])


def test_edge_log_probs_sum_to_path_log_prob() -> None:
    policy = make_behaviour("epsilon_greedy", epsilon=0.5)
    batch = policy.sample(LOGITS, 8, torch.Generator().manual_seed(0))
    per_edge = policy.edge_log_prob(LOGITS, batch)
    assert per_edge.shape == (8, 2)
    torch.testing.assert_close(per_edge.sum(dim=1), policy.log_prob(LOGITS, batch))
    log_pi = edge_log_probs({"cell": torch.log_softmax(LOGITS["cell"], -1)}, {"cell": GREEDY})
    torch.testing.assert_close(log_pi.exp(), torch.tensor([[0.5, 0.6]]))


def test_stack_and_unstack_paths_round_trip() -> None:
    batch = {"normal": torch.arange(12).reshape(3, 4), "reduce": torch.arange(6).reshape(3, 2)}
    paths = unstack_paths(batch)
    assert len(paths) == 3 and torch.equal(paths[1]["normal"], torch.tensor([4, 5, 6, 7]))
    restacked = stack_paths(paths)
    assert all(torch.equal(restacked[g], batch[g]) for g in batch)


def test_unknown_behaviour_lists_the_valid_ones() -> None:
    with pytest.raises(UserError, match="unknown behaviour policy 'greedy'; choose one of: multinomial, uniform, "
                                        "epsilon_greedy, argmax"):
        make_behaviour("greedy")
    with pytest.raises(UserError, match=r"epsilon must lie in \[0, 1\]"):
        make_behaviour("epsilon_greedy", epsilon=1.5)
