"""A policy whose sample is a cell genotype (NASNet / ENAS style), with exact log-probabilities.

Per cell type and node i, in node order, the policy takes three decisions:

1. the input pair: one categorical over the C(n_i, 2) unordered pairs of the node's n_i inputs, with one
   logit per pair (the per-node input logits);
2. for each chosen input, lower index first, one op among the kept ops of that edge: a softmax over the edge's
   op logits (the same logits the gradient controller and op dropping use) with `none` masked out, and
   `skip_connect` masked out once a further skip would leave too few for the skips still forced (an edge whose
   only non-none op is skip_connect forces one) within `max_skip`.

A categorical over pairs rather than two draws without replacement: its probability, entropy and mode are
exact in closed form, and the value of a pair need not factor into two per-input strengths (the inputs of a
node interact). Masking skips while sampling is part of the policy, so every sample respects `max_skip` and no
draw reaches a node with no allowed choice (a cell whose forced skips exceed `max_skip` is refused when the
policy is built), and pi(genotype) is the product of the masked conditionals along the decisions. Each genotype
is one decision sequence, so the most probable genotype is the most probable sequence, found exactly by dynamic
programming over the skips used so far (:meth:`GenotypePolicy.mode`); the same state gives the exact entropy
(:meth:`GenotypePolicy.entropy`).

A genotype travels as a path: group -> LongTensor[E] holding the kept-op index on the 2 chosen edges of every
node and -1 on every other edge (off), which the supernet runs as is.
"""
from __future__ import annotations

import math
from itertools import combinations
from typing import Callable, NamedTuple

import torch

from controllers.sampling import BehaviourPolicy, log_softmax
from nas.core.arch_types import NONE_OP, SKIP_OP, CellLayout, OpIndices, skips_needed
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
        self.need = skips_needed(layout)  # per node, the skips that node and the later ones are forced to hold
        if self.budget(self.need[0]) < 0:
            raise UserError(f"no {group} genotype fits max_skip={layout.max_skip}: its edges whose only non-none op "
                            f"is skip_connect force at least {self.need[0]} skips; raise model.max_skip or keep "
                            f"another op on those edges")

    def budget(self, skips: int) -> float:
        return math.inf if self.layout.max_skip is None else self.layout.max_skip - skips

    def pair_mask(self, node: int, skips: int) -> list[bool]:
        """Pairs of two usable inputs whose forced skips, and those of the later nodes, fit the remaining skip
        budget, padded with False."""
        edges, budget = self.layout.node_edges[node], self.budget(skips) - self.need[node + 1]
        mask = [any(self.usable[edges[a]]) and any(self.usable[edges[b]])
                and self.only_skip[edges[a]] + self.only_skip[edges[b]] <= budget for a, b in self.pairs[node]]
        return mask + [False] * (self.max_pairs - len(mask))

    def op_mask(self, edge: int, skips: int, reserved: int) -> list[bool]:
        """Non-none ops of the edge; skip only while the budget, less `reserved` forced skips, allows one."""
        mask = list(self.usable[edge])
        if self.skip[edge] is not None and self.budget(skips) - reserved < 1:
            mask[self.skip[edge]] = False
        return mask

    def reserved(self, node: int, later: int | None) -> int:
        """Skips to keep free when choosing an op of `node`: the later edge's forced one and the later nodes'."""
        return int(later is not None and self.only_skip[later]) + self.need[node + 1]


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
                mask = cell.op_mask(e, skips, cell.reserved(node, later))
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

    def op_decisions(self) -> int:
        """Op decisions of one genotype: two per node."""
        return sum(2 * len(cell.pairs) for cell in self.cells.values())

    def entropy(self, op_logits: dict[str, torch.Tensor], pair_logits: dict[str, torch.Tensor]) -> torch.Tensor:
        """The policy's entropy (nats), exact with the skip masks and differentiable: [groups, 2], per group the
        pair decisions' part and the op decisions' part; the sum is H(pi).

        By the chain rule over the decisions: per node, the expected entropy of its pair categorical, plus for each
        chosen edge the probability that it is chosen times its op entropy under the mask it is chosen with (so
        with uniform logits and no binding skip limit the DARTS op part is 16 log 7: 16 chosen edges, not 28).
        """
        return torch.stack([self._cell_entropy(cell, op_logits[group], pair_logits[group])
                            for group, cell in self.cells.items()])

    def _cell_entropy(self, cell: _Cell, op_logits: torch.Tensor, pair_logits: torch.Tensor) -> torch.Tensor:
        """[pair part, op part] of one group's entropy: forward over the nodes with the skips used as the state."""
        usable = torch.tensor(cell.usable)
        no_skip = usable.clone()
        for e, k in enumerate(cell.skip):
            if k is not None:
                no_skip[e, k] = False
        masks = torch.stack([no_skip, usable])  # column 0: skip masked out, 1: skip allowed
        masks = masks | ~masks.any(dim=-1, keepdim=True)  # a forced skip masked out is never chosen: any finite row
        log_p = log_softmax(op_logits.expand(2, -1, -1).masked_fill(~masks, -math.inf))
        h = -(log_p.exp() * log_p.nan_to_num(neginf=0.0)).sum(dim=-1)  # [2, E]
        skip_index = torch.tensor([0 if k is None else k for k in cell.skip])
        q = log_p.exp().gather(-1, skip_index.expand(2, -1)[..., None]).squeeze(-1) * torch.tensor(
            [k is not None for k in cell.skip])  # [2, E]: probability of the skip

        def allowed(edge: int, skips: int, reserved: int) -> int:
            return int(cell.skip[edge] is None or cell.budget(skips) - reserved >= 1)

        zero = op_logits.new_zeros(())
        parts, state = [zero, zero], {0: op_logits.new_ones(())}  # skips used -> probability
        for node, (edges, pair_row) in enumerate(zip(cell.layout.node_edges, self._pair_rows(cell, pair_logits))):
            nxt: dict[int, torch.Tensor] = {}
            n_pairs, late = len(cell.pairs[node]), cell.reserved(node, None)
            a = [edges[ja] for ja, _ in cell.pairs[node]]
            b = [edges[jb] for _, jb in cell.pairs[node]]
            for skips, p_s in state.items():
                lp = log_softmax(pair_row.masked_fill(~torch.tensor(cell.pair_mask(node, skips)), -math.inf))
                pp = lp.exp()[:n_pairs]
                parts[0] = parts[0] - p_s * (lp.exp() * lp.nan_to_num(neginf=0.0)).sum()
                ca = torch.tensor([allowed(x, skips, cell.reserved(node, y)) for x, y in zip(a, b)])
                c0 = torch.tensor([allowed(y, skips, late) for y in b])
                c1 = torch.tensor([allowed(y, skips + 1, late) for y in b])
                qa, qb0, qb1 = q[ca, a], q[c0, b], q[c1, b]
                parts[1] = parts[1] + p_s * (pp * (h[ca, a] + (1 - qa) * h[c0, b] + qa * h[c1, b])).sum()
                moves = (pp * (1 - qa) * (1 - qb0), pp * ((1 - qa) * qb0 + qa * (1 - qb1)), pp * qa * qb1)
                for extra, mass in enumerate(moves):
                    to = skips if cell.layout.max_skip is None else skips + extra
                    if cell.budget(to) >= cell.need[node + 1]:  # the masks never lead anywhere else
                        nxt[to] = nxt.get(to, zero) + p_s * mass.sum()
            state = nxt
        return torch.stack(parts)

    def op_probs(self, op_logits: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per edge, the op softmax over non-none ops (`none` gets 0: a genotype never samples it)."""
        return {group: log_softmax(op_logits[group].detach().masked_fill(~torch.tensor(cell.usable), -math.inf)).exp()
                for group, cell in self.cells.items()}

    # ----- the most (or least) probable genotype -----
    def mode(self, op_logits: dict[str, torch.Tensor], pair_logits: dict[str, torch.Tensor],
             max_skip: int | None = None, least: bool = False) -> OpIndices | None:
        """The most probable genotype under pi (`least`: the least probable one), exactly. With `max_skip`: the most
        probable genotype under the same pi whose skip-limited cell (the normal one) holds at most `max_skip` skips
        (a constrained argmax; above the policy's own limit it is the mode); None when none fits."""
        path = {}
        for group, cell in self.cells.items():
            limit = max_skip if cell.layout.max_skip is not None else None
            row = self._mode_row(cell, op_logits[group].detach().double().tolist(),
                                 [r.tolist() for r in self._pair_rows(cell, pair_logits[group].detach().double())],
                                 -1.0 if least else 1.0, limit)
            if row is None:
                return None
            path[group] = row
        return path

    @staticmethod
    def _mode_row(cell: _Cell, op_logits: list[list[float]], pair_rows: list[list[float]],
                  sign: float, limit: int | None = None) -> torch.Tensor | None:
        """Dynamic programming over nodes with the number of skips used so far as the state (at most `limit`)."""
        best: dict[int, tuple[float, list[tuple[int, int]]]] = {0: (0.0, [])}  # skips -> (score, [(edge, op)])
        for node, edges in enumerate(cell.layout.node_edges):
            nxt: dict[int, tuple[float, list[tuple[int, int]]]] = {}
            for skips, (score, chosen) in best.items():
                pair_lp = _log_softmax_list(pair_rows[node], cell.pair_mask(node, skips))
                for p, (ja, jb) in enumerate(cell.pairs[node]):
                    if pair_lp[p] == -math.inf:
                        continue
                    a, b = edges[ja], edges[jb]
                    lp_a = _log_softmax_list(op_logits[a], cell.op_mask(a, skips, cell.reserved(node, b)))
                    for ka, la in enumerate(lp_a):
                        if la == -math.inf:
                            continue
                        used = skips + (ka == cell.skip[a])
                        lp_b = _log_softmax_list(op_logits[b], cell.op_mask(b, used, cell.reserved(node, None)))
                        for kb, lb in enumerate(lp_b):
                            if lb == -math.inf:
                                continue
                            total = score + sign * (pair_lp[p] + la + lb)
                            state = used + (kb == cell.skip[b])
                            if limit is not None and state > limit:
                                continue
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
