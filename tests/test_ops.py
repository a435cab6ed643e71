"""Every registered op: output shape at stride 1 and 2, gradients to the input and every parameter."""
from __future__ import annotations

import pytest
import torch

from search_spaces.depthwise import Depthwise
from search_spaces.ops import OPS, PreActivated, build_op, canonical_op_name


@pytest.mark.parametrize("name", sorted(OPS))
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("C", [4, 8, 16])
@pytest.mark.parametrize("size", [7, 8])
def test_op_shape_and_gradients(name: str, stride: int, C: int, size: int) -> None:
    torch.manual_seed(0)
    op = build_op(name, C, stride, affine=True)
    x = torch.randn(2, C, size, size, requires_grad=True)
    out = op(x)
    expected = -(-size // stride)  # ceil(size / stride)
    assert out.shape == (2, C, expected, expected)
    (out * torch.randn_like(out)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    if name != "none":
        assert x.grad.abs().sum() > 0
    for pname, param in op.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, f"{name}: no gradient for {pname}"


@pytest.mark.parametrize("name", sorted(OPS))
def test_preactivated_body_matches_forward(name: str) -> None:
    torch.manual_seed(1)
    op = build_op(name, 8, 1, affine=False)
    if not isinstance(op, PreActivated):
        pytest.skip("not a pre-activated op")
    x = torch.randn(2, 8, 6, 6)
    torch.testing.assert_close(op(x), op.body(torch.relu(x)))


def test_affine_false_has_no_bn_parameters() -> None:
    op = build_op("sep_conv_3x3", 8, 1, affine=False)
    depthwise_and_pointwise = 2 * (8 * 9 + 8 * 8)
    assert sum(p.numel() for p in op.parameters()) == depthwise_and_pointwise


def test_canonical_names() -> None:
    assert canonical_op_name("conv 3x3") == "conv_3x3"
    with pytest.raises(ValueError, match="unknown op"):
        canonical_op_name("conv_9x9")


@pytest.mark.parametrize("kernel", [3, 5])
@pytest.mark.parametrize("stride,dilation", [(1, 1), (1, 2), (2, 2), (2, 1)])
@pytest.mark.parametrize("height,width", [(1, 1), (1, 4), (6, 9), (17, 20)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_depthwise_matches_plain_conv(kernel: int, stride: int, dilation: int, height: int, width: int,
                                      channels_last: bool) -> None:
    torch.manual_seed(2)
    op = Depthwise(6, kernel, stride, dilation).double()
    x = torch.randn(3, 6, height, width, dtype=torch.double)
    x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    x_fast, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_fast, out_ref = op(x_fast), op.conv(x_ref)
    torch.testing.assert_close(out_fast, out_ref)
    grad = torch.randn_like(out_ref)
    (weight_fast,) = torch.autograd.grad(out_fast, op.conv.weight, grad, retain_graph=True)
    (weight_ref,) = torch.autograd.grad(out_ref, op.conv.weight, grad, retain_graph=True)
    out_fast.backward(grad)
    out_ref.backward(grad)
    torch.testing.assert_close(x_fast.grad, x_ref.grad)
    torch.testing.assert_close(weight_fast, weight_ref)


def test_depthwise_runs_plain_conv_without_grad() -> None:
    op = build_op("dil_conv_3x3", 4, 1)
    calls = []
    op.body[0].conv.register_forward_hook(lambda *args: calls.append(1))  # what FLOP counters such as thop see
    with torch.no_grad():
        op(torch.randn(1, 4, 6, 6))
    assert calls == [1]
