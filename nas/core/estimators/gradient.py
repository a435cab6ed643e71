"""Estimators read from the gradients of a network at initialisation: grad_norm, snip, grasp, fisher, synflow, zico.

Each follows Abdelfattah et al. 2021 ("Zero-Cost Proxies for Lightweight NAS", ICLR) in summing a per-weight
saliency over the weights of every Conv2d and Linear layer. Gradients are taken with torch.autograd.grad, so the
model's `.grad` fields are left alone; the model's weights are not changed.
"""
from __future__ import annotations

import copy
import math
from typing import Sequence

import torch
from torch import nn

from nas.core.estimators.common import Batch, each_batch, first_batch, layer_weights, logits, loss_on, weighted_layers


def grad_norm(model: nn.Module, batches: Sequence[Batch]) -> float:
    """grad_norm (Abdelfattah et al. 2021): the sum over Conv2d/Linear layers of the L2 norm of the gradient of the
    cross-entropy on the first batch with respect to the layer's weight."""
    x, y = first_batch(batches, model)
    weights = layer_weights(model)
    grads = torch.autograd.grad(loss_on(model, x, y), weights, allow_unused=True)
    return float(sum(g.norm() for g in grads if g is not None))


def snip(model: nn.Module, batches: Sequence[Batch]) -> float:
    """SNIP (Lee et al. 2019, "SNIP: Single-shot Network Pruning based on Connection Sensitivity"), summed as in
    Abdelfattah et al. 2021: sum over Conv2d/Linear weights of |theta * dL/dtheta|, L the first batch's
    cross-entropy."""
    x, y = first_batch(batches, model)
    weights = layer_weights(model)
    grads = torch.autograd.grad(loss_on(model, x, y), weights, allow_unused=True)
    return float(sum((w.detach() * g).abs().sum() for w, g in zip(weights, grads) if g is not None))


def grasp(model: nn.Module, batches: Sequence[Batch]) -> float:
    """GraSP (Wang et al. 2020, "Picking Winning Tickets Before Training by Preserving Gradient Flow"), summed as in
    Abdelfattah et al. 2021: sum over Conv2d/Linear weights of -theta * (H g), g the gradient of the first batch's
    cross-entropy and H its Hessian (a Hessian-vector product: the gradient of g . stop_gradient(g))."""
    x, y = first_batch(batches, model)
    weights = layer_weights(model)
    grads = torch.autograd.grad(loss_on(model, x, y), weights, create_graph=True, allow_unused=True)
    used = [(w, g) for w, g in zip(weights, grads) if g is not None]
    dot = sum((g * g.detach()).sum() for _, g in used)
    hg = torch.autograd.grad(dot, [w for w, _ in used], allow_unused=True)
    return float(sum((-w.detach() * h).sum() for (w, _), h in zip(used, hg) if h is not None))


def fisher(model: nn.Module, batches: Sequence[Batch]) -> float:
    """Fisher (Theis et al. 2018, "Faster gaze prediction with dense networks and Fisher pruning"; Turner et al.
    2020), summed as in Abdelfattah et al. 2021: for every output channel of every Conv2d/Linear layer,
    0.5 * mean over the batch of (sum over positions of activation * dL/dactivation)^2, summed over channels and
    layers; L the first batch's cross-entropy."""
    x, y = first_batch(batches, model)
    outputs: list[torch.Tensor] = []
    handles = [m.register_forward_hook(lambda _m, _i, out: outputs.append(out)) for m in weighted_layers(model)]
    try:
        loss = loss_on(model, x, y)
    finally:
        for handle in handles:
            handle.remove()
    grads = torch.autograd.grad(loss, outputs, allow_unused=True)
    total = 0.0
    for act, g in zip(outputs, grads):
        if g is None:
            continue
        per_channel = (act.detach() * g).flatten(2).sum(-1) if act.dim() > 2 else act.detach() * g
        total += float(0.5 * per_channel.pow(2).mean(0).sum())
    return total


def synflow(model: nn.Module, batches: Sequence[Batch]) -> float:
    """SynFlow (Tanaka et al. 2020, "Pruning neural networks without any data by iteratively conserving synaptic
    flow"), as Abdelfattah et al. 2021 score it: on a float64 copy whose parameters and buffers are made absolute,
    with BatchNorm at its initial statistics in eval mode (so it scales by ~1), R = sum of the logits of one
    all-ones input; the score is the sum over Conv2d/Linear weights of |theta * dR/dtheta|. Only the batch's
    image shape is used."""
    x, _ = first_batch(batches, model)
    probe = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for m in probe.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()
        for tensor in probe.state_dict().values():
            if tensor.is_floating_point():
                tensor.abs_()
    weights = layer_weights(probe)
    ones = torch.ones((1, *x.shape[1:]), dtype=torch.float64, device=x.device)
    grads = torch.autograd.grad(logits(probe(ones)).sum(), weights, allow_unused=True)
    return float(sum((w.detach() * g).abs().sum() for w, g in zip(weights, grads) if g is not None))


def zico(model: nn.Module, batches: Sequence[Batch]) -> float:
    """ZiCo (Li et al. 2023, "ZiCo: Zero-shot NAS via Inverse Coefficient of Variation on Gradients"): with the
    per-weight gradients of the cross-entropy on S >= 2 mini-batches (the given batches, or the first batch split
    in two halves as the authors' code does), the sum over Conv2d/Linear layers of
    log(sum over weights with non-zero std of mean|g| / std(g)), std over the S mini-batches (population std)."""
    parts = list(each_batch(batches, model))
    if len(parts) == 1:
        x, y = parts[0]
        half = max(1, len(x) // 2)
        parts = [(x[:half], y[:half]), (x[half:], y[half:])]
    weights = layer_weights(model)
    per_batch = [torch.autograd.grad(loss_on(model, x, y), weights, allow_unused=True) for x, y in parts]
    total = 0.0
    for layer in range(len(weights)):
        grads = [g[layer] for g in per_batch if g[layer] is not None]
        if len(grads) < 2:
            continue
        stacked = torch.stack(grads)
        std, mean_abs = stacked.std(0, unbiased=False), stacked.abs().mean(0)
        nonzero = std != 0
        ratio = float((mean_abs[nonzero] / std[nonzero]).sum())
        if ratio > 0:
            total += math.log(ratio)
    return total
