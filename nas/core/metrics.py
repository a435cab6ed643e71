"""Measurements shared by the whole project: accuracy, model size and cost, rank correlations, divergences."""
from __future__ import annotations

import copy
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def accuracy(logits: torch.Tensor, target: torch.Tensor, topk: Sequence[int] = (1,)) -> list[float]:
    """Top-k accuracy in percent for each k in `topk`: how often the target is among the k highest logits."""
    if logits.shape[0] == 0:
        raise ValueError("accuracy of an empty batch is undefined")
    top = logits.topk(max(topk), dim=1).indices
    hits = top.eq(target.view(-1, 1))
    return [100.0 * hits[:, :k].any(dim=1).float().mean().item() for k in topk]


def count_parameters(model: nn.Module, exclude: str | None = None) -> int:
    """Number of parameters, skipping those whose name contains `exclude` (e.g. "auxiliary")."""
    return sum(p.numel() for name, p in model.named_parameters() if exclude is None or exclude not in name)


def flops_millions(model: nn.Module, input_shape: Sequence[int]) -> float:
    """Multiply-accumulates (millions) of one forward pass on an input of `input_shape` (batch included).

    Counted by thop in eval mode on a deep copy, so the model keeps no hooks or counter buffers.
    """
    from thop import profile

    probe = copy.deepcopy(model).eval()
    first = next(probe.parameters(), None)
    x = torch.zeros(*input_shape, device=first.device if first is not None else None)
    macs, _ = profile(probe, inputs=(x,), verbose=False)
    return float(macs) / 1e6


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's tau-b rank correlation of two equally long sequences (nan when undefined, e.g. constant input)."""
    from scipy import stats  # imported here: scipy.stats costs seconds at start-up

    return float(stats.kendalltau(a, b).statistic)


def spearman_rho(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation of two equally long sequences (nan when undefined)."""
    from scipy import stats

    return float(stats.spearmanr(a, b).statistic)


def precision_at_top(scores: Sequence[float], truth: Sequence[float], fraction: float = 0.05) -> float:
    """The share of the `fraction` best items by score that are among the `fraction` best by the truth:
    |top-k by score & top-k by truth| / k, k = max(1, round(fraction * n)), ties broken by position."""
    k = max(1, round(fraction * len(truth)))
    top = set(np.argsort(-np.asarray(truth), kind="stable")[:k].tolist())
    return len(top & set(np.argsort(-np.asarray(scores), kind="stable")[:k].tolist())) / k


def ranking_correlations(scores: Sequence[float], truth: Sequence[float]) -> dict[str, float]:
    """How well `scores` rank against `truth`: Kendall tau, Spearman rho and precision at the top 5%."""
    return {"kendall_tau": kendall_tau(scores, truth), "spearman_rho": spearman_rho(scores, truth),
            "precision_top5pct": precision_at_top(scores, truth)}


def symmetrised_kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """Per-sample KL(p||q) + KL(q||p) of the softmax distributions of two [N, K] logit tensors.

    Computed from log-softmax as sum_k (p_k - q_k)(log p_k - log q_k), which is stable and >= 0 termwise.
    """
    log_p = F.log_softmax(p_logits, dim=-1)
    log_q = F.log_softmax(q_logits, dim=-1)
    return ((log_p.exp() - log_q.exp()) * (log_p - log_q)).sum(dim=-1)


def rank_of(scores: Sequence[float], index: int) -> int:
    """1-based rank of scores[index] among `scores`, higher is better: 1 + how many score strictly more (ties share
    the better rank)."""
    return 1 + sum(score > scores[index] for score in scores)
