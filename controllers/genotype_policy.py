"""A policy whose sample is a cell genotype (NASNet / ENAS style), with exact log-probabilities.

Per cell type and node i, in node order, the policy takes three decisions:

1. the input pair: one categorical over the C(n_i, 2) unordered pairs of the node's n_i inputs, with one
   logit per pair (the per-node input logits);
2. for each chosen input, lower index first, one op among the kept ops of that edge: a softmax over the edge's
   op logits (the same logits the gradient controller and op dropping use) with `none` masked out, and
   `skip_connect` masked out once the cell holds `max_skip` skips.

A categorical over pairs rather than two draws without replacement: its probability, entropy and mode are
exact in closed form, and the value of a pair need not factor into two per-input strengths (the inputs of a
node interact). Masking skips while sampling is part of the policy, so every sample respects `max_skip`, and
pi(genotype) is the product of the masked conditionals along the decisions. Each genotype is one decision
sequence, so the most probable genotype is the most probable sequence, found exactly by dynamic programming
over the skips used so far (:meth:`GenotypePolicy.mode`).

A genotype travels as a path: group -> LongTensor[E] holding the kept-op index on the 2 chosen edges of every
node and -1 on every other edge (off), which the supernet runs as is.
"""
from __future__ import annotations

import math
from itertools import combinations
from typing import Callable, NamedTuple

import torch

from controllers.sampling import BehaviourPolicy, log_softmax
from nas.core.arch_types import NONE_OP, SKIP_OP, CellLayout, OpIndices
from nas.core.errors import UserError

OFF = -1  # path entry of an edge that the genotype does not use


class Decisions(NamedTuple):
    """The decisions of a batch of genotypes in one group: what was chosen under which mask.

    `pair_*`: [n, nodes, max pairs]; `op_*`: [n, 2 * nodes, K]; `op_edge`: [n, 2 * nodes] edge of each op choice.
    """

    pair_choice: torch.Tensor
    pair_mask: torch.Tensor
    op_edge: torch.Tensor
    op_choice: torch.Tensor
    op_mask: torch.Tensor


class _Cell:
    """Static facts of one group: pairs per node, usable ops per edge, which edges can only skip."""

    def __init__(self, group: str, layout: CellLayout):
        self.group, self.layout = group, layout
        self.pairs = [list(combinations(range(len(edges)), 2)) for edges in layout.node_edges]
        self.max_pairs = max(len(p) for p in self.pairs)
        self.n_ops = len(layout.ops[0])
        self.usable = [[name != NONE_OP for name in names] for names in layout.ops]
        self.skip = [names.index(SKIP_OP) if SKIP_OP in names else None for names in layout.ops]
        self.only_skip = [sum(u) == 1 and s is not None for u, s in zip(self.usable, self.skip)]
        for i, edges in enumerate(layout.node_edges):
            if sum(any(self.usable[e]) for e in edges) < 2:
                raise UserError(f"{group} node {i} has fewer than two inputs with a non-none kept op; a genotype "
                                f"needs two (keep a non-none op on every edge)")

    def budget(self, skips: int) -> float:
        return math.inf if self.layout.max_skip is None else self.layout.max_skip - skips

    def pair_mask(self, node: int, skips: int) -> list[bool]:
        """Pairs of two usable inputs whose forced skips fit the remaining skip budget, padded with False."""
        edges, budget = self.layout.node_edges[node], self.budget(skips)
        mask = [any(self.usable[edges[a]]) and any(self.usable[edges[b]])
                and self.only_skip[edges[a]] + self.only_skip[edges[b]] <= budget for a, b in self.pairs[node]]
        return mask + [False] * (self.max_pairs - len(mask))

    def op_mask(self, edge: int, skips: int, reserved: int) -> list[bool]:
        """Non-none ops of the edge; skip only while the budget, less `reserved` forced skips, allows one."""
        mask = list(self.usable[edge])
        if self.skip[edge] is not None and self.budget(skips) - reserved < 1:
            mask[self.skip[edge]] = False
        return mask


Chooser = Callable[[tuple, torch.Tensor, list[bool]], int]  # (("pair", node) or ("op", edge), logits, mask) -> index


class GenotypePolicy:
    """Samples, scores and decodes genotypes from op logits [E, K] and pair logits [sum of pairs] per group."""

    def __init__(self, layouts: dict[str, CellLayout]):
        self.cells = {group: _Cell(group, layout) for group, layout in layouts.items()}

    def decisions_per_sample(self) -> int:
        """Decisions of one genotype: per node one pair and two ops."""
        return sum(3 * len(cell.pairs) for cell in self.cells.values())

    def pair_shapes(self) -> dict[str, int]:
        """Number of pair logits per group."""
        return {group: sum(len(p) for p in cell.pairs) for group, cell in self.cells.items()}

    def _pair_rows(self, cell: _Cell, pair_logits: torch.Tensor) -> list[torch.Tensor]:
        rows, start = [], 0
        for pairs in cell.pairs:
            row = pair_logits[start:start + len(pairs)]
            rows.append(torch.cat([row, row.new_full((cell.max_pairs - len(pairs),), -math.inf)]))
            start += len(pairs)
        return rows

    # ----- walking the decisions of one genotype -----
    def _walk(self, cell: _Cell, op_logits: torch.Tensor, pair_rows: list[torch.Tensor], choose: Chooser,
              record: list | None = None) -> torch.Tensor:
        """Take every decision of one group in order with `choose`; returns the path row (-1 = off edge)."""
        row = torch.full((len(cell.layout.ops),), OFF, dtype=torch.long)
        skips = 0
        for node, edges in enumerate(cell.layout.node_edges):
            pair_mask = cell.pair_mask(node, skips)
            p = choose(("pair", node), pair_rows[node], pair_mask)
            a, b = (edges[j] for j in cell.pairs[node][p])
            if record is not None:
                record.append(("pair", p, pair_mask))
            for e, later in ((a, b), (b, None)):
                mask = cell.op_mask(e, skips, int(later is not None and cell.only_skip[later]))
                k = choose(("op", e), op_logits[e], mask)
                if record is not None:
                    record.append(("op", e, k, mask))
                skips += k == cell.skip[e]
                row[e] = k
        return row

    def sample(self, op_logits: dict[str, torch.Tensor], pair_logits: dict[str, torch.Tensor],
               behaviour: BehaviourPolicy, n: int, generator: torch.Generator | None = None) -> list[OpIndices]:
        """n genotypes from the behaviour policy applied to every decision's conditional pi.

        One uniform number per decision (a single draw from `generator`) picks the option by inverse CDF; mu is
        computed once per distinct (decision, mask) of the call, so sampling costs microseconds per decision.
        """
        uniforms = iter(torch.rand(n * self.decisions_per_sample(), generator=generator, dtype=torch.float64).tolist())
        cache: dict[tuple, list[float]] = {}

        def drawer(group: str) -> Chooser:
            def draw(key: tuple, logits: torch.Tensor, mask: list[bool]) -> int:
                key = (group, *key, *mask)
                if key not in cache:
                    cache[key] = behaviour.edge_probs(logits[None].double(), torch.tensor([mask]))[0].tolist()
                u, options = next(uniforms), [k for k, allowed in enumerate(mask) if allowed]
                for k in options:
                    u -= cache[key][k]
                    if u < 0:
                        return k
                return options[-1]  # u fell in the rounding slack at the top

            return draw

        rows = {group: self._pair_rows(cell, pair_logits[group].detach()) for group, cell in self.cells.items()}
        draws = {group: drawer(group) for group in self.cells}
        return [{group: self._walk(cell, op_logits[group].detach(), rows[group], draws[group])
                 for group, cell in self.cells.items()} for _ in range(n)]

    def decisions(self, paths: list[OpIndices]) -> dict[str, Decisions]:
        """The decisions (and the masks they were taken under) that produced each path, per group."""

        def replay(cell: _Cell, path_row: torch.Tensor) -> Chooser:
            chosen: list[int] = []
            for node, edges in enumerate(cell.layout.node_edges):
                on = [j for j, e in enumerate(edges) if path_row[e] != OFF]
                if len(on) != 2:
                    raise ValueError(f"{cell.group} node {node} of a genotype path must use 2 inputs, got {len(on)}")
                chosen += [cell.pairs[node].index(tuple(on)), *(int(path_row[edges[j]]) for j in on)]
            return lambda kind, logits, mask: chosen.pop(0)

        result = {}
        for group, cell in self.cells.items():
            records = []
            dummy_rows = [torch.zeros(cell.max_pairs)] * len(cell.pairs)
            for path in paths:
                record: list = []
                self._walk(cell, torch.zeros(len(cell.layout.ops), cell.n_ops), dummy_rows, replay(cell, path[group]),
                           record)
                records.append(record)
            result[group] = Decisions(
                pair_choice=torch.tensor([[r[1] for r in rec if r[0] == "pair"] for rec in records]),
                pair_mask=torch.tensor([[r[2] for r in rec if r[0] == "pair"] for rec in records]),
                op_edge=torch.tensor([[r[1] for r in rec if r[0] == "op"] for rec in records]),
                op_choice=torch.tensor([[r[2] for r in rec if r[0] == "op"] for rec in records]),
                op_mask=torch.tensor([[r[3] for r in rec if r[0] == "op"] for rec in records]))
        return result

    # ----- probabilities of decisions -----
    def decision_log_probs(self, op_logits: dict[str, torch.Tensor], pair_logits: dict[str, torch.Tensor],
                           decisions: dict[str, Decisions],
                           behaviour: BehaviourPolicy | None = None) -> torch.Tensor:
        """log pi (or log mu with `behaviour`) of every decision: [n, D], D = 3 * nodes summed over groups.

        Differentiable with respect to the logits (pi only): the policy gradient runs through it.
        """
        columns = []
        for group, cell in self.cells.items():
            d = decisions[group]
            pair_table = torch.stack(self._pair_rows(cell, pair_logits[group]))  # [nodes, max pairs]
            for logits, mask, choice in ((pair_table.expand(len(d.pair_mask), -1, -1), d.pair_mask, d.pair_choice),
                                         (op_logits[group][d.op_edge], d.op_mask, d.op_choice)):
                if behaviour is None:
                    log_p = log_softmax(logits.masked_fill(~mask, -math.inf))
                else:
                    shape = logits.shape
                    log_p = behaviour.edge_probs(logits.detach().reshape(-1, shape[-1]),
                                                 mask.reshape(-1, shape[-1])).reshape(shape).log()
                columns.append(log_p.gather(-1, choice[..., None]).squeeze(-1))
        return torch.cat(columns, dim=1)

    def entropy(self, op_logits: dict[str, torch.Tensor], pair_logits: dict[str, torch.Tensor]) -> torch.Tensor:
        """Entropy (nats) of every factor: each node's pair categorical and each edge's op softmax over its
        non-none ops; [factors], differentiable. Their sum is the entropy of the policy without the skip mask."""
        values = []
        for group, cell in self.cells.items():
            for logits, mask in ((torch.stack(self._pair_rows(cell, pair_logits[group])), None),
                                 (op_logits[group], torch.tensor(cell.usable))):
                if mask is not None:
                    logits = logits.masked_fill(~mask, -math.inf)
                log_p = log_softmax(logits)
                values.append(-(log_p.exp() * log_p.nan_to_num(neginf=0.0)).sum(dim=-1))
        return torch.cat(values)

    def op_probs(self, op_logits: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per edge, the op softmax over non-none ops (`none` gets 0: a genotype never samples it)."""
        return {group: log_softmax(op_logits[group].detach().masked_fill(~torch.tensor(cell.usable), -math.inf)).exp()
                for group, cell in self.cells.items()}

    # ----- the most (or least) probable genotype -----
    def mode(self, op_logits: dict[str, torch.Tensor], pair_logits: dict[str, torch.Tensor],
             max_skip: int | None = None, least: bool = False) -> OpIndices | None:
        """The most probable genotype under pi (`least`: the least probable one), exactly, with the normal cell's
        skip limit replaced by `max_skip` when given; None when no genotype fits that limit."""
        path = {}
        for group, cell in self.cells.items():
            if max_skip is not None and cell.layout.max_skip is not None:
                cell = _Cell(group, cell.layout._replace(max_skip=max_skip))
            row = self._mode_row(cell, op_logits[group].detach().double().tolist(),
                                 [r.tolist() for r in self._pair_rows(cell, pair_logits[group].detach().double())],
                                 -1.0 if least else 1.0)
            if row is None:
                return None
            path[group] = row
        return path

    @staticmethod
    def _mode_row(cell: _Cell, op_logits: list[list[float]], pair_rows: list[list[float]],
                  sign: float) -> torch.Tensor | None:
        """Dynamic programming over nodes with the number of skips used so far as the state."""
        best: dict[int, tuple[float, list[tuple[int, int]]]] = {0: (0.0, [])}  # skips -> (score, [(edge, op)])
        for node, edges in enumerate(cell.layout.node_edges):
            nxt: dict[int, tuple[float, list[tuple[int, int]]]] = {}
            for skips, (score, chosen) in best.items():
                pair_lp = _log_softmax_list(pair_rows[node], cell.pair_mask(node, skips))
                for p, (ja, jb) in enumerate(cell.pairs[node]):
                    if pair_lp[p] == -math.inf:
                        continue
                    a, b = edges[ja], edges[jb]
                    lp_a = _log_softmax_list(op_logits[a], cell.op_mask(a, skips, int(cell.only_skip[b])))
                    for ka, la in enumerate(lp_a):
                        if la == -math.inf:
                            continue
                        used = skips + (ka == cell.skip[a])
                        lp_b = _log_softmax_list(op_logits[b], cell.op_mask(b, used, 0))
                        for kb, lb in enumerate(lp_b):
                            if lb == -math.inf:
                                continue
                            total = score + sign * (pair_lp[p] + la + lb)
                            state = used + (kb == cell.skip[b])
                            if state not in nxt or total > nxt[state][0]:
                                nxt[state] = (total, [*chosen, (a, ka), (b, kb)])
            best = nxt
        if not best:
            return None
        row = torch.full((len(cell.layout.ops),), OFF, dtype=torch.long)
        for e, k in max(best.values(), key=lambda v: v[0])[1]:
            row[e] = k
        return row


def _log_softmax_list(values: list[float], mask: list[bool]) -> list[float]:
    kept = [v for v, m in zip(values, mask) if m]
    if not kept:
        return [-math.inf] * len(values)
    top = max(kept)
    norm = top + math.log(sum(math.exp(v - top) for v in kept))
    return [v - norm if m else -math.inf for v, m in zip(values, mask)]
