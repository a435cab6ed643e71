"""The GPU-path switches of `run:` (nas/core/accel.py), checked on the CPU: bf16 autocast trains the search and the
eval network, fp16 is refused off CUDA, the second-order architecture step stays exact under autocast, a GradScaler's
state survives a checkpoint, and the loader, layout, cudnn, compile and process-group choices follow the keys."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT, TINY_SEARCH
from torch.utils.data import TensorDataset

import search
import train_eval
from controllers.base import ArchStepContext
from controllers.gradient import GradientConfig, GradientController
from nas.core import accel, distributed
from nas.core.checkpoint import load_checkpoint, save_checkpoint
from nas.core.config import load_config
from nas.core.data import load_dataset
from nas.core.distributed import DistInfo, backend_for
from nas.core.errors import UserError
from nas.engine import search_loop
from nas.engine.search_config import SearchConfig
from nas.engine.trainer import EvalConfig, Trainer, resumed_config
from search_spaces.darts.genotype import load_genotype
from search_spaces.darts.networks import NetworkEval, SearchNetwork

pytestmark = pytest.mark.usefixtures("one_thread")
QUICK = str(ROOT / "experiments" / "quick_digits.yaml")
OPS = ["skip_connect", "sep_conv_3x3", "dil_conv_3x3", "max_pool_3x3"]


def _digits(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = load_dataset("digits").dataset.tensors
    return x[:n], y[:n]


def _eval_trainer(amp: str, **run: object) -> Trainer:
    """A tiny DARTS_V2 eval network (C=4, 3 cells, no auxiliary head) and its trainer on the CPU; the config is built
    without validation, so fp16 can be forced onto the CPU (which validation refuses)."""
    torch.manual_seed(0)
    config = EvalConfig()
    config.model.auxiliary, config.train.lr, config.train.epochs = False, 0.05, 4
    config.run.amp = amp
    for key, value in run.items():
        setattr(config.run, key, value)
    net = NetworkEval(load_genotype("DARTS_V2"), 4, 10, 3, 1, auxiliary=False)
    return Trainer(config, net, torch.device("cpu"), DistInfo())


def _loader() -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(TensorDataset(*_digits(128)), batch_size=32,
                                       generator=torch.Generator().manual_seed(0), shuffle=True)


# ----- config -----

@pytest.mark.parametrize("entry, argv", [
    (search.main, ["-c", QUICK]),
    (train_eval.main, ["--genotype", "DARTS_V2", "--dataset", "digits"]),
])
@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_fp16_is_refused_off_cuda_with_one_line(entry, argv, device, capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        entry([*argv, "--run-dir", str(run_dir), "--set", "run.amp=fp16", f"run.device={device}"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1
    assert err.startswith("error: run.amp=fp16 needs a CUDA device") and "bf16 or off" in err
    assert not run_dir.exists()  # refused before any work


def test_amp_modes_and_the_bare_yaml_off() -> None:
    assert load_config(EvalConfig, None, ["run.amp=off"]).run.amp == "off"  # YAML reads a bare off as false
    assert load_config(SearchConfig, QUICK, ["run.amp=bf16"]).run.amp == "bf16"
    for bad in ("fp8", "on", "true"):
        with pytest.raises(UserError, match="run.amp"):
            load_config(EvalConfig, None, [f"run.amp={bad}"])
    cfg = load_config(SearchConfig, QUICK, ["run.channels_last=false", "run.cudnn_benchmark=false",
                                            "run.pin_memory=false", "run.persistent_workers=true"])
    assert (cfg.run.channels_last, cfg.run.cudnn_benchmark, cfg.run.pin_memory, cfg.run.persistent_workers) == \
        (False, False, False, True)
    with pytest.raises(UserError, match="compile_eval"):  # an eval key, unknown to the search
        load_config(SearchConfig, QUICK, ["run.compile_eval=true"])


def test_a_run_saved_with_the_old_amp_values_resumes() -> None:
    tree = {"run": {"amp": None, "channels_last": None}}  # as a run saved before the keys were typed
    assert (resumed_config(tree, []).run.amp, resumed_config(tree, []).run.channels_last) == ("off", False)
    assert resumed_config({"run": {"amp": True}}, []).run.amp == "bf16"
    assert resumed_config({"run": {"amp": False}}, ["run.amp=bf16"]).run.amp == "bf16"  # amp may change on resume


# ----- search under autocast -----

def test_second_order_architecture_step_is_exact_under_bf16_autocast() -> None:
    """The finite-difference Hessian term runs in float32 whatever autocast the loop opened around the step."""
    torch.manual_seed(0)
    model = SearchNetwork(4, 10, 3, 1, {g: [OPS] * 14 for g in ("normal", "reduce")})
    controller = GradientController({g: (14, len(OPS)) for g in ("normal", "reduce")}, GradientConfig(order=2))
    with torch.no_grad():
        for alpha in controller.alphas.values():
            alpha.normal_(0.0, 0.5)
    w_opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=3e-4)
    x, y = _digits(16)
    F.cross_entropy(model(x[:8], **controller.weight_forward_kwargs()), y[:8]).backward()
    w_opt.step()
    grads = {}
    for amp in ("off", "bf16"):
        c, m = copy.deepcopy(controller), copy.deepcopy(model)
        opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, weight_decay=3e-4)
        opt.load_state_dict(w_opt.state_dict())
        ctx = ArchStepContext(model=m, criterion=F.cross_entropy, train_batch=(x[:8], y[:8]),
                              val_batch=(x[8:], y[8:]), w_optimizer=opt, lr=0.05, stage=0, step=0)
        torch.manual_seed(3)
        with accel.Precision(amp, torch.device("cpu")).arch_autocast():
            c.arch_step(ctx)
        grads[amp] = torch.cat([a.grad.flatten() for a in c.arch_parameters()])
    assert grads["off"].abs().max() > 0
    torch.testing.assert_close(grads["bf16"], grads["off"], rtol=1e-5, atol=1e-7)


def test_bf16_supernet_weight_steps_run_in_bf16_and_the_loss_falls() -> None:
    torch.manual_seed(0)
    model = SearchNetwork(4, 10, 3, 1, {g: [OPS] * 14 for g in ("normal", "reduce")})
    weights = {g: torch.full((14, len(OPS)), 1 / len(OPS)) for g in ("normal", "reduce")}
    precision, params = accel.Precision("bf16", torch.device("cpu")), list(model.parameters())
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    x, y = _digits(32)
    losses = []
    for _ in range(12):
        opt.zero_grad()
        with precision.autocast():
            logits = model(x, weights=weights)
            loss = F.cross_entropy(logits, y)
        assert logits.dtype == torch.bfloat16
        precision.backward(loss)
        precision.step(opt, params, clip=5.0)
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.7 * losses[0], losses


def test_a_search_under_bf16_autocasts_its_steps_and_checkpoints_the_scaler(tmp_path, monkeypatch) -> None:
    seen, stage_states = [], []
    real_loss, real_save = F.cross_entropy, search_loop.save_checkpoint

    def loss_spy(logits, *args, **kwargs):
        seen.append(logits.dtype)
        return real_loss(logits, *args, **kwargs)

    def save_spy(where, state, kind):
        stage_states.append(state["stage"])
        real_save(where, state, kind)

    monkeypatch.setattr(F, "cross_entropy", loss_spy)
    monkeypatch.setattr(search_loop, "save_checkpoint", save_spy)
    run_dir = tmp_path / "run"
    assert search.main(["-c", QUICK, "--run-dir", str(run_dir), "--set", *TINY_SEARCH, "stages.layers=[3]",
                        "stages.epochs=[2]", "stages.warmup_epochs=[1]", "stages.keep=[1]", "stages.skip_dropout=[0]",
                        "data.limit=256", "data.batch_size=64", "run.amp=bf16", "run.draw=false"]) == 0
    assert torch.bfloat16 in seen  # weight steps and scoring ran under autocast
    assert stage_states[0]["scaler"] == {}  # a stage checkpoint holds the GradScaler (empty: bf16 needs no scaling)
    stage = load_checkpoint(run_dir, "search")["progress"]["stages"][0]
    assert stage["train_acc"] > 20.0 and 0.0 <= stage["val_acc"] <= 100.0  # learning, finite


# ----- eval under autocast -----

def test_bf16_eval_training_and_scoring_run_and_the_loss_falls() -> None:
    trainer = _eval_trainer("bf16")
    assert trainer.precision == "bfloat16"
    losses = [trainer.train_epoch(_loader(), epoch, "")["loss"] for epoch in range(4)]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0], losses
    scores = trainer.evaluate(_loader(), 10)
    assert torch.isfinite(torch.tensor(scores["loss"])) and scores["samples"] == 128


def test_fp16_gradscaler_state_goes_into_the_checkpoint_and_back(tmp_path) -> None:
    trainer = _eval_trainer("fp16")
    trainer.train_epoch(_loader(), 0, "")
    trainer.amp.scaler.update(1024.0)  # a scale of its own, unlike a new scaler's 65536
    save_checkpoint(tmp_path, {**trainer.state_dict(), "epoch": 1}, kind="eval")
    state = load_checkpoint(tmp_path, "eval")
    assert state["scaler"]["scale"] == trainer.amp.scaler.get_scale() != 65536.0
    resumed = _eval_trainer("fp16")
    resumed.load_state_dict(state)
    assert resumed.amp.scaler.get_scale() == trainer.amp.scaler.get_scale()
    assert resumed.amp.scaler.state_dict()["_growth_tracker"] == trainer.amp.scaler.state_dict()["_growth_tracker"]
    assert _eval_trainer("off").state_dict()["scaler"] == {}  # nothing to keep without fp16


# ----- layout, compile, loaders, cudnn, process group -----

@pytest.mark.parametrize("channels_last", [True, False])
def test_channels_last_puts_weights_and_batches_in_that_layout(channels_last: bool) -> None:
    trainer = _eval_trainer("off", channels_last=channels_last)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    conv = next(p for p in trainer.net.parameters() if p.dim() == 4 and p.shape[-1] > 1)
    assert conv.is_contiguous(memory_format=layout)
    x, _ = trainer._batch(*_digits(4))
    assert x.is_contiguous(memory_format=layout)


def test_compile_eval_wraps_the_training_forward_and_falls_back_cleanly(monkeypatch, capsys) -> None:
    trainer = _eval_trainer("off", compile_eval=True)
    assert trainer.model is not trainer.net and trainer.model._orig_mod is trainer.net  # compiled lazily
    assert set(trainer.state_dict()["model"]) == set(trainer.net.state_dict())  # checkpoints keep plain names

    def unavailable(model):
        raise RuntimeError("torch.compile is not supported on this platform\nmore detail")

    monkeypatch.setattr(torch, "compile", unavailable)
    fallback = _eval_trainer("off", compile_eval=True)
    assert fallback.model is fallback.net
    out = capsys.readouterr().out
    assert "warning: torch.compile is unavailable here (torch.compile is not supported on this platform)" in out


@pytest.mark.parametrize("device, workers, pin, persistent", [
    ("cpu", 2, False, True), ("cuda", 2, True, True), ("cuda", 0, True, False)])
def test_loader_options_pin_on_cuda_only_and_persist_only_workers(device, workers, pin, persistent) -> None:
    run = load_config(EvalConfig, None, ["run.persistent_workers=true"]).run
    assert accel.loader_options(run, torch.device(device), workers) == {"pin_memory": pin,
                                                                        "persistent_workers": persistent}
    run.pin_memory = run.persistent_workers = False
    assert accel.loader_options(run, torch.device(device), workers) == {"pin_memory": False,
                                                                        "persistent_workers": False}


def test_cudnn_benchmark_follows_the_key_on_cuda_only(monkeypatch) -> None:
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    accel.set_cudnn_benchmark(False, torch.device("cpu"))
    assert torch.backends.cudnn.benchmark is True
    accel.set_cudnn_benchmark(False, torch.device("cuda", 0))
    assert torch.backends.cudnn.benchmark is False


def test_the_process_group_backend_is_nccl_on_cuda_and_gloo_on_the_cpu(monkeypatch) -> None:
    assert backend_for(torch.device("cuda", 1)) == "nccl" and backend_for(torch.device("cpu")) == "gloo"
    calls = []
    monkeypatch.setattr(distributed.tdist, "init_process_group", lambda backend, **kw: calls.append((backend, kw)))
    monkeypatch.setattr(distributed.tdist, "destroy_process_group", lambda: calls.append("destroyed"))
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(("set_device", device)))
    gpu = torch.device("cuda", 1)
    with distributed.process_group(DistInfo(1, 2, 1), gpu):
        pass
    with distributed.process_group(DistInfo(1, 2, 1), torch.device("cpu")):
        pass
    assert calls == [("set_device", gpu), ("nccl", {"device_id": gpu}), "destroyed", ("gloo", {}), "destroyed"]
