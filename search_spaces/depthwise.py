"""The depthwise convolution of the sep and dil convs, with a fast CPU forward and backward for the cases where
oneDNN's own kernels are slow (dilated convs, maps smaller than the kernel)."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable


def _space_to_batch(x: torch.Tensor, d: int) -> torch.Tensor:
    """The d x d polyphase components of x (zero-padded to multiples of d) stacked on the batch axis, channels_last."""
    if x.shape[2] % d or x.shape[3] % d:
        x = F.pad(x, (0, -x.shape[3] % d, 0, -x.shape[2] % d))
    n, c, h, w = x.shape
    parts = x.view(n, c, h // d, d, w // d, d).permute(3, 5, 0, 2, 4, 1)  # [d, d, n, h/d, w/d, c]
    return parts.reshape(d * d * n, h // d, w // d, c).permute(0, 3, 1, 2)


class _DepthwiseFn(torch.autograd.Function):
    """Depthwise conv ("same" padding, dilation d) at stride 1 or stride = d > 1, built from fast CPU kernels.

    Stride d: the conv reads only the phase-(0, 0) pixels, so it is an undilated conv on x[:, :, ::d, ::d].
    Kernel taps that can only read padding on a map smaller than the kernel's reach are cropped (they add zeros).
    Backward: grad_input is the conv of the output gradient with the flipped kernel; grad_weight see _weight_grad.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, dilation: int, stride: int) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.dilation = stride, dilation if stride == 1 else 1  # the dilation of the conv that runs
        source = x[:, :, ::stride, ::stride]
        ctx.crop = tuple(_reach(weight.shape[i], source.shape[i], ctx.dilation) for i in (2, 3))
        return _depthwise(source, weight[(..., *ctx.crop)], ctx.dilation)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None]:
        x, weight = ctx.saved_tensors
        s, d, crop = ctx.stride, ctx.dilation, (..., *ctx.crop)
        kernel = weight[crop]
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_source = _depthwise(grad, kernel.flip((2, 3)), d)
            if s == 1:
                grad_x = grad_source
            else:
                grad_x = torch.zeros_like(x)
                grad_x[:, :, ::s, ::s] = grad_source
        if ctx.needs_input_grad[1]:
            grad_w = torch.zeros_like(weight)
            grad_w[crop] = _weight_grad(grad, x[:, :, ::s, ::s], kernel, d)
        return grad_x, grad_w, None, None


def _reach(kernel: int, size: int, dilation: int) -> slice:
    """The kernel taps along one axis that can read a pixel of a map of `size` (the others read only padding)."""
    half = min(kernel // 2, (size - 1) // dilation)
    return slice(kernel // 2 - half, kernel // 2 + half + 1)


def _padding(weight: torch.Tensor, dilation: int) -> list[int]:
    return [dilation * (k // 2) for k in weight.shape[2:]]


def _depthwise(x: torch.Tensor, weight: torch.Tensor, dilation: int) -> torch.Tensor:
    return F.conv2d(x, weight, None, 1, _padding(weight, dilation), dilation, weight.shape[0])


def _weight_grad(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, d: int) -> torch.Tensor:
    """Weight gradient of the stride-1 "same" depthwise conv of x with dilation d.

    oneDNN's undilated kernel, over the polyphase components when d > 1 (a dilation-d conv reads them
    independently; its own dilated backward is 4-6x slower), except where those components are smaller than
    the kernel: there oneDNN is slow (7 ms for a 5x5 on [128, 64, 4, 4]) and a product-sum per tap wins.
    """
    (kh, kw), (h, w) = weight.shape[2:], x.shape[2:]
    if min(h, w) < d * max(kh, kw):
        ph, pw = _padding(weight, d)
        xp = F.pad(x, (pw, pw, ph, ph))
        taps = [(xp[:, :, i * d:i * d + h, j * d:j * d + w] * grad).sum((0, 2, 3))
                for i in range(kh) for j in range(kw)]
        return torch.stack(taps, 1).view_as(weight)
    if d > 1:
        grad, x = _space_to_batch(grad, d), _space_to_batch(x, d)
    return torch.ops.aten.convolution_backward(grad, x, weight, None, [1, 1], _padding(weight, 1), [1, 1], False,
                                               [0, 0], weight.shape[0], [False, True, False])[1]


class Depthwise(nn.Module):
    """Depthwise k x k conv with dilation d and "same" padding, at stride 1 or d.

    The weight lives in a plain nn.Conv2d (`conv`) that runs as-is without autograd or off the CPU (inference,
    FLOP counters), and where oneDNN is fast: undilated convs on maps at least as large as the kernel. Other
    training steps on the CPU (dilated convs, small maps) go through _DepthwiseFn, which computes the same
    thing 2-5x faster in float32 (under CPU autocast the conv runs as-is, in the autocast dtype).
    """

    def __init__(self, C: int, kernel: int, stride: int, dilation: int):
        super().__init__()
        self.conv = nn.Conv2d(C, C, kernel, stride=stride, padding=dilation * (kernel // 2), dilation=dilation,
                              groups=C, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.conv
        stride, dilation = conv.stride[0], conv.dilation[0]
        if _takes_fast_path(x, conv.kernel_size[0], stride, dilation):
            return _DepthwiseFn.apply(x, conv.weight, dilation, stride)
        return conv(x)


def depthwise_conv(x: torch.Tensor, weight: torch.Tensor, stride: int, dilation: int) -> torch.Tensor:
    """Depthwise's forward for any weight ([C, 1, k, k]) as a function (grouped_ops runs several edges' Depthwise
    layers as one with their weights concatenated); FLOP counters, which hook modules, do not see it."""
    kernel = weight.shape[2]
    if _takes_fast_path(x, kernel, stride, dilation):
        return _DepthwiseFn.apply(x, weight, dilation, stride)
    return F.conv2d(x, weight, None, stride, dilation * (kernel // 2), dilation, weight.shape[0])


def _takes_fast_path(x: torch.Tensor, kernel: int, stride: int, dilation: int) -> bool:
    """Whether a training step on the CPU runs _DepthwiseFn: dilated convs, and undilated ones on small maps."""
    fast = stride == 1 and min(x.shape[2:]) < kernel if dilation == 1 else stride in (1, dilation)
    return fast and torch.is_grad_enabled() and x.device.type == "cpu" and not torch.is_autocast_enabled("cpu")
