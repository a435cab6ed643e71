"""Every search space by name: adding a space is its module plus one line here."""
from __future__ import annotations

from nas.core.registry import lookup
from search_spaces.base import SearchSpace
from search_spaces.darts.space import DartsSpace
from search_spaces.nb201 import NB201Space

SPACES: dict[str, type[SearchSpace]] = {
    DartsSpace.name: DartsSpace,
    NB201Space.name: NB201Space,
}


def space_class(name: str) -> type[SearchSpace]:
    """The space registered as `name`; UserError listing the known spaces otherwise."""
    return lookup(SPACES, "space", name)
