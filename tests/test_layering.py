"""The architecture's layering, read from every module's import statements (the ast, not by running it).

- search_spaces never imports controllers, and controllers never imports search_spaces: they share only the
  neutral types of nas/arch_types.py and the errors of nas/errors.py.
- nas/ reaches spaces and controllers only through their registries and base interfaces (plus the op table
  search_spaces/ops.py, which is no space). The one exception is the one-shot study (nas/oneshot.py), which is
  about the chain SuperNet of search_spaces/chain.py by definition.
- Nothing imports experiments/ (its scripts use the packages; tests run them as scripts).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import ROOT

PACKAGES = ("nas", "search_spaces", "controllers", "genotypes", "tests")
NAS_MAY_IMPORT = {"search_spaces.registry", "search_spaces.base", "search_spaces.ops", "controllers.registry",
                  "controllers.base"}
NAS_EXCEPTIONS = {"nas/oneshot.py": {"search_spaces.chain"}}


def imported_modules(path: Path) -> set[str]:
    """Every module an import statement in `path` names (`from a.b import c` gives a.b and a.b.c)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def project_files() -> list[Path]:
    files = [p for package in PACKAGES for p in (ROOT / package).rglob("*.py")]
    return sorted(files + [ROOT / "search.py", ROOT / "train_eval.py", ROOT / "setup.py"])


def _top(module: str) -> str:
    return module.split(".")[0]


@pytest.mark.parametrize("path", project_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_imports_follow_the_layering(path: Path) -> None:
    where = path.relative_to(ROOT).as_posix()
    modules = imported_modules(path)
    assert not any(_top(m) == "experiments" for m in modules), f"{where} imports experiments/"
    if where.startswith("search_spaces/"):
        assert not any(_top(m) == "controllers" for m in modules), f"{where}: a space imports a controller"
    if where.startswith("controllers/"):
        assert not any(_top(m) == "search_spaces" for m in modules), f"{where}: a controller imports a space"
    if where.startswith("nas/"):
        allowed = NAS_MAY_IMPORT | NAS_EXCEPTIONS.get(where, set())
        plugin_modules = {m for m in modules if _top(m) in ("search_spaces", "controllers") and m.count(".") == 1}
        reached = plugin_modules - allowed
        assert not reached, f"{where} reaches {sorted(reached)} directly; go through the registries"


def test_the_walker_sees_every_kind_of_import(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("import a.b\nfrom c.d import e\nfrom . import local\n\ndef f():\n    import g\n")
    assert imported_modules(source) == {"a.b", "c.d", "c.d.e", "g"}
