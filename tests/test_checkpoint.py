"""Checkpoints: a truncated or foreign file is detected, the previous good one is used, RNG states round-trip."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from nas.core.checkpoint import CHECKPOINT, PREVIOUS, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from nas.core.errors import UserError


def _truncate(path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


def test_truncated_checkpoint_falls_back_to_the_previous_good_one(tmp_path):
    save_checkpoint(tmp_path, {"epoch": 1, "w": torch.ones(3)}, "search")
    save_checkpoint(tmp_path, {"epoch": 2, "w": torch.zeros(3)}, "search")
    assert (tmp_path / PREVIOUS).exists() and load_checkpoint(tmp_path, "search")["epoch"] == 2
    _truncate(tmp_path / CHECKPOINT)
    with pytest.warns(UserWarning, match="not a readable checkpoint.*using the previous good checkpoint"):
        state = load_checkpoint(tmp_path, "search")
    assert state["epoch"] == 1 and torch.equal(state["w"], torch.ones(3))


def test_truncated_checkpoint_without_a_previous_one_is_a_clear_error(tmp_path):
    save_checkpoint(tmp_path, {"epoch": 1}, "search")
    _truncate(tmp_path / CHECKPOINT, keep=0.3)
    with pytest.raises(UserError, match=f"{CHECKPOINT} is not a readable checkpoint"):
        load_checkpoint(tmp_path, "search")


def test_checkpoint_of_another_kind_or_project_is_refused(tmp_path):
    save_checkpoint(tmp_path, {"epoch": 1}, "eval")
    with pytest.raises(UserError, match="is not a search checkpoint of this project"):
        load_checkpoint(tmp_path, "search")
    torch.save({"model": torch.ones(1)}, tmp_path / CHECKPOINT)
    with pytest.raises(UserError, match="found None"):
        load_checkpoint(tmp_path, "eval")


class Payload:
    """An arbitrary pickled class: weights_only loading must not construct it."""


def test_pickled_objects_are_refused_by_weights_only_loading(tmp_path):
    torch.save({"format": "pdarts-nas/search", "version": 1, "state": {"obj": Payload()}}, tmp_path / CHECKPOINT)
    with pytest.raises(UserError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path, "search")


def test_a_save_leaves_no_temporary_files(tmp_path):
    for epoch in range(3):
        save_checkpoint(tmp_path, {"epoch": epoch}, "search")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([CHECKPOINT, PREVIOUS])


def test_rng_states_round_trip_through_a_checkpoint(tmp_path):
    random.seed(3), np.random.seed(3), torch.manual_seed(3)
    save_checkpoint(tmp_path, {"rng": rng_state()}, "search")
    expected = (random.random(), np.random.rand(), torch.rand(2))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    set_rng_state(load_checkpoint(tmp_path, "search")["rng"])
    got = (random.random(), np.random.rand(), torch.rand(2))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])
