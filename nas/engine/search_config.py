"""The search config: the engine's sections plus the sections of the chosen space and controller.

`space:` and `controller:` name plugins from the registries; each plugin declares the YAML sections it reads
(`config_sections`), and those are built and validated through it. The whole config is checked before any
work starts.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from controllers.registry import CONTROLLERS, controller_class
from nas.core.config import RunConfigBase, SGDConfig, build_dataclass
from nas.core.data import DataConfig
from nas.core.errors import UserError
from nas.engine.selection import SelectConfig
from search_spaces.base import SearchSpace
from search_spaces.registry import SPACES, space_class


@dataclass
class StagesConfig:
    """The `stages:` section: one entry per progressive stage (P-DARTS defaults).

    `skip_dropout` is each stage's regularisation rate, which the space applies (DARTS: dropout after skips).
    """

    layers: list[int] = field(default_factory=lambda: [5, 11, 17])
    epochs: list[int] = field(default_factory=lambda: [25, 25, 25])
    warmup_epochs: list[int] = field(default_factory=lambda: [10, 10, 10])
    keep: list[int] = field(default_factory=lambda: [5, 3, 1])
    skip_dropout: list[float] = field(default_factory=lambda: [0.0, 0.4, 0.7])


@dataclass
class OptimConfig(SGDConfig):
    """The `optim:` section: SGD on the supernet weights, cosine per stage."""


@dataclass
class RunConfig(RunConfigBase):
    """The `run:` section: seed, device, where and how often to write."""

    checkpoint_every: int = 0
    log_every: int = 10
    draw: bool = True


@dataclass
class SearchConfig:
    """A whole search: which space and controller, the engine's sections and the plugins' sections."""

    controller: str = "gradient"
    space: str = "darts"
    data: DataConfig = field(default_factory=DataConfig)
    stages: StagesConfig = field(default_factory=StagesConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    search: SelectConfig = field(default_factory=SelectConfig)
    space_sections: dict[str, Any] = field(default_factory=dict, init=False)
    controller_sections: dict[str, Any] = field(default_factory=dict, init=False)

    @classmethod
    def from_tree(cls, tree: dict[str, Any]) -> SearchConfig:
        """Build from a YAML mapping: the plugins named in it build their own sections."""
        tree = dict(tree)
        names = {key: tree.get(key, getattr(cls, key)) for key in ("space", "controller")}
        for key, value in names.items():
            if not isinstance(value, str):
                raise UserError(f"config error: {key} must be a name, got {value!r}")
        space_cls, controller_cls = space_class(names["space"]), controller_class(names["controller"])
        own = {"space": space_cls.config_sections, "controller": controller_cls.config_sections}
        engine = {f.name for f in dataclasses.fields(cls) if f.init}
        for key in tree:
            if key in engine or key in own["space"] or key in own["controller"]:
                continue
            owner = _owner(key)
            if owner is not None:
                raise UserError(f"config error: section {key!r} belongs to the {owner[0]} {owner[1]!r}, but this "
                                f"search uses {owner[0]} {names[owner[0]]!r}; drop the section or change "
                                f"{owner[0]}:")
            valid = sorted(engine | set(own["space"]) | set(own["controller"]))
            raise UserError(f"config error: unknown key {key!r}; valid keys: {', '.join(valid)}")
        sections = {kind: {name: _section(section_cls, tree.pop(name, None), name)
                           for name, section_cls in declared.items()} for kind, declared in own.items()}
        cfg = build_dataclass(cls, tree)
        cfg.space_sections, cfg.controller_sections = sections["space"], sections["controller"]
        return cfg

    def to_tree(self) -> dict[str, Any]:
        """Plain data that from_tree reads back (config.yaml, checkpoints, records)."""
        tree = {f.name: dataclasses.asdict(v) if dataclasses.is_dataclass(v := getattr(self, f.name)) else v
                for f in dataclasses.fields(self) if f.init}
        for sections in (self.space_sections, self.controller_sections):
            tree.update({name: dataclasses.asdict(section) for name, section in sections.items()})
        return tree

    def __getattr__(self, name: str) -> Any:
        """A plugin section by its YAML name (cfg.model, cfg.reinforce, ...)."""
        for sections in (self.__dict__.get("space_sections", {}), self.__dict__.get("controller_sections", {})):
            if name in sections:
                return sections[name]
        raise AttributeError(name)

    @property
    def num_stages(self) -> int:
        return len(self.stages.layers)

    def validate(self) -> None:
        space_cls, controller_cls = space_class(self.space), controller_class(self.controller)
        self.data.validate()
        space_cls.validate_config(self.space_sections)
        self._validate_stages(space_cls.ops_per_edge(self.space_sections))
        self.optim.validate_sgd("optim")
        self.run.validate_device()
        if self.run.checkpoint_every < 0 or self.run.log_every <= 0:
            raise UserError("run.checkpoint_every must be >= 0 and run.log_every positive")
        controller_cls.validate_config(self.controller_sections, self.num_stages)
        trains = getattr(space_cls.eval_network, "__func__", None) is not SearchSpace.eval_network.__func__
        self.search.validate(controller_cls.scores_samples, self.controller, trains)

    def _validate_stages(self, ops_per_edge: int) -> None:
        s = self.stages
        lists = {"layers": s.layers, "epochs": s.epochs, "warmup_epochs": s.warmup_epochs, "keep": s.keep,
                 "skip_dropout": s.skip_dropout}
        n = len(s.layers)
        for key, values in lists.items():
            if len(values) != n:
                raise UserError(f"stages.{key} has {len(values)} entries but stages.layers has {n}; "
                                f"give one per stage")
        if n == 0:
            raise UserError("stages.layers is empty; give at least one stage")
        fewest = space_class(self.space).min_layers
        if any(v < fewest for v in s.layers):
            raise UserError(f"stages.layers must be >= {fewest} for the {self.space} space, got {s.layers}")
        if any(v <= 0 for v in s.epochs):
            raise UserError(f"stages.epochs must be positive, got {s.epochs}")
        if any(not 0 <= w <= e for w, e in zip(s.warmup_epochs, s.epochs)):
            raise UserError(f"stages.warmup_epochs must be between 0 and the stage's epochs, got {s.warmup_epochs}")
        if any(not 0.0 <= p < 1.0 for p in s.skip_dropout):
            raise UserError(f"stages.skip_dropout rates must be in [0, 1), got {s.skip_dropout}")
        previous = ops_per_edge
        for stage, keep in enumerate(s.keep, start=1):
            if not 1 <= keep < previous:
                raise UserError(f"stages.keep[{stage - 1}]={keep}: stage {stage} searches {previous} ops per "
                                f"edge, so it must keep between 1 and {previous - 1}")
            previous = keep


def _section(cls: type, value: Any, name: str) -> Any:
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise UserError(f"config error: {name} must be a mapping of keys, got {value!r}")
    return build_dataclass(cls, value, name)


def _owner(section: str) -> tuple[str, str] | None:
    """(kind, plugin name) of the registered plugin that declares `section`, if any."""
    for kind, registry in (("space", SPACES), ("controller", CONTROLLERS)):
        for name, plugin in registry.items():
            if section in plugin.config_sections:
                return kind, name
    return None
