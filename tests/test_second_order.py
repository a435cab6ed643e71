"""Second-order DARTS with P-DARTS skip dropout on: the finite-difference architecture gradient against the
exact unrolled gradient (double backward through the virtual step, the same dropout masks), and arch clipping."""
from __future__ import annotations

from pathlib import Path
from unittest.mock import patch

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

import controllers.gradient as gradient
import search
from controllers.base import ArchStepContext
from controllers.gradient import GradientConfig, GradientController
from nas.core.errors import UserError
from search_spaces.darts.networks import SearchNetwork
from search_spaces.depthwise import Depthwise

QUICK = str(Path(__file__).resolve().parent.parent / "experiments" / "quick_digits.yaml")
OPS = ["skip_connect", "sep_conv_3x3", "dil_conv_3x3"]
LR = 0.05
SEED = 7


def _setup(skip_p: float = 0.4, grad_clip: float = 0.0) -> tuple[GradientController, ArchStepContext]:
    """A tiny double-precision supernet (C=4, 3 cells, 8x8) in train mode with momentum buffers filled."""
    torch.manual_seed(0)
    model = SearchNetwork(4, 10, 3, 1, {g: [OPS] * 14 for g in ("normal", "reduce")}).double()
    model.set_skip_dropout(skip_p)
    controller = GradientController({g: (14, len(OPS)) for g in ("normal", "reduce")},
                                    GradientConfig(order=2, grad_clip=grad_clip)).double()
    with torch.no_grad():
        for alpha in controller.alphas.values():
            alpha.normal_(0.0, 0.5)  # far from uniform, so the mixture weights matter
    w_opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, weight_decay=3e-4)
    x, y = torch.randn(8, 1, 8, 8, dtype=torch.float64), torch.randint(10, (8,))
    F.cross_entropy(model(x, **controller.weight_forward_kwargs()), y).backward()
    w_opt.step()
    val = (torch.randn(8, 1, 8, 8, dtype=torch.float64), torch.randint(10, (8,)))
    ctx = ArchStepContext(model=model, criterion=F.cross_entropy, train_batch=(x, y), val_batch=val,
                          w_optimizer=w_opt, lr=LR, stage=0, step=0)
    return controller, ctx


def _exact_unrolled(controller: GradientController, ctx: ArchStepContext) -> list[torch.Tensor]:
    """grad_alpha L_val(w'(alpha), alpha) by double backward, w' = w - lr (momentum buf + grad + wd w)."""
    model, opt = ctx.model, ctx.w_optimizer
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    group = opt.param_groups[0]
    x, y = ctx.train_batch
    train_loss = F.cross_entropy(model(x, weights=controller.mixture_weights()), y)
    grads = torch.autograd.grad(train_loss, [p for _, p in named], create_graph=True, materialize_grads=True)
    virtual = {n: p - ctx.lr * (group["momentum"] * opt.state[p]["momentum_buffer"] + g + group["weight_decay"] * p)
               for (n, p), g in zip(named, grads)}
    xv, yv = ctx.val_batch
    val_loss = F.cross_entropy(functional_call(model, virtual, (xv,), {"weights": controller.mixture_weights()}), yv)
    return list(torch.autograd.grad(val_loss, list(controller.alphas.values())))


def _relative_error(got: list[torch.Tensor], want: list[torch.Tensor]) -> float:
    diff = torch.cat([(g - w).flatten() for g, w in zip(got, want)])
    return float(diff.norm() / torch.cat([w.flatten() for w in want]).norm())


def _finite_difference(controller: GradientController, ctx: ArchStepContext) -> list[torch.Tensor]:
    torch.manual_seed(SEED)
    return controller._unrolled_grads(ctx)


def _exact(controller: GradientController, ctx: ArchStepContext) -> list[torch.Tensor]:
    """The exact gradient with the RNG state (so the train and val dropout masks) the controller step starts from.

    Depthwise convs run as plain nn.Conv2d here: the fast CPU depthwise function is once-differentiable and
    drops the second-order terms through its saved input without an error.
    """
    torch.manual_seed(SEED)
    with patch.object(Depthwise, "forward", lambda self, x: self.conv(x)):
        return _exact_unrolled(controller, ctx)


def test_skip_dropout_is_active_in_the_setup():
    controller, ctx = _setup()
    x, y = ctx.train_batch
    with torch.no_grad():
        losses = {float(F.cross_entropy(ctx.model(x, weights=controller.probs()), y)) for _ in range(3)}
    assert len(losses) == 3  # different masks give different losses: the masks matter to the test


def test_second_order_matches_the_exact_unrolled_gradient_under_skip_dropout(monkeypatch):
    """Below the distance to the net's nearest ReLU kink the difference quotient is exact up to O(R^2).

    At the default radius (0.01) it crosses kinks of this tiny net, with or without dropout (relative error
    about 1.8 here): the approximation's own limit, which says nothing about the masks.
    """
    controller, ctx = _setup()
    monkeypatch.setattr(gradient, "FD_RADIUS", 1e-6)
    exact = _exact(controller, ctx)
    first_order = [g.detach() for g in controller._alpha_grads(ctx, ctx.val_batch)]
    error = _relative_error(_finite_difference(controller, ctx), exact)
    assert error < 1e-6, error  # measured 1.9e-10; 1.2e5 before the masks were shared
    assert _relative_error(first_order, exact) > 0.5  # the unrolled term is large here, and right


@pytest.mark.parametrize("radius", [1e-7, 1e-8])
def test_the_gradient_stays_exact_as_the_finite_difference_radius_shrinks(radius, monkeypatch):
    """With masks of their own the w+ and w- passes differed by mask noise / 2R: relative error 1e6 at 1e-7."""
    controller, ctx = _setup()
    monkeypatch.setattr(gradient, "FD_RADIUS", radius)
    exact = _exact(controller, ctx)
    assert _relative_error(_finite_difference(controller, ctx), exact) < 1e-6


def test_device_rng_states_are_saved_and_replayed_on_the_batch_device(monkeypatch):
    """On an accelerator the dropout masks come from that device's generator, so its state is replayed too."""
    calls = []

    class FakeDevice:
        @staticmethod
        def get_rng_state(device):
            calls.append(("get", device))
            return torch.tensor([1])

        @staticmethod
        def set_rng_state(state, device):
            calls.append(("set", device, int(state)))

    monkeypatch.setattr(torch, "get_device_module", lambda device: FakeDevice)
    cuda1 = torch.device("cuda", 1)
    state = gradient._rng_state(cuda1)
    gradient._set_rng_state(state, cuda1)
    assert calls == [("get", cuda1), ("set", cuda1, 1)] and torch.equal(state[0], torch.get_rng_state())


def test_the_replayed_masks_leave_the_rng_where_an_unreplayed_step_would():
    """The replays do not shift the global RNG: after the step it continues from the state after the val pass."""
    controller, ctx = _setup()
    torch.manual_seed(SEED)
    x, y = ctx.train_batch
    ctx.model(x, weights=controller.probs())
    ctx.model(ctx.val_batch[0], weights=controller.probs())
    expected = torch.get_rng_state()
    _finite_difference(controller, ctx)
    assert torch.equal(torch.get_rng_state(), expected)


def test_arch_step_clips_the_logits_gradient(monkeypatch):
    controller, ctx = _setup(grad_clip=1e-3)
    norms = []
    real_step = controller.optimizer.step

    def step():
        norms.append(float(torch.cat([a.grad.flatten() for a in controller.alphas.values()]).norm()))
        real_step()

    monkeypatch.setattr(controller.optimizer, "step", step)
    controller.arch_step(ctx)
    assert norms[0] == pytest.approx(1e-3, rel=1e-4)


def test_a_negative_grad_clip_is_a_one_line_error(capsys, tmp_path):
    with pytest.raises(UserError, match=r"gradient.grad_clip must be >= 0"):
        GradientConfig(grad_clip=-0.5).validate()
    GradientConfig(grad_clip=0.0).validate()  # 0 disables clipping
    with pytest.raises(SystemExit) as exit_info:
        search.main(["-c", QUICK, "--run-dir", str(tmp_path / "r"), "--set", "gradient.grad_clip=-1"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "gradient.grad_clip must be >= 0" in err, err
