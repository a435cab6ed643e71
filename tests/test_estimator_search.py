"""Training-free estimators in the search (docs/estimators.md): the end-of-stage rescoring with an estimator reward,
progressive pruning by an estimator (controllers/estimator_pruning.py), the best of N random cells by an estimator
(controllers/random_estimator.py), and the NB201 study's estimator methods, which never read the table."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from controllers.base import ArchStepContext, StageContext
from controllers.registry import CONTROLLERS
from nas.core.config import build_dataclass
from nas.engine.selection import stage_candidates
from search_spaces.nb201 import NB201Space

BATCH = (torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.arange(16) % 10)


def tiny_nb201() -> NB201Space:
    return NB201Space(C=4, in_channels=1, eval_C=4, eval_N=1, image_size=8)


def controller(name: str, space: NB201Space, kept: Any, settings: dict[str, dict[str, Any]]) -> Any:
    cls = CONTROLLERS[name]
    sections = {section: build_dataclass(kind, dict(settings.get(section, {})), section)
                for section, kind in cls.config_sections.items()}
    cls.validate_config(sections, 1)
    ctx = StageContext(sections=sections, space=space, kept_ops=kept, stage=0, num_stages=1,
                       generator=torch.Generator().manual_seed(0))
    return cls.from_config(ctx)


def steps(c: Any, model: Any, n: int) -> None:
    for step in range(n):
        c.arch_step(ArchStepContext(model=model, criterion=F.cross_entropy, train_batch=None, val_batch=BATCH,
                                    w_optimizer=None, lr=0.0, stage=0, step=step))


def test_stage_rescoring_with_an_estimator_reward_uses_the_estimator_not_the_untrained_supernet() -> None:
    torch.manual_seed(0)
    space = tiny_nb201()
    kept = space.initial_kept_ops()
    c = controller("reinforce", space, kept, {
        "reinforce": {"sample": "edges", "epsilon": [0.2]},
        "reward": {"estimator": "params", "alpha": [0.0], "p_base": [1.0]}})
    steps(c, space.build_supernet(kept, 1), 3)
    supernet_calls: list[Any] = []

    def evaluate(**kwargs: Any) -> tuple[float, float]:  # the untrained supernet: every cell alike
        supernet_calls.append(kwargs)
        return 2.3, 10.0

    argmax = c.architecture(space, kept)
    candidates, check = stage_candidates(c, space, kept, argmax, evaluate, top_k=5, rescored=10)
    assert not supernet_calls
    rescored = [cand for cand in candidates if "val_acc" in cand] + [check["argmax"]]
    for cand in rescored:
        rank = c.estimator_reward.rank(cand["genotype"], record=False)
        assert cand["val_acc"] == round(100 * rank, 3) and cand["val_reward"] == round(rank, 6)
        assert cand["rescored_by"] == "estimator params"
    best = max(rescored, key=lambda cand: cand["val_reward"])
    assert best["params"] == max(cand["params"] for cand in rescored)
