"""A sweep spec (YAML) and the trials it expands to: a grid and random draws over dotted config keys, times seeds.

    base: quick_digits_reinforce.yaml   # a search config (kind: search) or an eval config (kind: eval),
    kind: search                        #   relative to this file (as are genotype, data.root, reward.latency_table)
    genotype: PDARTS                    # eval sweeps: what to train (a grid or random key `genotype` varies it)
    set: {run.draw: false}              # fixed `--set` values of every trial
    grid: {reward.alpha: [[0.0, 0.0, 0.0], [-0.5, -0.5, -0.5]]}   # every combination
    random:                             # `samples` draws of these keys, each crossed with every grid point
      samples: 2
      seed: 0
      keys: {reinforce.lr: {loguniform: [0.01, 0.1]}, reinforce.behaviour: {choice: [uniform, multinomial]}}
    seeds: [0, 1]                       # run.seed of the trials; each configuration runs once per seed
    probe: {config: eval_digits_smoke.yaml, set: {train.epochs: 2}}   # search sweeps: train each found genotype
    resources: {num_cpus: 1, num_gpus: 0}                             # per trial (default: the machine / --parallel)

Every trial's config (and the probe's) is built and validated here, so a bad spec is a one-line UserError
before any trial starts.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nas.core.config import load_config, read_yaml
from nas.core.errors import UserError

KINDS = ("search", "eval")
SPEC_KEYS = ("base", "kind", "genotype", "set", "grid", "random", "seeds", "probe", "resources")
DISTRIBUTIONS = ("choice", "uniform", "loguniform", "randint")
RESOURCE_KEYS = ("num_cpus", "num_gpus")
OWNED_KEYS = ("run.seed",)  # the sweep sets these itself
GENOTYPE_KEY = "genotype"  # an eval sweep may vary the genotype it trains
PATH_KEYS = (GENOTYPE_KEY, "data.root", "reward.latency_table")  # relative values are relative to the spec file
NAME_LIMIT = 80


@dataclass
class Trial:
    """One run of the sweep: the varied values, its seed and the `--set` assignments that make its config."""

    index: int
    name: str
    params: dict[str, Any]  # varied key -> value (grid and random keys)
    seed: int
    overrides: list[str]  # fixed `set`, then the varied values, then run.seed

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Probe:
    """The chained short training of each search trial's genotype (eval trainer)."""

    config: str
    overrides: list[str] = field(default_factory=list)


@dataclass
class Spec:
    """A validated sweep spec; paths are absolute."""

    path: str
    base: str
    kind: str
    genotype: str | None
    fixed: list[str]
    grid: dict[str, list[Any]]
    random: dict[str, Any]
    seeds: list[int]
    probe: Probe | None
    resources: dict[str, float]
    trials: list[Trial] = field(default_factory=list)
    config_sha256: str = ""  # of the base (and probe) config's contents; "" in sweeps saved before it existed

    @property
    def varied(self) -> list[str]:
        """The varied keys, grid keys first."""
        return [*self.grid, *self.random.get("keys", {})]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def trial_genotype(self, trial: Trial) -> str:
        """What an eval trial trains: its varied `genotype` or the spec's, a relative path taken from the spec file."""
        return str(resolve_path(Path(self.path).parent, GENOTYPE_KEY, trial.params.get(GENOTYPE_KEY, self.genotype)))


def resolve_path(spec_dir: Path, key: str, value: Any) -> Any:
    """`value` of a PATH_KEYS key with a relative path made absolute against `spec_dir`; anything else unchanged
    (other keys, non-strings, `~` paths, and genotypes that are not a `.json` path or a path with a `/`: shipped
    names and `Genotype(...)` strings)."""
    if key not in PATH_KEYS or not isinstance(value, str) or not value or Path(value).expanduser().is_absolute():
        return value
    if key == GENOTYPE_KEY and ("(" in value or not (value.endswith(".json") or "/" in value)):
        return value
    return str((spec_dir / value).resolve())


def assignment(key: str, value: Any) -> str:
    """A `--set` assignment; JSON is YAML, so the trial's config reads back exactly this value."""
    return f"{key}={json.dumps(value)}"


def _fail(spec_path: Path, message: str) -> UserError:
    return UserError(f"sweep spec {spec_path}: {message}")


def _relative(spec_path: Path, value: Any, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise _fail(spec_path, f"{key} must be a path to a YAML config, got {value!r}")
    path = Path(value) if Path(value).is_absolute() else spec_path.parent / value
    if not path.is_file():
        raise _fail(spec_path, f"{key}: {path} not found (paths are relative to the spec file)")
    return str(path.resolve())


def _mapping(spec_path: Path, value: Any, key: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and k for k in value):
        raise _fail(spec_path, f"{key} must be a mapping of dotted config keys, got {value!r}")
    return value


def _check_key(spec_path: Path, key: str, where: str, kind: str) -> None:
    if key in OWNED_KEYS:
        raise _fail(spec_path, f"{where}.{key}: the sweep sets {key} from `seeds`; list the seeds there")
    if key == GENOTYPE_KEY and kind != "eval":
        raise _fail(spec_path, f"{where}.{key}: only an eval sweep (kind: eval) varies the genotype")


def _grid(spec_path: Path, raw: Any, kind: str) -> dict[str, list[Any]]:
    grid = _mapping(spec_path, raw, "grid")
    for key, values in grid.items():
        _check_key(spec_path, key, "grid", kind)
        if not isinstance(values, list) or not values:
            raise _fail(spec_path, f"grid.{key} must be a non-empty list of values, got {values!r}")
    return grid


def _distribution(spec_path: Path, key: str, dist: Any) -> None:
    where = f"random.keys.{key}"
    if not isinstance(dist, dict) or len(dist) != 1 or next(iter(dist)) not in DISTRIBUTIONS:
        raise _fail(spec_path, f"{where} must be one of {{choice: [...]}}, {{uniform: [lo, hi]}}, "
                               f"{{loguniform: [lo, hi]}}, {{randint: [lo, hi]}}; got {dist!r}")
    (name, args), = dist.items()
    if name == "choice":
        if not isinstance(args, list) or not args:
            raise _fail(spec_path, f"{where}.choice must be a non-empty list, got {args!r}")
        return
    numbers = isinstance(args, list) and len(args) == 2 and all(
        isinstance(a, (int, float)) and not isinstance(a, bool) for a in args)
    if not numbers or not args[0] < args[1]:
        raise _fail(spec_path, f"{where}.{name} must be [lo, hi] with lo < hi, got {args!r}")
    if name == "loguniform" and args[0] <= 0:
        raise _fail(spec_path, f"{where}.loguniform needs lo > 0, got {args!r}")
    if name == "randint" and not all(isinstance(a, int) for a in args):
        raise _fail(spec_path, f"{where}.randint needs integer bounds, got {args!r}")


def _random(spec_path: Path, raw: Any, kind: str, grid: dict[str, list[Any]]) -> dict[str, Any]:
    section = _mapping(spec_path, raw, "random")
    unknown = sorted(set(section) - {"samples", "seed", "keys"})
    if unknown:
        raise _fail(spec_path, f"unknown key random.{unknown[0]}; valid keys: keys, samples, seed")
    if not section:
        return {}
    samples, seed = section.get("samples", 1), section.get("seed", 0)
    if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
        raise _fail(spec_path, f"random.samples must be a positive integer, got {samples!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise _fail(spec_path, f"random.seed must be an integer, got {seed!r}")
    keys = _mapping(spec_path, section.get("keys"), "random.keys")
    if not keys:
        raise _fail(spec_path, "random.keys is empty; name the keys to draw (or drop the random section)")
    for key, dist in keys.items():
        _check_key(spec_path, key, "random.keys", kind)
        if key in grid:
            raise _fail(spec_path, f"{key} is both in grid and in random.keys; vary it in one place")
        _distribution(spec_path, key, dist)
    return {"samples": samples, "seed": seed, "keys": keys}


def _draw(rng: random.Random, dist: dict[str, Any]) -> Any:
    (name, args), = dist.items()
    if name == "choice":
        return args[rng.randrange(len(args))]
    if name == "randint":
        return rng.randint(args[0], args[1])
    if name == "uniform":
        return rng.uniform(args[0], args[1])
    return math.exp(rng.uniform(math.log(args[0]), math.log(args[1])))


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list) and value and all(v == value[0] for v in value):
        return _short(value[0])  # a per-stage list with one value for every stage
    return json.dumps(value, separators=(",", ":"))


def trial_name(index: int, params: dict[str, Any], seed: int) -> str:
    """`003-alpha=-0.5-seed1`: the index, the varied values by the last part of their keys, and the seed."""
    parts = [f"{key.rsplit('.', 1)[-1]}={_short(value)}" for key, value in params.items()]
    body = re.sub(r"[^A-Za-z0-9.,=_+-]", "", "-".join([*parts, f"seed{seed}"]))
    return f"{index:03d}-{body}"[:NAME_LIMIT]


def expand(fixed: list[str], grid: dict[str, list[Any]], rand: dict[str, Any], seeds: list[int],
           spec_dir: Path) -> list[Trial]:
    """Trials: for each random draw, each grid point (row-major in the spec's key order), each seed. Trial names
    and params keep the values as written; the overrides take relative PATH_KEYS values from `spec_dir`."""
    rng = random.Random(rand.get("seed", 0))
    points = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    trials: list[Trial] = []
    for _ in range(rand.get("samples", 1)):
        for point in points:
            params = {**point, **{key: _draw(rng, dist) for key, dist in rand.get("keys", {}).items()}}
            for seed in seeds:
                index = len(trials)
                varied = [assignment(k, resolve_path(spec_dir, k, v)) for k, v in params.items() if k != GENOTYPE_KEY]
                trials.append(Trial(index, trial_name(index, params, seed), params, seed,
                                    [*fixed, *varied, assignment("run.seed", seed)]))
    return trials


def _seeds(spec_path: Path, raw: Any) -> list[int]:
    seeds = [0] if raw is None else raw
    if (not isinstance(seeds, list) or not seeds or len(set(seeds)) != len(seeds)
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)):
        raise _fail(spec_path, f"seeds must be a non-empty list of distinct integers, got {raw!r}")
    return seeds


def _resources(spec_path: Path, raw: Any) -> dict[str, float]:
    resources = _mapping(spec_path, raw, "resources")
    for key, value in resources.items():
        if key not in RESOURCE_KEYS:
            raise _fail(spec_path, f"unknown key resources.{key}; valid keys: {', '.join(RESOURCE_KEYS)}")
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            raise _fail(spec_path, f"resources.{key} must be a number >= 0, got {value!r}")
    if resources.get("num_cpus", 1) < 1:
        raise _fail(spec_path, f"resources.num_cpus must be >= 1 (one thread at least), got {resources['num_cpus']}")
    return resources


def _probe(spec_path: Path, raw: Any, kind: str) -> Probe | None:
    if raw is None:
        return None
    section = _mapping(spec_path, raw, "probe")
    unknown = sorted(set(section) - {"config", "set"})
    if unknown:
        raise _fail(spec_path, f"unknown key probe.{unknown[0]}; valid keys: config, set")
    if kind != "search":
        raise _fail(spec_path, "probe chains a training after a search; an eval sweep has none")
    overrides = [assignment(k, resolve_path(spec_path.parent, k, v))
                 for k, v in _mapping(spec_path, section.get("set"), "probe.set").items()]
    return Probe(_relative(spec_path, section.get("config"), "probe.config"), overrides)


def _validate_trials(spec: Spec) -> None:
    """Build every trial's config (and probe config) as its run will, so bad keys or values fail now."""
    from nas.engine.search_config import SearchConfig
    from nas.engine.trainer import EVAL_SPACE, EvalConfig
    from search_spaces.darts.genotype import load_genotype

    for trial in spec.trials:
        try:
            if spec.kind == "search":
                cfg = load_config(SearchConfig, spec.base, trial.overrides)
                if spec.probe is not None and cfg.space != EVAL_SPACE.name:
                    raise UserError(f"probe trains {EVAL_SPACE.name} genotypes, but the search space is {cfg.space!r}")
            else:
                load_config(EvalConfig, spec.base, trial.overrides)
                load_genotype(spec.trial_genotype(trial))
        except UserError as err:
            raise _fail(Path(spec.path), f"trial {trial.name}: {err}") from None
    if spec.probe is not None:
        try:
            load_config(EvalConfig, spec.probe.config, spec.probe.overrides)
        except UserError as err:
            raise _fail(Path(spec.path), f"probe: {err}") from None


def configs_digest(base: str, probe: Probe | None) -> str:
    """A digest of what the base (and probe) config says: its parsed YAML, so comments and layout do not count."""
    trees = [read_yaml(base), read_yaml(probe.config) if probe is not None else None]
    return hashlib.sha256(json.dumps(trees, sort_keys=True, default=str).encode()).hexdigest()


def spec_from_dict(data: dict[str, Any]) -> Spec:
    """A Spec back from `Spec.to_dict()` (a sweep directory's saved spec)."""
    probe = data["probe"]
    return Spec(**{**data, "probe": None if probe is None else Probe(**probe),
                   "trials": [Trial(**t) for t in data["trials"]]})


def load_spec(path: str | Path) -> Spec:
    """Read, check and expand a sweep spec; any problem is a one-line UserError."""
    spec_path = Path(path).resolve()
    tree = read_yaml(spec_path)
    unknown = sorted(set(tree) - set(SPEC_KEYS))
    if unknown:
        raise _fail(spec_path, f"unknown key {unknown[0]!r}; valid keys: {', '.join(SPEC_KEYS)}")
    kind = tree.get("kind", "search")
    if kind not in KINDS:
        raise _fail(spec_path, f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    genotype = tree.get("genotype")
    if kind == "search" and genotype is not None:
        raise _fail(spec_path, "genotype belongs to an eval sweep (kind: eval); a search finds its own")
    fixed_map = _mapping(spec_path, tree.get("set"), "set")
    for key in fixed_map:
        _check_key(spec_path, key, "set", kind)
    grid = _grid(spec_path, tree.get("grid"), kind)
    rand = _random(spec_path, tree.get("random"), kind, grid)
    varies_genotype = GENOTYPE_KEY in grid or GENOTYPE_KEY in rand.get("keys", {})
    if kind == "eval" and (genotype is None) == (not varies_genotype):
        raise _fail(spec_path, "an eval sweep names its genotype: `genotype: NAME`, or a grid/random key `genotype`, "
                               "not both")
    fixed = [assignment(k, resolve_path(spec_path.parent, k, v)) for k, v in fixed_map.items()]
    seeds = _seeds(spec_path, tree.get("seeds"))
    base = _relative(spec_path, tree.get("base"), "base")
    probe = _probe(spec_path, tree.get("probe"), kind)
    spec = Spec(path=str(spec_path), base=base, kind=kind,
                genotype=resolve_path(spec_path.parent, GENOTYPE_KEY, genotype), fixed=fixed, grid=grid, random=rand,
                seeds=seeds, probe=probe, resources=_resources(spec_path, tree.get("resources")),
                trials=expand(fixed, grid, rand, seeds, spec_path.parent), config_sha256=configs_digest(base, probe))
    _validate_trials(spec)
    return spec
