"""NAS-Bench-201: its cell space, a supernet for it, its tabular results and black-box search on them.

The cell has 4 nodes; node i sums one op of every earlier node, so there are 6 edges, in the order
(1<-0), (2<-0), (2<-1), (3<-0), (3<-1), (3<-2), and node 3 is the output. The architecture string
writes node by node, ``|op~j|`` per incoming edge: ``|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|...|``.
A path is ``{"cell": LongTensor[6]}``: per edge, the index of its op among the ops kept on that edge.

The network (the benchmark's): stem conv3x3 + BN, three stages of N cells at C, 2C, 4C channels with a
residual reduction block between stages, BN + ReLU, global pool, linear.

Black-box search on the table (:func:`run_method`): every method spends a budget of unique queries
(repeats are answered from a cache and do not count) and returns its best-so-far trace.
"""
from __future__ import annotations

import csv
import os
from collections import deque
from dataclasses import replace
from functools import partial
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from controllers.base import Path
from controllers.reinforce import ReinforceConfig, ReinforceController
from controllers.sampling import BEHAVIOURS
from nas.errors import UserError
from search_spaces.base import KeptOps, SearchSpace
from search_spaces.ops import ReLUConvBN, build_op

NB201_OPS: tuple[str, ...] = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
EDGES: tuple[tuple[int, int], ...] = tuple((i, j) for i in range(1, 4) for j in range(i))  # (to, from)
NUM_ARCHS = len(NB201_OPS) ** len(EDGES)  # 15,625
_REGISTRY_NAME = {"nor_conv_1x1": "conv_1x1", "nor_conv_3x3": "conv_3x3"}  # both are ReLU-Conv-BN
_EXAMPLE = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"
_DIGITS = len(NB201_OPS) ** np.arange(len(EDGES))  # arch code = sum_e op_index_e * 5**e


def parse_arch(arch: str) -> tuple[str, ...]:
    """The 6 op names (edge order) of an architecture string; UserError when it is malformed."""
    def bad(why: str) -> UserError:
        return UserError(f"malformed NAS-Bench-201 architecture {arch!r}: {why}; expected e.g. {_EXAMPLE!r} "
                         f"with ops from {', '.join(NB201_OPS)}")

    nodes = str(arch).strip().split("+")
    if len(nodes) != 3:
        raise bad(f"{len(nodes)} nodes separated by '+', need 3")
    ops: list[str] = []
    for node, text in enumerate(nodes, start=1):
        if len(text) < 2 or text[0] != "|" or text[-1] != "|":
            raise bad(f"node {node} must be enclosed in '|'")
        tokens = text[1:-1].split("|")
        if len(tokens) != node:
            raise bad(f"node {node} has {len(tokens)} inputs, needs {node}")
        for source, token in enumerate(tokens):
            op, _, index = token.partition("~")
            if op not in NB201_OPS:
                raise bad(f"unknown op {op!r}")
            if index != str(source):
                raise bad(f"input {source + 1} of node {node} must read '~{source}', got {token!r}")
            ops.append(op)
    return tuple(ops)


def format_arch(ops: Sequence[str]) -> str:
    """The architecture string of 6 op names in edge order."""
    if len(ops) != len(EDGES) or any(op not in NB201_OPS for op in ops):
        raise UserError(f"a NAS-Bench-201 cell needs {len(EDGES)} ops from {', '.join(NB201_OPS)}, got {list(ops)}")
    nodes = ["|" + "|".join(f"{ops[e]}~{j}" for e, (i, j) in enumerate(EDGES) if i == node) + "|" for node in (1, 2, 3)]
    return "+".join(nodes)


def _edge_ops(kept_ops: KeptOps | None) -> list[list[str]]:
    return [list(NB201_OPS)] * len(EDGES) if kept_ops is None else kept_ops["cell"]


def arch_to_path(arch: str, kept_ops: KeptOps | None = None) -> Path:
    """{"cell": LongTensor[6]}: the index of each edge's op among its kept ops (default: all 5 ops)."""
    per_edge = _edge_ops(kept_ops)
    ops = parse_arch(arch)
    if any(op not in kept for op, kept in zip(ops, per_edge)):
        raise UserError(f"architecture {arch!r} uses an op that is not kept on its edge")
    return {"cell": torch.tensor([kept.index(op) for op, kept in zip(ops, per_edge)])}


def path_to_arch(path: Path, kept_ops: KeptOps | None = None) -> str:
    """The architecture string of a path (op indices into each edge's kept ops; default: all 5 ops)."""
    return format_arch([kept[i] for kept, i in zip(_edge_ops(kept_ops), path["cell"].tolist())])


def arch_code(ops: Sequence[str]) -> int:
    """A unique integer in [0, 15625) for 6 op names: sum_e index(op_e) * 5**e."""
    return int(np.dot([NB201_OPS.index(op) for op in ops], _DIGITS))


def code_to_arch(code: int) -> str:
    """Inverse of :func:`arch_code`, as an architecture string."""
    return format_arch([NB201_OPS[code // 5 ** e % 5] for e in range(len(EDGES))])


class NB201Edge(nn.Module):
    """The candidate ops of one edge; `none` is never computed (it contributes nothing)."""

    def __init__(self, ops: Sequence[str], C: int, affine: bool):
        super().__init__()
        self.names = list(ops)
        self.ops = nn.ModuleList(build_op(_REGISTRY_NAME.get(op, op), C, 1, affine) for op in ops)

    def forward(self, x: torch.Tensor, weights: torch.Tensor | None, index: int | None) -> torch.Tensor | None:
        """sum_k weights[k] op_k(x), or op_index(x); None when the result is zero."""
        if index is not None:
            return None if self.names[index] == "none" else self.ops[index](x)
        terms = [w * op(x) for w, op, name in zip(weights, self.ops, self.names) if name != "none"]
        return sum(terms) if terms else None


class NB201Cell(nn.Module):
    """4 nodes, 6 edges; returns node 3."""

    def __init__(self, kept_ops: list[list[str]], C: int, affine: bool):
        super().__init__()
        self.edges = nn.ModuleList(NB201Edge(ops, C, affine) for ops in kept_ops)

    def forward(self, x: torch.Tensor, weights: torch.Tensor | None, indices: list[int] | None) -> torch.Tensor:
        per_edge_weights = [None] * len(EDGES) if weights is None else weights
        per_edge_index = [None] * len(EDGES) if indices is None else indices
        nodes = [x]
        for node in (1, 2, 3):
            terms = [self.edges[e](nodes[j], per_edge_weights[e], per_edge_index[e])
                     for e, (i, j) in enumerate(EDGES) if i == node]
            terms = [t for t in terms if t is not None]
            nodes.append(sum(terms) if terms else torch.zeros_like(x))
        return nodes[-1]


class ResidualReduction(nn.Module):
    """The benchmark's stride-2 residual block: ReLUConvBN 3x3 s2 -> ReLUConvBN 3x3, plus avgpool + 1x1 conv."""

    def __init__(self, C_in: int, C_out: int):
        super().__init__()
        self.conv_a = ReLUConvBN(C_in, C_out, 3, 2, 1)
        self.conv_b = ReLUConvBN(C_out, C_out, 3, 1, 1)
        self.shortcut = nn.Sequential(nn.AvgPool2d(2, 2), nn.Conv2d(C_in, C_out, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_b(self.conv_a(x)) + self.shortcut(x)


class NB201Network(nn.Module):
    """Stem, 3 x N cells with residual reductions, classifier; every cell shares one architecture.

    forward(x, weights=None, path=None): `weights={"cell": [6, K]}` mixes every kept op, `path={"cell":
    LongTensor[6]}` runs one op per edge; neither is needed when every edge keeps a single op (an eval network).
    """

    def __init__(self, kept_ops: KeptOps, C: int = 16, cells_per_stage: int = 1, num_classes: int = 10,
                 in_channels: int = 3, affine: bool = False):
        super().__init__()
        self.kept_ops = kept_ops
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C, 3, padding=1, bias=False), nn.BatchNorm2d(C))
        blocks: list[nn.Module] = []
        for stage in range(3):
            width = C * 2 ** stage
            if stage:
                blocks.append(ResidualReduction(width // 2, width))
            blocks.extend(NB201Cell(kept_ops["cell"], width, affine) for _ in range(cells_per_stage))
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Sequential(nn.BatchNorm2d(4 * C), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(4 * C, num_classes)

    def forward(self, x: torch.Tensor, weights: dict[str, torch.Tensor] | None = None,
                path: Path | None = None) -> torch.Tensor:
        if weights is not None and path is not None:
            raise ValueError("pass weights= (mixture) or path= (single path), not both")
        cell_weights = None if weights is None else weights["cell"]
        indices = None if path is None else path["cell"].tolist()
        if weights is None and path is None:
            if any(len(ops) != 1 for ops in self.kept_ops["cell"]):
                raise ValueError("this supernet keeps several ops per edge: pass weights= or path=")
            indices = [0] * len(EDGES)
        x = self.stem(x)
        for block in self.blocks:
            x = block(x, cell_weights, indices) if isinstance(block, NB201Cell) else block(x)
        return self.classifier(self.head(x))


def build_network(arch: str, C: int = 16, cells_per_stage: int = 5, num_classes: int = 10,
                  in_channels: int = 3) -> NB201Network:
    """The stand-alone network of an architecture string (the benchmark trains C=16, N=5)."""
    kept = {"cell": [[op] for op in parse_arch(arch)]}
    return NB201Network(kept, C, cells_per_stage, num_classes, in_channels, affine=True)


def _conv_params(op: str, C: int) -> int:
    """Parameters of one cell op at C channels (conv weights + affine BN)."""
    kernel = {"nor_conv_1x1": 1, "nor_conv_3x3": 3}.get(op)
    return 0 if kernel is None else kernel * kernel * C * C + 2 * C


def count_params(arch: str, C: int = 16, cells_per_stage: int = 5, num_classes: int = 10, in_channels: int = 3) -> int:
    """Parameters of :func:`build_network` (same arguments), from per-op formulas without building it."""
    ops = parse_arch(arch)
    total = 9 * in_channels * C + 2 * C  # stem
    for stage in range(3):
        width = C * 2 ** stage
        if stage:  # residual reduction: two 3x3 ReLUConvBN + 1x1 shortcut
            total += 9 * (width // 2) * width + 9 * width * width + 4 * width + (width // 2) * width
        total += cells_per_stage * sum(_conv_params(op, width) for op in ops)
    return total + 2 * 4 * C + 4 * C * num_classes + num_classes  # head BN + classifier


class NB201Space(SearchSpace):
    """The NAS-Bench-201 cell space; `layers` of build_supernet is the number of cells per stage."""

    name = "nb201"

    def __init__(self, C: int = 16, num_classes: int = 10, in_channels: int = 3, eval_C: int = 16,
                 eval_cells_per_stage: int = 5):
        self.C, self.num_classes, self.in_channels = C, num_classes, in_channels
        self.eval_C, self.eval_cells_per_stage = eval_C, eval_cells_per_stage

    def initial_kept_ops(self) -> KeptOps:
        return {"cell": [list(NB201_OPS) for _ in EDGES]}

    def build_supernet(self, kept_ops: KeptOps, layers: int) -> NB201Network:
        return NB201Network(kept_ops, self.C, layers, self.num_classes, self.in_channels)

    def derive(self, probs: dict[str, torch.Tensor], kept_ops: KeptOps) -> str:
        """The architecture string of the most probable op on every edge (`none` included, as in the benchmark)."""
        return path_to_arch({"cell": probs["cell"].argmax(dim=-1)}, kept_ops)

    def params_millions(self, arch: str) -> float:
        return count_params(arch, self.eval_C, self.eval_cells_per_stage, self.num_classes, self.in_channels) / 1e6


class TabularBenchmark:
    """Accuracies of every cell from a CSV with an `arch` column and the accuracy column `column`."""

    def __init__(self, csv_path: str | os.PathLike, column: str = "cifar10_test_acc"):
        if not os.path.isfile(csv_path):
            raise UserError(f"benchmark table {str(csv_path)!r} does not exist")
        with open(csv_path, newline="") as handle:
            reader = csv.DictReader(handle)
            columns = reader.fieldnames or []
            for needed in ("arch", column):
                if needed not in columns:
                    raise UserError(f"benchmark table {str(csv_path)!r} has no column {needed!r}; "
                                    f"its columns: {', '.join(columns)}")
            self.by_code = np.full(NUM_ARCHS, np.nan)  # accuracy by arch_code, NaN where the table has no row
            for line, row in enumerate(reader, start=2):
                try:
                    self.by_code[arch_code(parse_arch(row["arch"]))] = float(row[column])
                except (UserError, ValueError) as err:
                    raise UserError(f"{csv_path}:{line}: {err}") from None
        self.codes = np.flatnonzero(~np.isnan(self.by_code))
        if not len(self.codes):
            raise UserError(f"benchmark table {str(csv_path)!r} has no rows")

    def query(self, arch: str) -> float:
        """The table's accuracy of an architecture string."""
        acc = self.by_code[arch_code(parse_arch(arch))]
        if np.isnan(acc):
            raise UserError(f"architecture {arch!r} is not in the table")
        return float(acc)

    def best(self) -> tuple[str, float]:
        """The most accurate cell (the first in code order among ties) and its accuracy."""
        code = int(np.nanargmax(self.by_code))
        return code_to_arch(code), float(self.by_code[code])


class QueryOracle:
    """Answers queries by arch code, counting unique ones against a budget; records the best-so-far trace.

    A search stops when the budget is spent or after `stall_limit` consecutive repeated queries (a converged
    policy); the stall rule does not depend on the budget, so a run's trace is a prefix of a longer run's.
    """

    def __init__(self, bench: TabularBenchmark, budget: int, stall_limit: int = 500):
        self.bench, self.budget, self.stall_limit = bench, budget, stall_limit
        self.seen: set[int] = set()
        self.trace: list[tuple[int, float]] = []
        self.stalled = 0

    @property
    def done(self) -> bool:
        return len(self.seen) >= self.budget or self.stalled >= self.stall_limit

    def __call__(self, code: int) -> float | None:
        """The accuracy of cell `code`; None (not asked) when it is new and the budget is spent."""
        acc = float(self.bench.by_code[code])
        if code in self.seen:
            self.stalled += 1
            return acc
        if len(self.seen) >= self.budget:
            return None
        if np.isnan(acc):
            raise UserError(f"architecture {code_to_arch(code)!r} is not in the table")
        self.seen.add(code)
        self.stalled = 0
        self.trace.append((len(self.seen), max(acc, self.trace[-1][1]) if self.trace else acc))
        return acc


def _random_search(oracle: QueryOracle, rng: np.random.Generator, cfg: ReinforceConfig) -> None:
    """Uniform random cells; sampling without replacement equals sampling with repeats that count once."""
    for code in rng.permutation(oracle.bench.codes):
        if oracle(int(code)) is None:
            return


def _mutate(code: int, rng: np.random.Generator) -> int:
    """Change the op of one random edge to a different random op."""
    edge = int(rng.integers(len(EDGES)))
    digit = code // 5 ** edge % 5
    new = (digit + int(rng.integers(1, len(NB201_OPS)))) % len(NB201_OPS)
    return code + (new - digit) * 5 ** edge


def _regularized_evolution(oracle: QueryOracle, rng: np.random.Generator, cfg: ReinforceConfig,
                           population_size: int = 10, sample_size: int = 10) -> None:
    """Real et al. (2019) aging evolution with NAS-Bench-201's settings: population 10, tournament of 10."""
    population: deque[tuple[int, float]] = deque()
    while len(population) < population_size and not oracle.done:
        code = int(rng.choice(oracle.bench.codes))
        acc = oracle(code)
        if acc is None:
            return
        population.append((code, acc))
    while not oracle.done:
        contenders = rng.integers(len(population), size=sample_size)
        parent = max((population[i] for i in contenders), key=lambda member: member[1])
        child = _mutate(parent[0], rng)
        acc = oracle(child)
        if acc is None:
            return
        population.append((child, acc))
        population.popleft()


def _reinforce(oracle: QueryOracle, rng: np.random.Generator, cfg: ReinforceConfig, behaviour: str) -> None:
    """The REINFORCE controller with the given behaviour policy; reward = table accuracy / 100.

    An NB201 cell runs every edge with one op, so the per-edge policy (`sample="edges"`) samples exactly its cells.
    """
    cfg = replace(cfg, behaviour=behaviour, sample="edges")
    controller = ReinforceController({"cell": (len(EDGES), len(NB201_OPS))}, cfg, stage=0,
                                     generator=torch.Generator().manual_seed(int(rng.integers(2 ** 62))))
    while not oracle.done:
        paths = controller.sample(cfg.samples_per_update)
        codes = (torch.stack([path["cell"] for path in paths]) @ torch.from_numpy(_DIGITS)).tolist()
        accuracies = [oracle(code) for code in codes]
        if None in accuracies:
            return
        controller.update(paths, [acc / 100.0 for acc in accuracies])


SearchMethod = Callable[[QueryOracle, np.random.Generator, ReinforceConfig], None]
METHODS: dict[str, SearchMethod] = {"random": _random_search, "rea": _regularized_evolution}
METHODS.update({f"reinforce_{behaviour}": partial(_reinforce, behaviour=behaviour) for behaviour in BEHAVIOURS})


def run_method(name: str, bench: TabularBenchmark, budget: int, seed: int,
               reinforce_cfg: ReinforceConfig | None = None) -> list[tuple[int, float]]:
    """Search the table with method `name`; returns (unique queries so far, best accuracy so far) per new cell.

    `reinforce_cfg` sets the controller of the reinforce_* methods (its behaviour is the method's).
    """
    if name not in METHODS:
        raise UserError(f"unknown search method {name!r}; choose from: {', '.join(METHODS)}")
    if budget < 1:
        raise UserError(f"the query budget must be >= 1, got {budget}")
    oracle = QueryOracle(bench, budget)
    METHODS[name](oracle, np.random.default_rng(seed), reinforce_cfg or ReinforceConfig())
    return oracle.trace
