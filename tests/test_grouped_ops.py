"""run_grouped: the same op of several edges in one call equals each op on its own channel block."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from search_spaces.grouped_ops import run_grouped
from search_spaces.ops import OPS, build_op

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("name", [name for name in OPS if name != "none"])
def test_every_op_grouped_equals_the_ops_on_their_blocks(name: str, stride: int) -> None:
    torch.manual_seed(0)
    ops = [build_op(name, 4, stride, affine=True) for _ in range(3)]
    alone = copy.deepcopy(ops)
    x = torch.randn(2, 12, 9, 9).contiguous(memory_format=torch.channels_last).requires_grad_()
    grouped = run_grouped(ops, x)
    separate = torch.cat([op(block) for op, block in zip(alone, x.chunk(3, dim=1))], dim=1)
    assert grouped.shape == separate.shape
    assert torch.allclose(grouped, separate, rtol=1e-4, atol=1e-5)
    params = [p for op in ops for p in op.parameters()]
    params_alone = [p for op in alone for p in op.parameters()]
    if params:
        mine = torch.autograd.grad(grouped.square().sum(), [x, *params])
        theirs = torch.autograd.grad(separate.square().sum(), [x, *params_alone])
        assert all(torch.allclose(a, b, rtol=1e-3, atol=1e-4) for a, b in zip(mine, theirs))
    for mine, theirs in zip((b for op in ops for b in op.buffers()), (b for op in alone for b in op.buffers())):
        assert torch.equal(mine, theirs) if mine.dtype == torch.long else torch.allclose(mine, theirs, atol=1e-6)


def test_grouped_batch_norm_uses_the_running_statistics_in_eval_and_updates_them_in_training() -> None:
    norms = [nn.BatchNorm2d(2, affine=False, momentum=None) for _ in range(2)]
    x = torch.randn(8, 4, 3, 3)
    run_grouped(norms, x)
    run_grouped(norms, 2 * x)
    assert [int(n.num_batches_tracked) for n in norms] == [2, 2]
    means = torch.cat([n.running_mean for n in norms])
    assert torch.allclose(means, 1.5 * x.mean((0, 2, 3)), atol=1e-6)  # momentum None: the cumulative average
    for norm in norms:
        norm.eval()
    expected = (x - means.view(1, 4, 1, 1)) / (torch.cat([n.running_var for n in norms]).view(1, 4, 1, 1) + 1e-5).sqrt()
    assert torch.allclose(run_grouped(norms, x), expected, atol=1e-5)


def test_ops_of_different_types_are_refused() -> None:
    with pytest.raises(ValueError, match="one type"):
        run_grouped([nn.ReLU(), nn.Identity()], torch.zeros(1, 2, 1, 1))
