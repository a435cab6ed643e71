"""The chain SuperNet: subnets, sum/concat weight sharing, stand-alone subnets and their sizes."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nas.errors import UserError
from nas.metrics import count_parameters
from nas.oneshot import train_step
from search_spaces.chain import (
    SHARING_MODES,
    ChainSuperNet,
    StandaloneNet,
    enumerate_choices,
    sample_path_dropout,
    validate_ops,
)

C = 4


def conv_params(k: int, c: int = C) -> int:
    """ReLU-Conv(k x k, no bias)-BN(affine) from c to c channels."""
    return c * c * k * k + 2 * c


def stem_head_params(in_channels: int = 1, c: int = C, classes: int = 10, grid: int = 4) -> int:
    """Stem conv 3x3 (no bias) + BN, and the linear layer over the head's grid x grid pooled map."""
    return in_channels * c * 9 + 2 * c + c * grid * grid * classes + classes


def batch(n: int = 8, size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(n, 1, size, size), torch.arange(n) % 10


def test_enumerate_choices_sizes_and_order() -> None:
    assert enumerate_choices(2, 2) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    space = enumerate_choices(3, 4)
    assert len(space) == 64 and len(set(space)) == 64 and space[0] == (0, 0, 0) and space[-1] == (3, 3, 3)


def test_validate_ops_canonicalises_and_rejects() -> None:
    assert validate_ops(["conv 3x3", "max_pool_3x3"]) == ("conv_3x3", "max_pool_3x3")
    for bad in (["conv_9x9"], ["none", "conv_3x3"], ["conv_3x3", "conv 3x3"], []):
        with pytest.raises(UserError):
            validate_ops(bad)


@pytest.mark.parametrize("sharing", SHARING_MODES)
def test_block_combines_only_the_active_ops(sharing: str) -> None:
    torch.manual_seed(0)
    block = ChainSuperNet(1, 10, C=C, sharing=sharing).blocks[0].eval()
    x = torch.randn(2, C, 6, 6)
    outs = [op(x) for op in block.ops]
    with torch.no_grad():
        if sharing == "sum":
            torch.testing.assert_close(block(x, [1]), outs[1])
            torch.testing.assert_close(block(x, [0, 1]), outs[0] + outs[1])
        else:  # the 1x1 conv sees both slots; the unchosen one holds zeros
            torch.testing.assert_close(block(x, [1]), F.conv2d(outs[1], block.proj.weight[:, C:]))
            torch.testing.assert_close(block(x, [0, 1]), block.proj(torch.cat(outs, dim=1)))


@pytest.mark.parametrize("sharing", SHARING_MODES)
def test_shapes_and_gradients(sharing: str) -> None:
    torch.manual_seed(0)
    model = ChainSuperNet(1, 10, C=C, sharing=sharing)
    x, y = batch()
    cases = [((0, 1), {(0, 0), (1, 1)}), ([[0, 1], 1], {(0, 0), (0, 1), (1, 1)}),
             (None, {(0, 0), (0, 1), (1, 0), (1, 1)})]
    for path, ran in cases:
        model.zero_grad(set_to_none=True)
        logits = model(x, path)
        assert logits.shape == (8, 10)
        F.cross_entropy(logits, y).backward()
        for b, block in enumerate(model.blocks):
            for i, op in enumerate(block.ops):
                grads = [p.grad for p in op.parameters()]
                if (b, i) in ran:
                    assert all(g is not None and g.abs().sum() > 0 for g in grads), (path, b, i)
                else:
                    assert all(g is None for g in grads), (path, b, i)
    with pytest.raises(ValueError):
        model(x, (0,))
    with pytest.raises(ValueError):
        model(x, (0, 2))


@pytest.mark.parametrize("sharing", SHARING_MODES)
def test_oneshot_step_changes_exactly_the_ops_it_ran(sharing: str) -> None:
    torch.manual_seed(0)
    model = ChainSuperNet(1, 10, C=C, sharing=sharing)
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    x, y = batch()
    train_step(model, torch.optim.Adadelta(model.parameters(), lr=1.0), x, y, path=(0, 1))

    ran = ("stem.", "head.", "blocks.0.ops.0.", "blocks.1.ops.1.")
    expected = {n for n in params if n.startswith(ran)}
    assert all(any(n.startswith(prefix) for n in expected) for prefix in ran)
    if sharing == "concat":
        expected |= {"blocks.0.proj.weight", "blocks.1.proj.weight"}
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, params[n])}
    assert changed == expected
    idle = ("blocks.0.ops.1.", "blocks.1.ops.0.")
    assert all(torch.equal(b, buffers[n]) for n, b in model.named_buffers() if n.startswith(idle))
    if sharing == "concat":  # only the chosen slot's columns of each 1x1 conv moved
        for b, slot in ((0, 0), (1, 1)):
            new, old = model.blocks[b].proj.weight, params[f"blocks.{b}.proj.weight"]
            used, unused = slice(slot * C, (slot + 1) * C), slice((1 - slot) * C, (2 - slot) * C)
            assert not torch.equal(new[:, used], old[:, used])
            assert torch.equal(new[:, unused], old[:, unused])


def test_standalone_parameter_counts_in_closed_form() -> None:
    for choice, kernels in [((0, 0), (3, 3)), ((0, 1), (3, 5)), ((1, 1), (5, 5))]:
        net = StandaloneNet(choice, 1, 10, C=C)
        assert count_parameters(net) == stem_head_params() + sum(conv_params(k) for k in kernels)
        assert net(batch()[0]).shape == (8, 10)
    # parameter-free candidates add nothing; 8 filters on 3-channel input
    ops = ["conv_3x3", "conv_7x7", "max_pool_3x3", "skip_connect"]
    net = StandaloneNet((1, 2, 3), 3, 10, C=8, ops=ops, head_grid=1)
    assert count_parameters(net) == stem_head_params(3, 8, grid=1) + conv_params(7, 8)


@pytest.mark.parametrize("sharing", SHARING_MODES)
def test_supernet_parameter_count(sharing: str) -> None:
    model = ChainSuperNet(1, 10, C=C, num_blocks=3, sharing=sharing)
    proj = 3 * 2 * C * C if sharing == "concat" else 0
    assert count_parameters(model) == stem_head_params() + 3 * (conv_params(3) + conv_params(5)) + proj


def test_space_of_3_blocks_by_4_ops_runs_every_subnet() -> None:
    torch.manual_seed(0)
    ops = ["conv_3x3", "conv_7x7", "max_pool_3x3", "skip_connect"]
    for sharing in SHARING_MODES:
        model = ChainSuperNet(1, 10, C=C, num_blocks=3, ops=ops, sharing=sharing).eval()
        choices = model.choices()
        assert len(choices) == 64
        x = batch(2)[0]
        with torch.no_grad():
            outs = torch.stack([model(x, c) for c in choices])
        assert outs.shape == (64, 2, 10) and torch.isfinite(outs).all()


def test_path_dropout_keeps_at_least_one_op() -> None:
    g = torch.Generator().manual_seed(0)
    assert sample_path_dropout(3, 4, 0.0, g) == [[0, 1, 2, 3]] * 3
    heavy = [sample_path_dropout(2, 4, 0.99, g) for _ in range(200)]
    assert all(1 <= len(ops) for path in heavy for ops in path)
    kept = sum(len(ops) for _ in range(500) for ops in sample_path_dropout(1, 4, 0.5, g))
    assert 0.4 < kept / 2000 < 0.6
