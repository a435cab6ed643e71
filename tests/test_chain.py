"""The chain SuperNet: subnets, sum/concat weight sharing, stand-alone subnets and their sizes, the linear head,
planting a trained subnet and warm-starting choices from its filters."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nas.benchmarks.oneshot import train_step
from nas.core.errors import UserError
from nas.core.metrics import count_parameters
from search_spaces.chain import (
    SHARING_MODES,
    ChainSuperNet,
    StandaloneNet,
    enumerate_choices,
    parse_choice,
    plant,
    resize_kernel,
    sample_path_dropout,
    validate_ops,
    warm_start,
)
from search_spaces.ops import ReLUConvBN

C = 4

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


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
    train_step(model, torch.optim.Adadelta(model.parameters(), lr=1.0), x, y, paths=[(0, 1)])

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


def test_head_flag_builds_linear_relu_dropout_layers() -> None:
    torch.manual_seed(0)
    net = StandaloneNet((0, 1), 1, 10, C=C, head_hidden=(32, 16), head_dropout=0.5)
    kinds = [type(m).__name__ for m in net.head]
    assert kinds == ["ReLU", "AdaptiveAvgPool2d", "Flatten", "Linear", "ReLU", "Dropout", "Linear", "ReLU", "Dropout",
                     "Linear"]
    assert [m.out_features for m in net.head if isinstance(m, torch.nn.Linear)] == [32, 16, 10]
    assert all(m.p == 0.5 for m in net.head if isinstance(m, torch.nn.Dropout))
    linear = (C * 16 * 32 + 32) + (32 * 16 + 16) + (16 * 10 + 10)
    assert count_parameters(net) == stem_head_params() - (C * 16 * 10 + 10) + linear + conv_params(3) + conv_params(5)
    x = batch()[0]
    net.eval()
    torch.testing.assert_close(net(x), net(x))  # dropout off in eval mode
    net.train()
    assert not torch.equal(net(x), net(x))  # and on in training
    assert ChainSuperNet(1, 10, C=C, head_hidden=(32,), head_dropout=0.2)(x, (0, 0)).shape == (8, 10)
    for hidden, dropout in [((), 0.5), ((0,), 0.0), ((8,), 1.0)]:
        with pytest.raises(UserError):
            StandaloneNet((0, 0), 1, 10, C=C, head_hidden=hidden, head_dropout=dropout)


def test_parse_choice() -> None:
    ops = ["conv_3x3", "conv_5x5", "max_pool_3x3"]
    assert parse_choice(["conv 5x5", "max_pool_3x3", "conv_3x3"], ops, 3) == (1, 2, 0)
    for names in (["conv_3x3"], ["conv_3x3", "skip_connect", "conv_3x3"], ["conv_3x3", "conv_9x9", "conv_3x3"]):
        with pytest.raises(UserError):
            parse_choice(names, ops, 3)


OPS4 = ["conv_3x3", "conv_5x5", "max_pool_3x3", "skip_connect"]


def trained_net(choice: tuple[int, ...], steps: int = 3, **head) -> StandaloneNet:
    """A stand-alone net moved off its init by a few steps, so copied weights differ from any fresh ones."""
    torch.manual_seed(1)
    net = StandaloneNet(choice, 1, 10, C=C, ops=OPS4, **head)
    optimizer = torch.optim.Adadelta(net.parameters(), lr=1.0)
    for _ in range(steps):
        train_step(net, optimizer, *batch())
    return net


def state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("sharing", SHARING_MODES)
def test_plant_copies_the_subnet_and_leaves_the_rest_fresh(sharing: str) -> None:
    net = trained_net((1, 0, 2), head_hidden=(16,))
    torch.manual_seed(0)
    supernet = ChainSuperNet(1, 10, C=C, num_blocks=3, ops=OPS4, sharing=sharing, head_hidden=(16,))
    fresh = state(supernet)
    planted = plant(supernet, net)
    assert planted[:2] == [supernet.stem, supernet.head]
    assert same(state(supernet.stem), state(net.stem)) and same(state(supernet.head), state(net.head))
    for b, i in enumerate((1, 0, 2)):
        assert same(state(supernet.blocks[b].ops[i]), state(net.blocks[b]))
        for j, op in enumerate(supernet.blocks[b].ops):
            if j != i:
                assert same(state(op), {k: fresh[f"blocks.{b}.ops.{j}.{k}"] for k in op.state_dict()})
        if sharing == "concat":  # the planted slot's columns of the 1x1 conv are the identity, the rest fresh
            proj, was = supernet.blocks[b].proj.weight, fresh[f"blocks.{b}.proj.weight"]
            cols = slice(i * C, (i + 1) * C)
            assert torch.equal(proj[:, cols, 0, 0], torch.eye(C))
            assert torch.equal(proj[:, :cols.start], was[:, :cols.start])
            assert torch.equal(proj[:, cols.stop:], was[:, cols.stop:])
    x = batch()[0]
    supernet.eval(), net.eval()
    with torch.no_grad():  # the planted path is the stand-alone net
        torch.testing.assert_close(supernet(x, (1, 0, 2)), net(x))
    with pytest.raises(ValueError):
        plant(ChainSuperNet(1, 10, C=C, num_blocks=2, ops=OPS4), net)


@pytest.mark.parametrize("sharing", SHARING_MODES)
def test_frozen_plant_stays_put_while_the_rest_trains(sharing: str) -> None:
    net = trained_net((1, 0, 3))
    torch.manual_seed(0)
    supernet = ChainSuperNet(1, 10, C=C, num_blocks=3, ops=OPS4, sharing=sharing)
    planted = plant(supernet, net, frozen=True)
    before = [state(m) for m in planted]
    others = state(supernet.blocks[0].ops[0])
    projs = [block.proj.weight.clone() for block in supernet.blocks] if sharing == "concat" else []
    x = batch()[0]
    supernet.eval()
    with torch.no_grad():
        planted_out = supernet(x, (1, 0, 3))
    optimizer = torch.optim.Adadelta([p for p in supernet.parameters() if p.requires_grad], lr=1.0)
    for path in [(1, 0, 3), (0, 0, 3), (2, 3, 3), [[0, 1], [0, 1], [2, 3]]]:  # (2, 3, 3) has nothing to train
        train_step(supernet, optimizer, *batch(), paths=[path])
    for m, b in zip(planted, before):  # weights and BatchNorm statistics (only the batch counter moves)
        assert same(*({k: v for k, v in d.items() if "num_batches" not in k} for d in (state(m), b)))
    assert not same(state(supernet.blocks[0].ops[0]), others)
    assert all(not p.requires_grad for m in planted for p in m.parameters())
    for block, i, was in zip(supernet.blocks, (1, 0, 3), projs):  # concat: only the planted slot's columns stay
        cols = slice(i * C, (i + 1) * C)
        assert torch.equal(block.proj.weight[:, cols], was[:, cols]) and not torch.equal(block.proj.weight, was)
    supernet.eval()
    with torch.no_grad():  # the planted path still computes what it did at the plant
        torch.testing.assert_close(supernet(x, (1, 0, 3)), planted_out)


def test_resize_kernel_centre_pads_and_crops() -> None:
    w3 = torch.randn(2, 2, 3, 3)
    w5 = resize_kernel(w3, 5)
    assert w5.shape == (2, 2, 5, 5) and torch.equal(w5[..., 1:4, 1:4], w3)
    border = w5.clone()
    border[..., 1:4, 1:4] = 0
    assert not border.any()
    assert torch.equal(resize_kernel(w5, 3), w3) and torch.equal(resize_kernel(w3, 3), w3)
    with pytest.raises(ValueError):
        resize_kernel(w3, 4)


def test_warm_start_puts_the_trained_filters_into_every_conv_choice() -> None:
    net = trained_net((0, 1, 2))  # conv_3x3 > conv_5x5 > max_pool_3x3
    torch.manual_seed(0)
    supernet = ChainSuperNet(1, 10, C=C, num_blocks=3, ops=OPS4)
    fresh = state(supernet)
    both = ["conv_3x3", "conv_5x5"]
    assert warm_start(supernet, net) == {0: both, 1: both, 2: both}
    src3, src5 = net.blocks[0].body[0].weight, net.blocks[1].body[0].weight
    block0, block1 = supernet.blocks[0].ops, supernet.blocks[1].ops
    assert torch.equal(block0[0].body[0].weight, src3)
    assert torch.equal(block0[1].body[0].weight[..., 1:4, 1:4], src3)  # the 5x5's centre is the 3x3 source
    assert block0[1].body[0].weight[..., 0, :].abs().sum() == 0
    assert torch.equal(block1[1].body[0].weight, src5)
    assert torch.equal(block1[0].body[0].weight, src5[..., 1:4, 1:4])  # the 3x3 is the 5x5's centre
    # block 2's source is a pool: it takes the nearest conv, block 1's 5x5
    assert torch.equal(supernet.blocks[2].ops[1].body[0].weight, src5)
    assert all(same(state(op.body[1]), state(net.blocks[min(b, 1)].body[1])) for b in (0, 1, 2)
               for op in supernet.blocks[b].ops if isinstance(op, ReLUConvBN))
    assert same(state(supernet.stem), state(net.stem))
    head = {k: v for k, v in state(supernet).items() if k.startswith("head.")}
    assert same(head, {k: fresh[k] for k in head})  # the head stays fresh
    pool_source = StandaloneNet((2, 3, 2), 1, 10, C=C, ops=OPS4)
    assert warm_start(ChainSuperNet(1, 10, C=C, num_blocks=3, ops=OPS4), pool_source) == {}  # no conv to take
    x = torch.randn(2, C, 6, 6)
    block0.eval()
    with torch.no_grad():  # a 3x3 centre-padded into a 5x5 computes the same function
        torch.testing.assert_close(block0[1](x), block0[0](x))
