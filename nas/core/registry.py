"""Looking a plugin up by name: one one-line error, listing the known names, for every registry."""
from __future__ import annotations

from typing import TypeVar

from nas.core.errors import UserError

T = TypeVar("T")


def lookup(registry: dict[str, T], kind: str, name: str) -> T:
    """registry[name], or a UserError naming the known ones."""
    if name not in registry:
        raise UserError(f"unknown {kind} {name!r}; known {kind}s: {', '.join(registry)}")
    return registry[name]
