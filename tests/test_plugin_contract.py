"""Every registered space and controller passes the same contract: build, forward in each mode, derive, prune,
record and state round trips, and a killed tiny search that resumes exactly. A new plugin is tested here the
moment it is registered (add its tiny settings to TINY when its defaults are too big for a test)."""
from __future__ import annotations

import io
import json
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from conftest import nth_mid_epoch_checkpoint

import search
from controllers.base import ArchStepContext, StageContext
from controllers.registry import CONTROLLERS
from nas.core.config import build_dataclass
from nas.core.errors import UserError
from nas.core.records import read_record
from nas.report.monitor import tag_kinds
from search_spaces.base import SearchSpace
from search_spaces.registry import SPACES

DATA = SimpleNamespace(in_channels=1, size=8, num_classes=10)  # digits
TINY: dict[str, dict[str, Any]] = {  # per plugin, the sections that make it small enough for a test
    "darts": {"model": {"C": 4, "eval_C": 4, "eval_layers": 3}},
    "nb201": {"model": {"C": 4}},
    "estimator_pruning": {"estimator_pruning": {"estimator": "params", "samples": [8, 8], "per_step": 1}},
    "random_estimator": {"random_estimator": {"estimator": "params", "candidates": 8, "per_step": 1}},
}
SCORES_NETWORKS = {"estimator_pruning", "random_estimator"}  # controllers that score the space's scoring_network
COMBINED = {("nb201", "reinforce"): {"reinforce": {"sample": "edges"}}}  # NB201 cells use every edge
NUM_STAGES = 2


def sections(plugin: Any, overrides: dict[str, Any]) -> dict[str, Any]:
    return {name: build_dataclass(cls, dict(overrides.get(name, {})), name) for name, cls in
            plugin.config_sections.items()}


def tiny_space(name: str) -> Any:
    cls = SPACES[name]
    built = sections(cls, TINY.get(name, {}))
    cls.validate_config(built)
    return cls.from_config(built, DATA)


def controller_settings(name: str, space_name: str) -> dict[str, dict[str, Any]]:
    """The controller's sections for a two-stage test: per-stage lists (3 P-DARTS stages by default) cut to two,
    plus what the space needs."""
    settings: dict[str, dict[str, Any]] = {}
    for section_name, cls in CONTROLLERS[name].config_sections.items():
        settings[section_name] = {key: value[:NUM_STAGES] for key, value in vars(cls()).items()
                                  if isinstance(value, list) and len(value) == 3}
    for section_name, values in TINY.get(name, {}).items():
        settings.setdefault(section_name, {}).update(values)
    for section_name, values in COMBINED.get((space_name, name), {}).items():
        settings.setdefault(section_name, {}).update(values)
    return settings


def tiny_controller(name: str, space_name: str, space: Any, kept: Any, generator: torch.Generator) -> Any:
    cls = CONTROLLERS[name]
    built = sections(cls, controller_settings(name, space_name))
    cls.validate_config(built, NUM_STAGES)
    ctx = StageContext(sections=built, space=space, kept_ops=kept, stage=0, num_stages=NUM_STAGES,
                       generator=generator)
    return cls.from_config(ctx)


@pytest.mark.parametrize("name", list(SPACES))
def test_space_builds_runs_derives_prunes_and_round_trips(name: str) -> None:
    torch.manual_seed(0)
    space = tiny_space(name)
    kept = space.initial_kept_ops()
    model = space.build_supernet(kept, layers=max(space.min_layers, 3))
    x, y = torch.randn(4, DATA.in_channels, DATA.size, DATA.size), torch.randint(10, (4,))
    logits = {g: torch.randn(len(edges), len(edges[0]), requires_grad=True) for g, edges in kept.items()}
    weights = {g: torch.softmax(a, -1) for g, a in logits.items()}
    F.cross_entropy(model(x, weights=weights), y).backward()
    assert all(a.grad is not None and a.grad.abs().sum() > 0 for a in logits.values())
    probs = {g: w.detach() for g, w in weights.items()}
    arch = space.derive(probs, kept)
    path = space.architecture_path(arch, kept)
    assert model(x, path=path).shape == (4, DATA.num_classes)
    back = space.architecture_path(space.path_architecture(path, kept), kept)  # the same edges and ops
    assert all(torch.equal(back[g], path[g]) for g in path)
    record = json.loads(json.dumps(space.arch_to_record(arch)))
    assert space.format_arch(space.arch_from_record(record)) == space.format_arch(arch)
    assert space.params_millions(arch) > 0 and space.flops_millions(arch) > 0
    pruned = space.prune(probs, kept, 2, drop_none_first=False)
    assert all(len(ops) == 2 and set(ops) <= set(before) for g in kept for ops, before in zip(pruned[g], kept[g]))


@pytest.mark.parametrize("space_name", list(SPACES))
@pytest.mark.parametrize("name", list(CONTROLLERS))
def test_controller_runs_steps_outputs_and_round_trips_its_state(name: str, space_name: str) -> None:
    torch.manual_seed(0)
    space = tiny_space(space_name)
    kept = space.initial_kept_ops()
    model = space.build_supernet(kept, layers=max(space.min_layers, 3))
    generator = torch.Generator().manual_seed(0)
    if name in SCORES_NETWORKS and type(space).scoring_network is SearchSpace.scoring_network:
        with pytest.raises(UserError, match="builds no network"):  # refused before any step
            tiny_controller(name, space_name, space, kept, generator)
        return
    controller = tiny_controller(name, space_name, space, kept, generator)
    for kwargs in (controller.weight_forward_kwargs(), controller.eval_forward_kwargs()):
        assert model(torch.randn(2, 1, 8, 8), **kwargs).shape == (2, DATA.num_classes)
    batch = (torch.randn(16, 1, 8, 8), torch.randint(10, (16,)))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step(c: Any) -> dict[str, float]:
        torch.manual_seed(1)
        return c.arch_step(ArchStepContext(model=model, criterion=F.cross_entropy, train_batch=batch,
                                           val_batch=batch, w_optimizer=opt, lr=0.01, stage=0, step=0))

    scalars = step(controller)
    documented = tag_kinds()["scalar"]
    assert scalars and all(f"stage{{s}}/{key}" in documented for key in scalars), scalars
    assert space.format_arch(controller.architecture(space, kept))
    buffer = io.BytesIO()
    torch.save(controller.state_dict(), buffer)
    buffer.seek(0)
    restored_generator = torch.Generator().manual_seed(99)
    restored = tiny_controller(name, space_name, space, kept, restored_generator)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    restored_generator.set_state(generator.get_state())  # the engine checkpoints the stage's generator itself
    assert all(torch.equal(a, b) for a, b in zip(controller.parameters(), restored.parameters()))
    step(controller), step(restored)
    assert all(torch.equal(a, b) for a, b in zip(controller.parameters(), restored.parameters()))


PARTIAL = ("model.mixture=partial", "model.partial_k=2", "model.edge_norm=true")  # PC-DARTS, K=2 at C=4 (both spaces)
RESUME_CASES = ([("darts", name, ()) for name in CONTROLLERS] + [(name, "gradient", ()) for name in SPACES
                                                                 if name != "darts"]
                + [("darts", "gradient", (*PARTIAL, "gradient.order=2")), ("darts", "gdas", PARTIAL),
                   ("nb201", "gradient", PARTIAL)])


@pytest.mark.parametrize("space_name, name, extra", RESUME_CASES,
                         ids=[f"{s}-{n}" + ("-partial" if e else "") for s, n, e in RESUME_CASES])
def test_a_killed_tiny_search_resumes_exactly(space_name: str, name: str, extra: tuple[str, ...], tmp_path,
                                              kill_and_resume) -> None:
    settings = [f"space={space_name}", f"controller={name}", "data.batch_size=96", "stages.layers=[3,3]",
                "stages.epochs=[1,1]", "stages.warmup_epochs=[0,0]", "stages.keep=[3,1]",
                "stages.skip_dropout=[0,0.4]", "run.checkpoint_every=3", "run.draw=false", *extra]
    plugin_settings = {**TINY.get(space_name, {}), **controller_settings(name, space_name)}
    settings += [f"{section}.{key}={json.dumps(value)}" for section, values in plugin_settings.items()
                 for key, value in values.items()]
    config = tmp_path / "tiny.yaml"
    config.write_text("data:\n  dataset: digits\n")

    def run(run_dir) -> int:
        return search.main(["-c", str(config), "--run-dir", str(run_dir), "--set", *settings])

    assert run(tmp_path / "reference") == 0
    assert kill_and_resume(run, tmp_path / "killed", nth_mid_epoch_checkpoint(2)) == 0
    expected, got = (read_record(tmp_path / run_dir / "genotype.json") for run_dir in ("reference", "killed"))
    assert got["search"]["stages"] == expected["search"]["stages"]
    assert got["genotype"] == expected["genotype"]

