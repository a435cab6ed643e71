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
from typing import Callable, Iterator, NamedTuple, Sequence

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


class EntropyTables(NamedTuple):
    """Constants of a group's entropy. N nodes, S skip states, P max pairs, E edges, K ops.

    `op_masks` [2, E, K]: per edge the op mask with skip masked out (0) or allowed (1); `pair_masks` [N, S, P];
    `slots` [6, N, S, P]: per pair and state, where in the flattened [h; q] ([2 (entropy, P(skip)), 2 (skip masked
    out, allowed), E]) to read h and q of the first edge's op, of the second's after a non-skip and after a skip;
    `moves` [N, 3, S, S]: state s goes to state t after 0, 1 or 2 more skips; `start` [S]: the state distribution
    at node 0.
    """

    op_masks: torch.Tensor
    skip_index: torch.Tensor
    has_skip: torch.Tensor
    pair_masks: torch.Tensor
    slots: torch.Tensor
    moves: torch.Tensor
    start: torch.Tensor


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
        # Every mask a decision can be taken under, computed once: per node and skip state the pair mask, per edge
        # the op mask without and with skip allowed; with their allowed options.
        self.n_states = 1 if layout.max_skip is None else layout.max_skip + 1
        self.pair_masks = [[tuple(self.pair_mask(node, s)) for s in range(self.n_states)]
                           for node in range(len(layout.node_edges))]
        self.op_masks = [(tuple(u and k != skip for k, u in enumerate(usable)), tuple(usable))
                         for usable, skip in zip(self.usable, self.skip)]
        self.pair_options = [[_options(mask) for mask in masks] for masks in self.pair_masks]
        self.op_options = [tuple(_options(mask) for mask in masks) for masks in self.op_masks]
        self.op_mask_rows = torch.tensor([mask for masks in self.op_masks for mask in masks])  # [2E, K]
        self.pair_mask_rows = torch.tensor([mask for masks in self.pair_masks for mask in masks])  # [N * S, P]
        # Per node, where each padded pair slot reads in [pair logits, -inf]: its logit, or the -inf at the end.
        first = [sum(len(p) for p in self.pairs[:node]) for node in range(len(self.pairs))]
        self.pair_slots = torch.tensor([[first[node] + p if p < len(pairs) else first[-1] + len(self.pairs[-1])
                                         for p in range(self.max_pairs)] for node, pairs in enumerate(self.pairs)])
        self.entropy_tables = self._entropy_tables()

    def _entropy_tables(self) -> EntropyTables:
        """The constant masks and index tables of the entropy (GenotypePolicy._cell_entropy), padded to max_pairs."""
        S, N, P = self.n_states, len(self.pairs), self.max_pairs
        op_masks = torch.tensor([[masks[allowed] for masks in self.op_masks] for allowed in (0, 1)])
        pair_masks = torch.tensor(self.pair_masks)
        E = len(self.layout.ops)
        slots = torch.zeros(6, N, S, P, dtype=torch.long)  # padded pairs read slot 0: their probability is 0
        moves = torch.zeros(N, 3, S, S)
        for node, edges in enumerate(self.layout.node_edges):
            late = self.reserved(node, None)
            for p, (ja, jb) in enumerate(self.pairs[node]):
                a, b = edges[ja], edges[jb]
                for s in range(S):  # whether each op decision is taken with skip allowed (1) or masked out (0)
                    allowed = (self.skip_allowed(s, self.reserved(node, b)), self.skip_allowed(s, late),
                               self.skip_allowed(s + 1, late))
                    for kind in range(2):  # h, then q
                        for i, (edge, c) in enumerate(zip((a, b, b), allowed)):
                            slots[3 * kind + i, node, s, p] = (2 * kind + c) * E + edge
            for s in range(S):
                for extra in range(3):
                    to = s if self.layout.max_skip is None else s + extra
                    if to < S and self.budget(to) >= self.need[node + 1]:  # the masks never lead anywhere else
                        moves[node, extra, s, to] = 1.0
        return EntropyTables(
            op_masks=op_masks | ~op_masks.any(dim=-1, keepdim=True),  # a forced skip masked out: any finite row
            skip_index=torch.tensor([0 if k is None else k for k in self.skip]),
            has_skip=torch.tensor([k is not None for k in self.skip]),
            pair_masks=pair_masks | ~pair_masks.any(dim=-1, keepdim=True),  # unreachable states: any finite row
            slots=slots, moves=moves, start=torch.eye(S)[0])

    def budget(self, skips: int) -> float:
        return math.inf if self.layout.max_skip is None else self.layout.max_skip - skips

    def pair_mask(self, node: int, skips: int) -> list[bool]:
        """Pairs of two usable inputs whose forced skips, and those of the later nodes, fit the remaining skip
        budget, padded with False."""
        edges, budget = self.layout.node_edges[node], self.budget(skips) - self.need[node + 1]
        mask = [any(self.usable[edges[a]]) and any(self.usable[edges[b]])
                and self.only_skip[edges[a]] + self.only_skip[edges[b]] <= budget for a, b in self.pairs[node]]
        return mask + [False] * (self.max_pairs - len(mask))

    def state(self, skips: int) -> int:
        """The skip state a decision is taken in: the skips used so far (0 throughout without a skip limit)."""
        return 0 if self.layout.max_skip is None else skips

    def skip_allowed(self, skips: int, reserved: int) -> bool:
        """Whether the budget, less `reserved` forced skips, allows one more skip."""
        return self.budget(skips) - reserved >= 1

    def op_mask(self, edge: int, skips: int, reserved: int) -> list[bool]:
        """Non-none ops of the edge; skip only while the budget, less `reserved` forced skips, allows one."""
        return list(self.op_masks[edge][self.skip_allowed(skips, reserved)])

    def reserved(self, node: int, later: int | None) -> int:
        """Skips to keep free when choosing an op of `node`: the later edge's forced one and the later nodes'."""
        return int(later is not None and self.only_skip[later]) + self.need[node + 1]


Chooser = Callable[[tuple], int]  # ("pair", node, skip state) or ("op", edge, skip allowed) -> the chosen index


def _options(mask: Sequence[bool]) -> tuple[int, ...]:
    return tuple(k for k, allowed in enumerate(mask) if allowed)


def _inverse_cdf(u: float, probs: list[float], options: tuple[int, ...]) -> int:
    """The option whose probability interval holds u (the last option when u falls in the rounding slack)."""
    for k in options:
        u -= probs[k]
        if u < 0:
            return k
    return options[-1]


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

    @staticmethod
    def _pair_table(cell: _Cell, pair_logits: torch.Tensor) -> torch.Tensor:
        """[nodes, max pairs]: each node's pair logits, padded with -inf."""
        return torch.cat([pair_logits, pair_logits.new_full((1,), -math.inf)])[cell.pair_slots]

    # ----- walking the decisions of one genotype -----
    @staticmethod
    def _walk(cell: _Cell, choose: Chooser, record: list | None = None) -> list[int]:
        """Take every decision of one group in order with `choose`; returns the path row (-1 = off edge)."""
        row = [OFF] * len(cell.layout.ops)
        skips = 0
        for node, edges in enumerate(cell.layout.node_edges):
            state = cell.state(skips)
            pair_mask = cell.pair_masks[node][state]
            p = choose(("pair", node, state))
            a, b = (edges[j] for j in cell.pairs[node][p])
            if record is not None:
                record.append(("pair", p, pair_mask))
            for e, later in ((a, b), (b, None)):
                allowed = cell.skip_allowed(skips, cell.reserved(node, later))
                mask = cell.op_masks[e][allowed]
                k = choose(("op", e, allowed))
                if record is not None:
                    record.append(("op", e, k, mask))
                skips += k == cell.skip[e]
                row[e] = k
        return row

    def sample(self, op_logits: dict[str, torch.Tensor], pair_logits: dict[str, torch.Tensor],
               behaviour: BehaviourPolicy, n: int, generator: torch.Generator | None = None) -> list[OpIndices]:
        """n genotypes from the behaviour policy applied to every decision's conditional pi.

        One uniform number per decision (a single draw from `generator`, taken sample by sample in decision order)
        picks the option by inverse CDF. mu of every decision under every mask it can be taken under is computed
        up front in one batched call per group and kind, so a decision costs a table lookup.
        """
        uniforms = iter(torch.rand(n * self.decisions_per_sample(), generator=generator, dtype=torch.float64).tolist())
        choosers = {group: self._drawer(cell, op_logits[group], pair_logits[group], behaviour, uniforms)
                    for group, cell in self.cells.items()}
        return [{group: torch.tensor(self._walk(cell, choosers[group])) for group, cell in self.cells.items()}
                for _ in range(n)]

    def _drawer(self, cell: _Cell, op_logits: torch.Tensor, pair_logits: torch.Tensor, behaviour: BehaviourPolicy,
                uniforms: Iterator[float]) -> Chooser:
        """A chooser drawing every decision of `cell` from mu (tabulated per decision and mask) with `uniforms`."""
        n_edges, n_nodes = len(cell.layout.ops), len(cell.pairs)
        op_probs = behaviour.edge_probs(op_logits.detach().double().repeat_interleave(2, dim=0), cell.op_mask_rows)
        pair_rows = self._pair_table(cell, pair_logits.detach().double())
        pair_probs = behaviour.edge_probs(pair_rows.repeat_interleave(cell.n_states, dim=0), cell.pair_mask_rows)
        probs = {("op", e, allowed): row for (e, allowed), row in zip(
            ((e, allowed) for e in range(n_edges) for allowed in (False, True)), op_probs.tolist())}
        probs.update({("pair", node, state): row for (node, state), row in zip(
            ((node, state) for node in range(n_nodes) for state in range(cell.n_states)), pair_probs.tolist())})

        def draw(key: tuple) -> int:
            kind, index, variant = key
            options = cell.op_options[index][variant] if kind == "op" else cell.pair_options[index][variant]
            return _inverse_cdf(next(uniforms), probs[key], options)

        return draw

    def decisions(self, paths: list[OpIndices]) -> dict[str, Decisions]:
        """The decisions (and the masks they were taken under) that produced each path, per group."""

        def replay(cell: _Cell, path_row: list[int]) -> Chooser:
            chosen: list[int] = []
            for node, edges in enumerate(cell.layout.node_edges):
                on = [j for j, e in enumerate(edges) if path_row[e] != OFF]
                if len(on) != 2:
                    raise ValueError(f"{cell.group} node {node} of a genotype path must use 2 inputs, got {len(on)}")
                chosen += [cell.pairs[node].index(tuple(on)), *(path_row[edges[j]] for j in on)]
            return lambda key: chosen.pop(0)

        result = {}
        for group, cell in self.cells.items():
            records = []
            for path in paths:
                record: list = []
                self._walk(cell, replay(cell, path[group].tolist()), record)
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
            pair_table = self._pair_table(cell, pair_logits[group])  # [nodes, max pairs]
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
        """[pair part, op part] of one group's entropy, with the skips used as the state: every node's terms in
        every state at once (batched tensors), then the state distribution carried forward node by node."""
        t = cell.entropy_tables
        log_p = log_softmax(op_logits.expand(2, -1, -1).masked_fill(~t.op_masks, -math.inf))  # [2, E, K]
        h = -(log_p.exp() * log_p.nan_to_num(neginf=0.0)).sum(dim=-1)  # [2, E]: 0 skip masked out, 1 allowed
        q = log_p.exp().gather(-1, t.skip_index.expand(2, -1)[..., None]).squeeze(-1) * t.has_skip  # P(skip)
        rows = self._pair_table(cell, pair_logits)[:, None].expand(-1, cell.n_states, -1)
        lp = log_softmax(rows.masked_fill(~t.pair_masks, -math.inf))  # [N, S, P]
        pp = lp.exp()
        pair_h = -(pp * lp.nan_to_num(neginf=0.0)).sum(dim=-1)  # [N, S]
        ha, hb0, hb1, qa, qb0, qb1 = torch.stack((h, q)).flatten()[t.slots].unbind(0)  # [N, S, P] each
        op_h = (pp * (ha + (1 - qa) * hb0 + qa * hb1)).sum(dim=-1)  # [N, S]
        moves = torch.stack((pp * (1 - qa) * (1 - qb0), pp * ((1 - qa) * qb0 + qa * (1 - qb1)), pp * qa * qb1),
                            dim=1).sum(dim=-1)  # [N, 3, S]: probability of 0, 1, 2 more skips
        transitions = (moves[..., None] * t.moves).sum(dim=1)  # [N, S, S]: state before -> state after the node
        states = [t.start.to(transitions.dtype)]
        for node in range(len(cell.pairs) - 1):
            states.append(states[-1] @ transitions[node])
        reach = torch.stack(states)  # [N, S]: probability of each state when the node is reached
        return torch.stack(((reach * pair_h).sum(), (reach * op_h).sum()))

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
                                 self._pair_table(cell, pair_logits[group].detach().double()).tolist(),
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
