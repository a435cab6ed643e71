"""Dominance diagnostics ("rich get richer"): per cell, each op's share of the edges it is the most probable op
on, the entropy of that share, and per edge the commitment step (the first step after which its argmax never
changes again).

The tracker's state is plain data kept in the search's progress, so `--resume` continues it exactly.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from nas.core.arch_types import KeptOps

WARN_SHARE = 0.8  # one op the argmax of at least this share of a cell's edges: warn once per stage and cell


def argmax_ops(probs: dict[str, torch.Tensor], kept_ops: KeptOps) -> dict[str, list[str]]:
    """Per group, the name of every edge's most probable op."""
    return {group: [ops[k] for ops, k in zip(kept_ops[group], p.argmax(dim=-1).tolist())]
            for group, p in probs.items()}


def op_shares(names: list[str]) -> dict[str, float]:
    """Each op's share of the edges it is the argmax of, largest first."""
    counts: dict[str, int] = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    return {op: n / len(names) for op, n in sorted(counts.items(), key=lambda kv: -kv[1])}


def share_entropy(shares: dict[str, float]) -> float:
    """Entropy (nats) of the op shares: 0 when one op holds every edge."""
    return -sum(s * math.log(s) for s in shares.values() if s > 0)


class DominanceTracker:
    """Follows the argmax op of every edge through a stage, at every logged step."""

    def __init__(self, state: dict[str, Any] | None = None):
        self.state: dict[str, Any] = state if state else {"argmax": {}, "since": {}, "warned": []}

    def update(self, probs: dict[str, torch.Tensor], kept_ops: KeptOps, step: int) -> dict[str, dict[str, Any]]:
        """Record the argmax ops at `step`; returns per group the shares, their entropy and the top op."""
        summary = {}
        for group, names in argmax_ops(probs, kept_ops).items():
            last = self.state["argmax"].get(group)
            since = self.state["since"].setdefault(group, [step] * len(names))
            for e, name in enumerate(names):
                if last is not None and last[e] != name:
                    since[e] = step
            self.state["argmax"][group] = names
            shares = op_shares(names)
            top = next(iter(shares))
            summary[group] = {"share": shares, "entropy": share_entropy(shares), "top_op": top,
                              "top_share": shares[top], "argmax": names}
        return summary

    def commit_steps(self) -> dict[str, list[int]]:
        """Per group and edge, the step since which the edge's argmax has not changed."""
        return {group: list(steps) for group, steps in self.state["since"].items()}

    def new_warnings(self, summary: dict[str, dict[str, Any]]) -> list[str]:
        """The groups whose top op reached WARN_SHARE for the first time this stage."""
        groups = [g for g, s in summary.items() if s["top_share"] >= WARN_SHARE and g not in self.state["warned"]]
        self.state["warned"] += groups
        return groups


def warning_line(stage: int, group: str, summary: dict[str, Any], controller: str) -> str:
    """The one-line warning: which op took how many edges, and the usual counters (docs/monitoring.md)."""
    n = len(summary["argmax"])
    k = round(summary["top_share"] * n)
    return (f"stage {stage} {group} cell: {summary['top_op']} is the most probable op on {k}/{n} edges "
            f"({100 * summary['top_share']:.0f}%), one op taking the cell (rich get richer); the usual counters: a "
            f"longer warm-up (stages.warmup_epochs), a lower architecture lr ({controller}.lr) or more exploration "
            f"(reinforce.epsilon)")
