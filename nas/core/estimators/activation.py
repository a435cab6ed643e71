"""Estimators read from a network's activations at initialisation: nwot (NASWOT), jacob_cov, zen."""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nas.core.estimators.common import Batch, first_batch, logits

ZEN_MIXUP = 0.01  # Zen-NAS's perturbation scale alpha
JACOB_K = 1e-5  # jacob_cov's eigenvalue offset


def naswot_logdet(codes: torch.Tensor) -> float:
    """log|det K| of the NASWOT kernel of binary codes [N, units]: K[i, j] = the number of units where codes i and j
    agree (units minus their Hamming distance); -inf when K is singular."""
    return kernel_logdet(agreement_kernel(codes))


def agreement_kernel(codes: torch.Tensor) -> torch.Tensor:
    """K[i, j] = c_i . c_j + (1 - c_i) . (1 - c_j) of binary codes [N, units], from one float32 product (exact
    while a layer has fewer than 2**24 units per sample)."""
    c = codes.float()
    ones = c.sum(1)
    return (2 * (c @ c.T) - ones[:, None] - ones[None, :] + c.shape[1]).double()


def kernel_logdet(kernel: torch.Tensor) -> float:
    """log|det kernel|, -inf when it is singular."""
    sign, logabs = torch.linalg.slogdet(kernel)
    return float(logabs) if float(sign) != 0 else -math.inf


@contextmanager
def relu_codes(record: Callable[[torch.Tensor], None]) -> Iterator[None]:
    """While active, every torch.nn.functional.relu call (nn.ReLU modules and functional ReLUs alike) passes the
    binary code of its input (input > 0), flattened per sample, to `record`."""
    real = F.relu

    def recording(x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        record((x.detach() > 0).flatten(1))
        return real(x, inplace=inplace)

    F.relu = recording
    try:
        yield
    finally:
        F.relu = real


@torch.no_grad()
def nwot(model: nn.Module, batches: Sequence[Batch]) -> float:
    """NASWOT (Mellor et al. 2021, "Neural Architecture Search without Training", ICML): log|det K| of the kernel of
    the binary ReLU codes of the first batch's images (every ReLU's input > 0, all ReLUs together):
    K[i, j] = units - Hamming(c_i, c_j), accumulated ReLU by ReLU."""
    x, _ = first_batch(batches, model)
    kernels: list[torch.Tensor] = []
    with relu_codes(lambda code: kernels.append(agreement_kernel(code))):
        model(x)
    return kernel_logdet(torch.stack(kernels).sum(0)) if kernels else -math.inf


def jacob_cov(model: nn.Module, batches: Sequence[Batch]) -> float:
    """jacob_cov (Mellor et al. 2020, arXiv v1 of "Neural Architecture Search without Training"): with J the
    per-image Jacobians of the summed logits with respect to the first batch's images and v the eigenvalues of
    their correlation matrix, -sum(log(v + k) + 1 / (v + k)), k = 1e-5; -inf when a Jacobian is constant or
    the logits do not depend on the images."""
    x, _ = first_batch(batches, model)
    x = x.clone().requires_grad_(True)
    (jac,) = torch.autograd.grad(logits(model(x)).sum(), x, allow_unused=True)
    if jac is None:  # the logits do not depend on the input
        return -math.inf
    corr = torch.corrcoef(jac.flatten(1).double())
    if not torch.isfinite(corr).all():
        return -math.inf
    v = torch.linalg.eigvalsh(corr)
    return float(-(torch.log(v + JACOB_K) + 1.0 / (v + JACOB_K)).sum())


def _pre_pool_module(model: nn.Module) -> nn.Module:
    """The module whose input Zen-NAS reads: the last AdaptiveAvgPool2d (the features before global pooling), else
    the last Linear (the pooled features, for networks that pool functionally)."""
    for kind in (nn.AdaptiveAvgPool2d, nn.Linear):
        found = [m for m in model.modules() if isinstance(m, kind)]
        if found:
            return found[-1]
    raise ValueError("zen needs a network with an AdaptiveAvgPool2d or a Linear layer")


@torch.no_grad()
def zen(model: nn.Module, batches: Sequence[Batch]) -> float:
    """Zen-score (Lin et al. 2021, "Zen-NAS: A Zero-Shot NAS for High-Performance Image Recognition", ICCV), in
    train mode: with x Gaussian of the batch's shape and x' = x + 0.01 * Gaussian, log of the batch mean of
    sum |f(x) - f(x')| over the pre-pooling features f, plus, over every BatchNorm2d, log sqrt(mean over channels of
    its input's batch variance on x). The Gaussians come from torch's global generator. The network keeps its
    initialisation (the paper re-initialises it Gaussian)."""
    x, _ = first_batch(batches, model)
    features: list[torch.Tensor] = []
    variances: list[torch.Tensor] = []
    target = _pre_pool_module(model)
    handles = [target.register_forward_pre_hook(lambda _m, inp: features.append(inp[0]))]
    handles += [m.register_forward_pre_hook(lambda _m, inp: variances.append(inp[0].var(dim=(0, 2, 3)).mean()))
                for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    gauss = torch.randn(x.shape, dtype=x.dtype, device=x.device)
    mixed = gauss + ZEN_MIXUP * torch.randn(x.shape, dtype=x.dtype, device=x.device)
    try:
        model(gauss)
        bn_vars = list(variances)
        model(mixed)
    finally:
        for handle in handles:
            handle.remove()
    delta = float((features[0] - features[1]).abs().flatten(1).sum(1).mean())
    if delta <= 0:
        return -math.inf
    return math.log(delta) + sum(0.5 * math.log(float(v)) for v in bn_vars if float(v) > 0)
