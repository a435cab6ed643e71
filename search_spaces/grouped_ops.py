"""One call for the same op of several edges: `run_grouped(ops, x)` equals concatenating `ops[i](x_i)` over the
equal channel blocks x_i of x, but runs each layer once for all the blocks (convs grouped with the edges' weights
side by side, batch norm with per-channel statistics, pools and ReLUs on the whole tensor).

PC-DARTS's partial edges run their ops on C/K channels, and on a CPU a pool, a depthwise conv or a batch norm on 4
channels costs about as much as on 16 (the kernels vectorise over channels, and channels_last leaves the vector
lanes empty), so a supernet node runs the ops of its edges together. Layers without a grouped form (for example
FactorizedReduce's pair of strided convs) run block by block.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from search_spaces.depthwise import Depthwise, depthwise_conv

Op = Callable[[torch.Tensor], torch.Tensor]


def run_grouped(ops: Sequence[Op], x: torch.Tensor) -> torch.Tensor:
    """cat([ops[i](block_i) for i]) over the len(ops) equal channel blocks of x, every op of the same type."""
    first = ops[0]
    if len(ops) == 1:
        return first(x)
    if not all(type(op) is type(first) for op in ops):
        raise ValueError(f"run_grouped needs ops of one type, got {sorted({type(op).__name__ for op in ops})}")
    if isinstance(first, nn.Sequential) and all(len(op) == len(first) for op in ops):
        for layers in zip(*ops):
            x = run_grouped(layers, x)
        return x
    if isinstance(first, (nn.Identity, nn.MaxPool2d, nn.AvgPool2d)):
        return first(x)  # per channel, nothing learned
    if isinstance(first, nn.ReLU):
        return F.relu(x, inplace=first.inplace)
    if isinstance(first, Depthwise):
        conv = first.conv
        return depthwise_conv(x, torch.cat([op.conv.weight for op in ops]), conv.stride[0], conv.dilation[0])
    if isinstance(first, nn.Conv2d) and first.bias is None and first.padding_mode == "zeros":
        weight = torch.cat([op.weight for op in ops])
        return F.conv2d(x, weight, None, first.stride, first.padding, first.dilation, first.groups * len(ops))
    if isinstance(first, nn.BatchNorm2d):
        return grouped_batch_norm(ops, x)
    return torch.cat([op(block) for op, block in zip(ops, x.chunk(len(ops), dim=1))], dim=1)


def grouped_batch_norm(norms: Sequence[nn.BatchNorm2d], x: torch.Tensor) -> torch.Tensor:
    """The norms on their channel blocks of x as one batch norm; in training, each norm's running statistics and
    batch count update as its own forward would update them."""
    first = norms[0]
    affine = first.affine
    weight = torch.cat([n.weight for n in norms]) if affine else None
    bias = torch.cat([n.bias for n in norms]) if affine else None
    if not first.track_running_stats:
        return F.batch_norm(x, None, None, weight, bias, True, 0.0, first.eps)
    mean = torch.cat([n.running_mean for n in norms])
    var = torch.cat([n.running_var for n in norms])
    if not first.training:
        return F.batch_norm(x, mean, var, weight, bias, False, 0.0, first.eps)
    for norm in norms:
        norm.num_batches_tracked.add_(1)
    momentum = first.momentum if first.momentum is not None else 1.0 / float(first.num_batches_tracked)
    y = F.batch_norm(x, mean, var, weight, bias, True, momentum, first.eps)
    with torch.no_grad():
        for norm, block_mean, block_var in zip(norms, mean.chunk(len(norms)), var.chunk(len(norms))):
            norm.running_mean.copy_(block_mean)
            norm.running_var.copy_(block_var)
    return y
