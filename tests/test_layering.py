"""The architecture's floors, checked two ways: by every import statement (the ast, lazy imports included) and by
what importing each module really loads (sys.modules in a fresh interpreter, so indirect imports count).

Floors, lowest first; a module may import its own floor and lower ranks only (two floors of one rank never import
each other):

0. nas.core (errors, registry, architecture types, device, distributed, metrics, BatchNorm, checkpoints, config,
   data, records, the latency table format, the training-free estimators) and the shipped genotypes/;
1. search_spaces and controllers: spaces and controllers build on nas.core only, and never on each other;
2. nas.report (the TensorBoard tags and the run report) and nas.benchmarks (NB201 table, latency measurement,
   one-shot and ranking studies);
3. nas.engine (search loop, search config, selection, dominance, trainer);
4. nas.sweep;
5. nas.cli and the root entry points search.py and train_eval.py.

Also: nas/ reaches a space or a controller through its registry and base interface (plus the op table
search_spaces/ops.py), except the DARTS genotype and its drawing, which the genotype tools work on, and the studies
of nas/benchmarks/, which are about one space by definition; no import circles; nothing imports experiments/.
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

PACKAGES = ("nas", "search_spaces", "controllers", "genotypes")
FLOORS: dict[str, int] = {
    "nas.core": 0, "genotypes": 0,
    "search_spaces": 1, "controllers": 1,
    "nas.report": 2, "nas.benchmarks": 2,
    "nas.engine": 3,
    "nas.sweep": 4,
    "nas.cli": 5, "search": 5, "train_eval": 5,
}
NAS_MAY_IMPORT = {"search_spaces.registry", "search_spaces.base", "search_spaces.ops", "controllers.registry",
                  "controllers.base", "search_spaces.darts.genotype", "search_spaces.darts.drawing"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    files = [p for package in PACKAGES for p in (ROOT / package).rglob("*.py")]
    return {module_name(p): p for p in sorted(files + [ROOT / "search.py", ROOT / "train_eval.py"])}


MODULES = project_modules()


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


def floor_of(module: str) -> str | None:
    """The floor (a key of FLOORS) holding `module`, None for a module outside the project or a bare package."""
    homes = [f for f in FLOORS if module == f or module.startswith(f + ".")]
    return max(homes, key=len) if homes else None


def arrow_error(source: str, target: str) -> str | None:
    """Why `source` may not import `target`, or None when it may."""
    a, b = floor_of(source), floor_of(target)
    if a is None or b is None or a == b:
        return None
    if FLOORS[b] >= FLOORS[a]:
        return f"{source} (floor {a}) imports {target} (floor {b}), which is not below it"
    return None


def project_imports(path: Path) -> set[str]:
    """The project modules `path` imports (a `from package import module` counts as the module)."""
    return {m for m in imported_modules(path) if m in MODULES}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_follow_the_floors(module: str) -> None:
    path = MODULES[module]
    modules = imported_modules(path)
    assert not any(m.split(".")[0] == "experiments" for m in modules), f"{module} imports experiments/"
    errors = [e for m in project_imports(path) if (e := arrow_error(module, m))]
    assert not errors, errors
    if module.startswith("nas.") and not module.startswith("nas.benchmarks."):
        reached = {m for m in project_imports(path) if floor_of(m) in ("search_spaces", "controllers")}
        assert not reached - NAS_MAY_IMPORT, f"{module} reaches {sorted(reached - NAS_MAY_IMPORT)}; use the registries"


def test_no_import_circles() -> None:
    graph = {m: project_imports(p) - {m} for m, p in MODULES.items()}
    seen: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(m: str, path: list[str]) -> None:
        seen[m] = 1
        for n in sorted(graph[m]):
            assert seen.get(n) != 1, "import circle: " + " -> ".join(path[path.index(n):] + [n])
            if n not in seen:
                visit(n, path + [n])
        seen[m] = 2

    for m in sorted(graph):
        if m not in seen:
            visit(m, [m])


# Imported in the parent before forking: third-party only, so each child starts with no project module loaded.
_LOADED_PROBE = """
import json, os, sys
import matplotlib, numpy, torch, torch.utils.tensorboard
modules, ours = json.loads(sys.argv[1]), set(json.loads(sys.argv[2]))
assert not ours & set(sys.modules), "a project module was loaded before forking"
result = {}
for module in modules:
    read, write = os.pipe()
    if os.fork() == 0:
        os.close(read)
        __import__(module)
        os.write(write, json.dumps(sorted(ours & set(sys.modules))).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        result[module] = json.loads(f.read() or "null")
    os.wait()
print(json.dumps(result))
"""


@pytest.fixture(scope="module")
def loaded_by() -> dict[str, list[str]]:
    """For every project module: the project modules that importing it alone loads."""
    modules = sorted(m for m in MODULES if floor_of(m) not in (None, "search", "train_eval"))
    done = subprocess.run([sys.executable, "-c", _LOADED_PROBE, json.dumps(modules), json.dumps(sorted(MODULES))],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, check=True)
    return json.loads(done.stdout)


@pytest.mark.parametrize("floor", sorted(f for f in FLOORS if f not in ("search", "train_eval")))
def test_importing_a_module_loads_only_its_floor_and_lower_ones(floor: str, loaded_by) -> None:
    errors = [e for module, loaded in loaded_by.items() if floor_of(module) == floor
              for other in loaded or [] if (e := arrow_error(module, other))]
    assert all(loaded_by[m] is not None for m in loaded_by if floor_of(m) == floor)
    assert not errors, errors


def test_a_controller_loads_no_space_and_a_space_no_controller(loaded_by) -> None:
    for module, loaded in loaded_by.items():
        other = {"controllers": "search_spaces", "search_spaces": "controllers"}.get(module.split(".")[0])
        if other:
            assert not [m for m in loaded if m.split(".")[0] == other], f"importing {module} loads {other}"


def test_the_checks_can_fail(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("import a.b\nfrom c.d import e\nfrom . import local\n\ndef f():\n    import g\n")
    assert imported_modules(source) == {"a.b", "c.d", "c.d.e", "g"}
    assert arrow_error("controllers.reward", "nas.benchmarks.latency")
    assert arrow_error("controllers.reward", "search_spaces.registry")
    assert arrow_error("nas.engine.search_loop", "nas.sweep.driver")
    assert arrow_error("nas.report.run", "nas.benchmarks.latency")
    assert arrow_error("nas.engine.search_loop", "nas.core.errors") is None
    for target in ("search_spaces.base", "controllers.reward", "nas.engine.search_loop"):  # estimators: core only
        assert arrow_error("nas.core.estimators.reward", target)
    assert arrow_error("controllers.reward", "nas.core.estimators.registry") is None
