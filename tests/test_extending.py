"""docs/extending.md's worked example is real: its controller, registered with one line, runs a search."""
from __future__ import annotations

import re
from dataclasses import dataclass

import pytest
import torch
from conftest import ROOT, TINY_SEARCH

import search
from controllers import registry
from controllers.base import Controller
from nas.core.errors import UserError
from nas.core.records import read_record


def worked_example() -> type[Controller]:
    """The controller class of docs/extending.md's worked example, executed from the document's code block."""
    text = (ROOT / "docs" / "extending.md").read_text(encoding="utf-8")
    section = text[text.index("## A controller (worked example)"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace = {"dataclass": dataclass, "torch": torch, "UserError": UserError, "Controller": Controller}
    exec(compile(code, "docs/extending.md", "exec"), namespace)  # noqa: S102 - our own document's example
    return namespace["RandomPathsController"]


def test_the_worked_example_controller_runs_a_search(tmp_path, monkeypatch) -> None:
    cls = worked_example()
    monkeypatch.setitem(registry.CONTROLLERS, cls.name, cls)  # the registry line
    config = tmp_path / "random.yaml"
    config.write_text("controller: random_paths\nrandom_paths:\n  candidates: 3\n")
    settings = [s for s in TINY_SEARCH if not s.startswith("stages.epochs")] + ["stages.epochs=[1,1,1]"]
    assert search.main(["-c", str(config), "--run-dir", str(tmp_path / "run"), "--set", *settings]) == 0
    record = read_record(tmp_path / "run" / "genotype.json")
    assert record["search"]["controller"] == "random_paths" and len(record["search"]["stages"]) == 3
    with pytest.raises(SystemExit) as exit_info:
        search.main(["-c", str(config), "--set", "random_paths.candidates=0"])
    assert exit_info.value.code == 2
