"""The search config: one dataclass per YAML section, validated as a whole before any work starts."""
from __future__ import annotations

from dataclasses import dataclass, field

from controllers.gradient import GradientConfig
from controllers.reinforce import ReinforceConfig
from controllers.reward import RewardConfig
from nas.config import RunConfigBase, SGDConfig
from nas.data import DataConfig
from nas.errors import UserError
from search_spaces.ops import DARTS_OPS, canonical_op_name

CONTROLLERS = ("gradient", "reinforce")
SPACES = ("darts",)


@dataclass
class ModelConfig:
    """The `model:` section: the searched space and the scale of the supernet."""

    space: str = "darts"
    C: int = 16
    steps: int = 4
    multiplier: int = 4
    stem_multiplier: int = 3
    normal_ops: list[str] = field(default_factory=lambda: list(DARTS_OPS))
    reduce_ops: list[str] = field(default_factory=lambda: list(DARTS_OPS))
    max_skip: int = 2
    eval_C: int = 36
    eval_layers: int = 20


@dataclass
class StagesConfig:
    """The `stages:` section: one entry per progressive stage (P-DARTS defaults)."""

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
    """A whole search: which controller learns the architecture and every section's settings."""

    controller: str = "gradient"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    stages: StagesConfig = field(default_factory=StagesConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    gradient: GradientConfig = field(default_factory=GradientConfig)
    reinforce: ReinforceConfig = field(default_factory=ReinforceConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    run: RunConfig = field(default_factory=RunConfig)

    @property
    def num_stages(self) -> int:
        return len(self.stages.layers)

    def validate(self) -> None:
        if self.controller not in CONTROLLERS:
            raise UserError(f"controller must be one of {', '.join(CONTROLLERS)}, got {self.controller!r}")
        if self.model.space not in SPACES:
            raise UserError(f"model.space must be one of {', '.join(SPACES)}, got {self.model.space!r}")
        self.data.validate()
        self._validate_model()
        self._validate_stages()
        self.optim.validate_sgd("optim")
        self.run.validate_device()
        if self.run.checkpoint_every < 0 or self.run.log_every <= 0:
            raise UserError("run.checkpoint_every must be >= 0 and run.log_every positive")
        if self.controller == "gradient":
            self.gradient.validate()
        else:
            self.reinforce.validate(self.num_stages)
            self.reward.validate(self.num_stages)

    def _validate_model(self) -> None:
        m = self.model
        for name in ("normal_ops", "reduce_ops"):
            ops = getattr(m, name)
            try:
                canonical = [canonical_op_name(op) for op in ops]
            except ValueError as err:
                raise UserError(f"model.{name}: {err}") from None
            if len(set(canonical)) != len(canonical) or len(canonical) < 2:
                raise UserError(f"model.{name} must list at least 2 distinct ops, got {ops}")
            setattr(m, name, canonical)
        if m.C <= 0 or m.C % 2:
            raise UserError(f"model.C must be a positive even number (FactorizedReduce halves it), got {m.C}")
        if m.steps <= 0 or not 0 < m.multiplier <= m.steps or m.max_skip < 0:
            raise UserError("model.steps must be positive, 0 < model.multiplier <= model.steps, model.max_skip >= 0")

    def _validate_stages(self) -> None:
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
        if any(v < 3 for v in s.layers):
            raise UserError(f"stages.layers must be >= 3 (two reduction cells plus one normal), got {s.layers}")
        if any(v <= 0 for v in s.epochs):
            raise UserError(f"stages.epochs must be positive, got {s.epochs}")
        if any(not 0 <= w <= e for w, e in zip(s.warmup_epochs, s.epochs)):
            raise UserError(f"stages.warmup_epochs must be between 0 and the stage's epochs, got {s.warmup_epochs}")
        if any(not 0.0 <= p < 1.0 for p in s.skip_dropout):
            raise UserError(f"stages.skip_dropout rates must be in [0, 1), got {s.skip_dropout}")
        fewest = min(len(self.model.normal_ops), len(self.model.reduce_ops))
        previous = fewest
        for stage, keep in enumerate(s.keep, start=1):
            if not 1 <= keep < previous:
                raise UserError(f"stages.keep[{stage - 1}]={keep}: stage {stage} searches {previous} ops per "
                                f"edge, so it must keep between 1 and {previous - 1}")
            previous = keep
