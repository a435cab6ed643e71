"""Dataclass configs read from YAML with dotted `--set section.key=value` overrides.

Loading checks every key and type against the dataclasses and then calls the config's
`validate()`, so a bad config fails with a one-line UserError before any work starts.
"""
from __future__ import annotations

import contextlib
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from nas.core.accel import amp_error
from nas.core.errors import UserError

T = TypeVar("T")
DEVICES = ("auto", "cpu", "cuda")


@dataclasses.dataclass
class SGDConfig:
    """SGD with momentum and a cosine lr from `lr` to `lr_min`; `grad_clip` is a max grad norm (0: off)."""

    lr: float = 0.025
    lr_min: float = 0.0
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0

    def validate_sgd(self, section: str) -> None:
        """Raise UserError naming `section.field` for the first SGD value that cannot work."""
        checks = [
            (self.lr > 0, f"{section}.lr must be > 0, got {self.lr}"),
            (0 <= self.lr_min <= self.lr, f"{section}.lr_min must be in [0, {section}.lr], got {self.lr_min}"),
            (0 <= self.momentum < 1, f"{section}.momentum must be in [0, 1), got {self.momentum}"),
            (self.weight_decay >= 0, f"{section}.weight_decay must be >= 0, got {self.weight_decay}"),
            (self.grad_clip >= 0, f"{section}.grad_clip must be >= 0 (0 disables it), got {self.grad_clip}"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)


@dataclasses.dataclass
class RunConfigBase:
    """What every `run:` section holds: the seed, where runs go, the device (auto: CUDA when visible), and the GPU-path
    switches (nas/core/accel.py; their defaults are the field's standard choices, see docs/training.md)."""

    seed: int = 0
    out_dir: str = "runs"
    device: str = "auto"
    amp: str | bool = "off"  # off | bf16 (autocast) | fp16 (autocast + GradScaler; CUDA only); YAML reads off as false
    channels_last: bool = True  # the model's weights and every batch in torch.channels_last
    cudnn_benchmark: bool = True  # torch.backends.cudnn.benchmark (CUDA only)
    pin_memory: bool = True  # pinned host batches for the non-blocking copies (CUDA only)
    persistent_workers: bool = False  # loader workers kept between epochs (with data.num_workers > 0)

    def __post_init__(self) -> None:
        if self.amp is False:  # a bare `off` in YAML or --set is the boolean false
            self.amp = "off"

    def validate_device(self) -> None:
        """Raise UserError for an unknown device, or a precision that device cannot run."""
        if self.device not in DEVICES:
            raise UserError(f"run.device {self.device!r} is unknown; choose one of {', '.join(DEVICES)}")
        problem = amp_error(self.amp, self.device)
        if problem is not None:
            raise UserError(problem)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotation `tp` (int, float, bool, str, list/tuple of those, a union of those (the
    first type that fits wins), Optional, dataclass)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        *others, last = [t for t in options if t is not type(None)]
        for option in others:
            with contextlib.suppress(UserError):
                return _coerce(value, option, where)
        return _coerce(value, last, where)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise UserError(f"config error: {where} must be a mapping of keys, got {value!r}")
        return build_dataclass(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"config error: {where} must be a list, got {value!r}")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise UserError(f"config error: {where} must have {len(args)} entries, got {len(value)}")
            return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        items = [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if tp is Any:
        return value
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp in (bool, str) and isinstance(value, tp):
        return value
    raise UserError(f"config error: {where} must be {_type_name(tp)}, got {value!r}")


def build_dataclass(cls: type[T], values: dict[str, Any], where: str = "") -> T:
    """Instantiate dataclass `cls` from a mapping, refusing unknown keys and wrong types."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - names)
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise UserError(f"config error: unknown key {key!r}; valid keys{' of ' + where if where else ''}: "
                        f"{', '.join(sorted(names))}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in values.items()}
    return cls(**kwargs)


def _set_dotted(tree: dict[str, Any], assignment: str) -> None:
    key, sep, raw = assignment.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set {assignment!r}: write it as section.key=value")
    parts = key.strip().split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UserError(f"--set {assignment!r}: {part!r} is a value, not a section")
        node = child
    try:
        node[parts[-1]] = yaml.safe_load(raw)
    except yaml.YAMLError:
        raise UserError(f"--set {assignment!r}: the value is not valid YAML") from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML file's top-level mapping; a missing or malformed file is a UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} not found; pass an existing YAML file with -c (see experiments/)")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"config file {path} is not valid YAML{at}") from None
    if not isinstance(tree, dict):
        raise UserError(f"config file {path} must hold a mapping of sections, got {type(tree).__name__}")
    return tree


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> T:
    """Read `cls` from YAML (defaults where absent), apply `--set` overrides, then validate."""
    tree = read_yaml(path) if path is not None else {}
    for assignment in overrides:
        _set_dotted(tree, assignment)
    from_tree = getattr(cls, "from_tree", None)  # configs whose sections depend on their contents build themselves
    config = from_tree(tree) if from_tree is not None else build_dataclass(cls, tree)
    validate = getattr(config, "validate", None)
    if validate is not None:
        validate()
    return config


def to_dict(config: Any) -> dict[str, Any]:
    """A config as plain data (for records, checkpoints and YAML dumps)."""
    return dataclasses.asdict(config)
