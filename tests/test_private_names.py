"""No module takes another module's private names: what another file needs is public (and documented there).

Walks every import statement of the package, the entry points, experiments/ and tests/ with `ast`; a
`from x import _name` of a project module fails (dunder names such as __version__ are public).
"""
from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

PROJECT = ("nas", "search_spaces", "controllers", "genotypes", "search", "train_eval", "conftest")
FOLDERS = ("nas", "search_spaces", "controllers", "genotypes", "experiments", "tests")


def private_imports(path: Path) -> list[str]:
    """`module: name` for every private name that `path` imports from a project module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PROJECT:
            found += [f"{node.module}: {a.name}" for a in node.names
                      if a.name.startswith("_") and not a.name.startswith("__")]
    return found


def test_no_file_imports_a_private_name_of_another() -> None:
    files = sorted([*(p for folder in FOLDERS for p in (ROOT / folder).rglob("*.py")),
                    ROOT / "search.py", ROOT / "train_eval.py"])
    offenders = {p.relative_to(ROOT).as_posix(): names for p in files if (names := private_imports(p))}
    assert not offenders, offenders


def test_the_walker_finds_a_private_import(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("from nas.report.run import _fmt, fmt\nfrom os import _exit\n\ndef f():\n"
                      "    from search_spaces.darts.networks import _Cell\n")
    assert private_imports(source) == ["nas.report.run: _fmt", "search_spaces.darts.networks: _Cell"]
