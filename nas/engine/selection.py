"""Choosing the final architecture from a controller's scored samples, and the "SBO" check.

`search.select` (the engine's `search:` section):

- ``argmax``: the controller's most probable architecture (the default; every controller).
- ``best_sampled``: among the best distinct samples of the controller's last ones (REINFORCE: `reinforce.last_n`)
  by sampled reward, the one with the highest reward rescored on the whole architecture half (a sampled reward is
  one batch's: its maximum is biased upwards, the winner's curse).
- ``vote``: per decision, the majority among the `top_k` distinct highest-reward samples: per node the input pair,
  then per chosen edge the op, among the samples that chose that edge (ties go to the higher-reward sample;
  the normal cell's skip limit holds).
- ``probe``: short-trains the argmax and the `top_k` candidates from scratch through the eval trainer
  (`probe_epochs` epochs at `probe_C` channels and `probe_layers` cells, no auxiliary head, no drop path), on
  the search's training half, and keeps the best validation accuracy on the architecture half.

At every stage's end the max(10, `rescore`) best distinct samples (by sampled reward) and the argmax architecture
are rescored with the stage's final supernet on the whole architecture half (a controller with a training-free
reward rescores with its estimator instead: `Controller.rescore_accuracy`): the SBO check compares the mean
rescored reward of the top 10 with the argmax architecture's reward on the same data (as the seed did: samples
better than the argmax mean the policy has not converged on its best find). Sampled rewards never enter the
comparison: the best of many one-batch rewards would beat the argmax's whole-half reward by noise alone.
"""
from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from controllers.base import Controller, Evaluate
from nas.core.arch_types import NONE_OP, SKIP_OP, CellLayout, KeptOps, OpIndices
from nas.core.checkpoint import seed_everything
from nas.core.distributed import gather_objects, world
from nas.core.errors import UserError

RULES = ("argmax", "best_sampled", "vote", "probe")
SBO_TOP = 10
OFF = -1


@dataclass
class SelectConfig:
    """The `search:` section: how the final architecture is chosen."""

    select: str = "argmax"  # argmax | best_sampled | vote | probe
    top_k: int = 10  # candidates of vote and probe
    rescore: int = 10  # best distinct samples rescored on the whole architecture half at every stage's end (>= 10)
    probe_epochs: int = 10
    probe_C: int = 16
    probe_layers: int = 8
    probe_lr: float = 0.025

    def validate(self, scores_samples: bool, controller: str, trains: bool) -> None:
        """UserError for a bad value, a rule the controller cannot serve or a probe the space cannot train."""
        if self.select not in RULES:
            raise UserError(f"search.select is {self.select!r}; choose one of: {', '.join(RULES)}")
        if self.select != "argmax" and not scores_samples:
            raise UserError(f"search.select={self.select} chooses among scored samples, which the {controller} "
                            f"controller does not keep; use search.select=argmax or controller: reinforce")
        if self.select == "probe" and not trains:
            raise UserError("search.select=probe trains candidates from scratch, but this space has no eval network")
        if not isinstance(self.rescore, int) or isinstance(self.rescore, bool) or self.rescore < 0:
            raise UserError(f"search.rescore must be an integer >= 0, got {self.rescore!r}")
        for name in ("top_k", "probe_epochs", "probe_C", "probe_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UserError(f"search.{name} must be a positive integer, got {value!r}")
        if not self.probe_lr > 0:
            raise UserError(f"search.probe_lr must be > 0, got {self.probe_lr}")


def distinct_samples(controller: Controller, space: Any, kept_ops: KeptOps) -> list[dict[str, Any]]:
    """The controller's scored samples grouped by architecture, highest sampled reward first."""
    groups: dict[str, dict[str, Any]] = {}
    for path, reward in controller.scored_samples():
        arch = controller.path_architecture(space, kept_ops, path)
        key = space.format_arch(arch)
        group = groups.setdefault(key, {"genotype": key, "arch": arch, "path": path, "rewards": []})
        group["rewards"].append(reward)
    return sorted(groups.values(), key=lambda g: -max(g["rewards"]))


def rescore(arch: Any, controller: Controller, space: Any, kept_ops: KeptOps, evaluate: Evaluate) -> dict[str, Any]:
    """An architecture's accuracy (%) as the controller rescores it (the stage's supernet on the whole architecture
    half, or a training-free estimator: `rescored_by`), and its reward."""
    acc, source = controller.rescore_accuracy(space, kept_ops, arch, evaluate)
    reward, costs = controller.reward(arch, acc / 100)
    return {"val_acc": round(acc, 3), "val_reward": round(reward, 6), "rescored_by": source,
            **{k: round(v, 6) for k, v in costs.items()}}


def stage_candidates(controller: Controller, space: Any, kept_ops: KeptOps, argmax: Any, evaluate: Evaluate,
                     top_k: int, rescored: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The stage's best distinct samples (the first max(10, `rescored`) of them rescored) and the rescored argmax
    architecture; and the SBO check: the mean rescored reward of the top 10 against the argmax's."""
    rescored = max(rescored, SBO_TOP)
    candidates = []
    for i, group in enumerate(distinct_samples(controller, space, kept_ops)[:max(top_k, rescored)]):
        rewards = group["rewards"]
        candidates.append({"genotype": group["genotype"], "record": space.arch_to_record(group["arch"]),
                           "sampled_reward_max": round(max(rewards), 6),
                           "sampled_reward_mean": round(sum(rewards) / len(rewards), 6), "times_sampled": len(rewards),
                           **(rescore(group["arch"], controller, space, kept_ops, evaluate) if i < rescored else {})})
    argmax_entry = {"genotype": space.format_arch(argmax), "record": space.arch_to_record(argmax),
                    **rescore(argmax, controller, space, kept_ops, evaluate)}
    top = candidates[:SBO_TOP]
    sbo = {"top10_reward": round(sum(c["val_reward"] for c in top) / len(top), 6), "scored_by": "val_reward",
           "samples": len(top), "argmax_reward": argmax_entry["val_reward"]}
    return candidates, {"argmax": argmax_entry, "sbo": sbo}


def _majority(votes: Sequence[Any]) -> Any:
    """The most frequent vote; ties go to the one cast first (the higher-reward sample)."""
    counts = Counter(votes)
    return max(counts, key=lambda v: (counts[v], -votes.index(v)))


def vote(paths: Sequence[OpIndices], layouts: dict[str, CellLayout] | None) -> OpIndices:
    """Per-decision majority among paths (best first): per node the input pair, then per chosen edge the op among
    the paths that chose that edge, with each cell's skip limit; without layouts, per edge the op."""
    result = {}
    for group, first in paths[0].items():
        rows = [p[group].tolist() for p in paths]
        if layouts is None or OFF not in first.tolist():
            result[group] = torch.tensor([_majority([r[e] for r in rows]) for e in range(len(first))])
            continue
        layout = layouts[group]
        row, skips = [OFF] * len(first), 0
        for edges in layout.node_edges:
            pair = _majority([tuple(e for e in edges if r[e] != OFF) for r in rows])
            for e in pair:
                ranked = Counter(r[e] for r in rows if r[e] != OFF).most_common()
                allowed = [k for k, _ in ranked if layout.max_skip is None or skips < layout.max_skip
                           or layout.ops[e][k] != SKIP_OP]
                fallback = [k for k, name in enumerate(layout.ops[e]) if name not in (NONE_OP, SKIP_OP)]
                row[e] = (allowed or fallback)[0]
                skips += layout.ops[e][row[e]] == SKIP_OP
        result[group] = torch.tensor(row)
    return result


class LogitsAndAux(nn.Module):
    """A network as the eval trainer takes it: forward returns (logits, auxiliary logits or None), whether the
    network returns that pair (DARTS) or its logits alone (NB201)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        out = self.net(x)
        return out if isinstance(out, tuple) else (out, None)


def probe_accuracy(space: Any, arch: Any, data: Any, train_set: Dataset, val_set: Dataset, batch_size: int,
                   cfg: SelectConfig, device: torch.device, seed: int) -> float:
    """Validation top-1 (%) of `arch` trained from scratch for cfg.probe_epochs with the eval trainer's code, on
    this process alone; the global RNGs (torch, Python's, NumPy's) are left as they were."""
    from nas.engine.trainer import DistInfo, EvalConfig, Trainer  # the eval trainer, only when probing

    config = EvalConfig()
    config.train.epochs, config.train.lr = cfg.probe_epochs, cfg.probe_lr
    config.model.auxiliary, config.model.drop_path_prob = False, 0.0
    generator = torch.Generator()
    train = DataLoader(train_set, batch_size=batch_size, shuffle=True, generator=generator)
    val = DataLoader(val_set, batch_size=2 * batch_size)
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            seed_everything(seed)
            net = LogitsAndAux(space.eval_network(arch, data, C=cfg.probe_C, layers=cfg.probe_layers,
                                                  auxiliary=False))
            trainer = Trainer(config, net, device, DistInfo(0, 1, 0))
            for epoch in range(cfg.probe_epochs):
                generator.manual_seed(seed + epoch)
                trainer.train_epoch(train, epoch, "(probe training keeps no checkpoint)")
                trainer.scheduler.step()
            return trainer.evaluate(val, data.num_classes)["top1"]
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def probe_pool(pool: Sequence[dict[str, Any]], probe: Callable[[dict[str, Any]], float]) -> list[float]:
    """probe() of every candidate, each run once: under torchrun candidate i on rank i mod N, the results gathered,
    so every rank returns the same list without repeating another rank's training."""
    dist = world()
    mine = {i: probe(candidate) for i, candidate in enumerate(pool) if i % dist.world_size == dist.rank}
    results: dict[int, float] = {}
    for part in gather_objects(mine):
        results.update(part)
    return [results[i] for i in range(len(pool))]


def final_choice(entry: dict[str, Any], cfg: SelectConfig, probe: Callable[[dict[str, Any]], float]
                 ) -> dict[str, Any]:
    """The selection record of the final stage's entry under cfg.select: every candidate with its scores, the
    argmax, and `picked` (the output: its genotype, record and the rule that picked it). `probe` trains a
    candidate (given its entry) and returns its validation accuracy; under torchrun the ranks split the candidates
    (:func:`probe_pool`) and pick alike."""
    argmax = entry.get("argmax_rescored") or {"genotype": entry["genotype_str"], "record": entry["genotype"]}
    candidates = entry.get("candidates", [])
    selection: dict[str, Any] = {"rule": cfg.select, "top_k": cfg.top_k, "argmax": argmax, "candidates": candidates}
    picked, source = argmax, "argmax"
    if cfg.select != "argmax" and not candidates:
        source = "argmax (no scored samples in the final stage)"
    elif cfg.select == "best_sampled":
        rescored = [c for c in candidates if "val_reward" in c]
        picked = max(rescored, key=lambda c: c["val_reward"])  # ties: the higher sampled reward (listed first)
        source = f"sample with the highest rescored reward among the top {len(rescored)} by sampled reward"
    elif cfg.select == "vote":
        picked, source = entry["vote"], f"per-decision majority of the top {cfg.top_k} samples"
        selection["vote"] = entry["vote"]
    elif cfg.select == "probe":
        top = candidates[:cfg.top_k]
        pool = [argmax, *(c for c in top if c["genotype"] != argmax["genotype"])]  # each architecture trained once
        for candidate, acc in zip(pool, probe_pool(pool, probe)):
            candidate["probe_acc"] = round(acc, 3)
        for candidate in top:  # a sample that is the argmax was trained as the argmax: the record says so
            candidate.setdefault("probe_acc", argmax["probe_acc"])
        best = max(range(len(pool)), key=lambda i: (pool[i]["probe_acc"], -i))
        picked = pool[best]
        source = "argmax" if best == 0 else f"sample {top.index(picked) + 1} (of the top {cfg.top_k} by sampled reward)"
        source += f", best probe accuracy {picked['probe_acc']:.2f}%"
    selection["picked"] = {"genotype": picked["genotype"], "record": picked["record"], "by": cfg.select,
                           "source": source}
    return selection
