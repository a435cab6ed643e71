"""Black-box search on NAS-Bench-201's tabular results: no training, every query a table lookup.

:class:`TabularBenchmark` reads any CSV with an `arch` column (NB201 architecture strings) and an accuracy
column. Random search, regularized evolution and the REINFORCE controller with each behaviour policy share one
interface (:func:`run_method`): every method spends a budget of unique queries (repeats are answered from a
cache and do not count) and returns its best-so-far trace. The NB201 space and the REINFORCE controller are
reached through their registries; cells are handled by their codes (NB201Space.arch_code and friends).
"""
from __future__ import annotations

import csv
import os
from collections import deque
from dataclasses import replace
from functools import partial
from typing import Any, Callable

import numpy as np
import torch

from controllers.registry import controller_class
from nas.core.errors import UserError
from search_spaces.registry import space_class

NB201 = space_class("nb201")
REINFORCE = controller_class("reinforce")
ReinforceConfig = REINFORCE.config_sections["reinforce"]
REINFORCE_BEHAVIOURS: tuple[str, ...] = ("multinomial", "uniform", "epsilon_greedy", "argmax")  # compared methods
STALL_LIMIT = 500  # consecutive repeated queries after which a search counts as converged and stops
REA_POPULATION, REA_SAMPLE = 10, 10  # NAS-Bench-201's regularized evolution: population 10, tournament of 10
CONTROLLER_SEED_BOUND = 2 ** 62  # the REINFORCE controller's generator seed is drawn from [0, this) by the run's rng


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
            self.by_code = np.full(NB201.num_archs, np.nan)  # accuracy by arch code, NaN where the table has no row
            for line, row in enumerate(reader, start=2):
                try:
                    self.by_code[NB201.arch_code(row["arch"])] = float(row[column])
                except (UserError, ValueError) as err:
                    raise UserError(f"{csv_path}:{line}: {err}") from None
        self.codes = np.flatnonzero(~np.isnan(self.by_code))
        if not len(self.codes):
            raise UserError(f"benchmark table {str(csv_path)!r} has no rows")

    def query(self, arch: str) -> float:
        """The table's accuracy of an architecture string."""
        acc = self.by_code[NB201.arch_code(arch)]
        if np.isnan(acc):
            raise UserError(f"architecture {arch!r} is not in the table")
        return float(acc)

    def best(self) -> tuple[str, float]:
        """The most accurate cell (the first in code order among ties) and its accuracy."""
        code = int(np.nanargmax(self.by_code))
        return NB201.code_to_arch(code), float(self.by_code[code])


class QueryOracle:
    """Answers queries by arch code, counting unique ones against a budget; records the best-so-far trace.

    A search stops when the budget is spent or after `stall_limit` consecutive repeated queries (a converged
    policy); the stall rule does not depend on the budget, so a run's trace is a prefix of a longer run's.
    """

    def __init__(self, bench: TabularBenchmark, budget: int, stall_limit: int = STALL_LIMIT):
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
            raise UserError(f"architecture {NB201.code_to_arch(code)!r} is not in the table")
        self.seen.add(code)
        self.stalled = 0
        self.trace.append((len(self.seen), max(acc, self.trace[-1][1]) if self.trace else acc))
        return acc


def _random_search(oracle: QueryOracle, rng: np.random.Generator, cfg: Any) -> None:
    """Uniform random cells; sampling without replacement equals sampling with repeats that count once."""
    for code in rng.permutation(oracle.bench.codes):
        if oracle(int(code)) is None:
            return


def _mutate(code: int, rng: np.random.Generator) -> int:
    """Change the op of one random edge to a different random op."""
    indices = NB201.code_indices(code)
    edge = int(rng.integers(len(indices)))
    indices[edge] = (indices[edge] + int(rng.integers(1, len(NB201.ops)))) % len(NB201.ops)
    return NB201.index_code(indices)


def _regularized_evolution(oracle: QueryOracle, rng: np.random.Generator, cfg: Any,
                           population_size: int = REA_POPULATION, sample_size: int = REA_SAMPLE) -> None:
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


def _reinforce(oracle: QueryOracle, rng: np.random.Generator, cfg: Any, behaviour: str) -> None:
    """The REINFORCE controller with the given behaviour policy; reward = table accuracy / 100.

    An NB201 cell runs every edge with one op, so the per-edge policy (`sample="edges"`) samples exactly its cells.
    """
    cfg = replace(cfg, behaviour=behaviour, sample="edges")
    controller = REINFORCE({NB201.group: (len(NB201.edges), len(NB201.ops))}, cfg, stage=0,
                           generator=torch.Generator().manual_seed(int(rng.integers(CONTROLLER_SEED_BOUND))))
    while not oracle.done:
        paths = controller.sample(cfg.samples_per_update)
        accuracies = [oracle(NB201.index_code(path[NB201.group].tolist())) for path in paths]
        if None in accuracies:
            return
        controller.update(paths, [acc / 100.0 for acc in accuracies])


SearchMethod = Callable[[QueryOracle, np.random.Generator, Any], None]
METHODS: dict[str, SearchMethod] = {"random": _random_search, "rea": _regularized_evolution}
METHODS.update({f"reinforce_{name}": partial(_reinforce, behaviour=name) for name in REINFORCE_BEHAVIOURS})


def run_method(name: str, bench: TabularBenchmark, budget: int, seed: int,
               reinforce_cfg: Any | None = None) -> list[tuple[int, float]]:
    """Search the table with method `name`; returns (unique queries so far, best accuracy so far) per new cell.

    `reinforce_cfg` (the REINFORCE controller's `reinforce:` section) sets the controller of the reinforce_*
    methods (its behaviour is the method's).
    """
    if name not in METHODS:
        raise UserError(f"unknown search method {name!r}; choose from: {', '.join(METHODS)}")
    if budget < 1:
        raise UserError(f"the query budget must be >= 1, got {budget}")
    oracle = QueryOracle(bench, budget)
    METHODS[name](oracle, np.random.default_rng(seed), reinforce_cfg or ReinforceConfig())
    return oracle.trace
