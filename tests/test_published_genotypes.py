"""Every published genotype builds and has the reference code's parameter count, CIFAR and ImageNet networks.

The expected counts are those of DARTS's NetworkCIFAR (C=36, 20 cells, 10 classes) and NetworkImageNet (C=48,
14 cells, 1000 classes), auxiliary heads excluded. Large networks are built on the meta device (no memory, no
init); forward passes use tiny networks.
"""
from __future__ import annotations

import random

import pytest
import torch
from conftest import ROOT
from PIL import Image

import train_eval
from nas.core.config import load_config
from nas.core.metrics import count_parameters
from nas.core.records import read_record
from nas.engine.trainer import EvalConfig
from search_spaces.darts.genotype import SHIPPED_DIR, Genotype, load_genotype
from search_spaces.darts.networks import NetworkEval, eval_param_count
from search_spaces.ops import DARTS_OPS, NASNET_OPS, build_op

# name: (NetworkCIFAR, NetworkImageNet) parameters from the reference model code
REFERENCE_PARAMS = {
    "DARTS_V1": (3_169_414, 4_510_432),
    "DARTS_V2": (3_349_342, 4_718_752),
    "PDARTS": (3_433_798, 4_944_352),
    "PC_DARTS_cifar": (3_634_678, 5_270_560),
    "PC_DARTS_image": (3_721_510, 5_342_464),
    "NASNet": (3_830_950, 5_564_320),
    "AmoebaNet": (3_145_078, 4_627_360),
}
IMAGENET_YAML = str(ROOT / "experiments" / "eval_imagenet.yaml")


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


def built_params(genotype: Genotype, C: int, classes: int, layers: int, network: str) -> int:
    with torch.device("meta"):
        net = NetworkEval(genotype, C, classes, layers, 3, auxiliary=True, network=network)
    return count_parameters(net, exclude="auxiliary")


@pytest.mark.parametrize("name", REFERENCE_PARAMS)
def test_cifar_params_equal_the_reference(name: str) -> None:
    genotype = load_genotype(name)
    expected = REFERENCE_PARAMS[name][0]
    assert built_params(genotype, 36, 10, 20, "cifar") == expected
    assert eval_param_count(genotype) == expected


@pytest.mark.parametrize("name", REFERENCE_PARAMS)
def test_imagenet_params_equal_the_reference(name: str) -> None:
    genotype = load_genotype(name)
    expected = REFERENCE_PARAMS[name][1]
    assert built_params(genotype, 48, 1000, 14, "imagenet") == expected
    assert eval_param_count(genotype, 48, 14, 1000, 3, "imagenet") == expected


def test_pc_darts_is_pc_darts_cifar() -> None:
    assert load_genotype("PC_DARTS") == load_genotype("PC_DARTS_cifar")
    records = [read_record(SHIPPED_DIR / f"{name}.json") for name in ("PC_DARTS", "PC_DARTS_cifar")]
    assert records[0]["metrics"] == records[1]["metrics"]


def test_nasnet_ops_are_darts_reference_ops() -> None:
    """sep_conv_7x7 = SepConv k7 pad 3; conv_7x1_1x7 = ReLU, (1,7) and (7,1) convs without bias, BN."""
    C = 8
    sep = build_op("sep_conv_7x7", C, 2)
    assert sum(p.numel() for p in sep.parameters()) == 2 * (C * 49 + C * C + 2 * C)
    factorised = build_op("conv_7x1_1x7", C, 2)
    convs = [m for m in factorised.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.kernel_size, c.stride, c.padding, c.bias) for c in convs] == [
        ((1, 7), (1, 2), (0, 3), None), ((7, 1), (2, 1), (3, 0), None)]
    assert sum(p.numel() for p in factorised.parameters()) == 2 * C * C * 7 + 2 * C
    x = torch.randn(2, C, 9, 9)
    assert sep(x).shape == factorised(x).shape == (2, C, 5, 5)


def _random_genotype(rng: random.Random, nodes: int) -> Genotype:
    ops = [op for op in DARTS_OPS + NASNET_OPS if op != "none"]

    def cell() -> tuple[list[tuple[str, int]], list[int]]:
        pairs = [(rng.choice(ops), rng.randrange(2 + i)) for i in range(nodes) for _ in range(2)]
        return pairs, sorted(rng.sample(range(2, 2 + nodes), rng.randint(1, nodes)))

    (normal, normal_concat), (reduce, reduce_concat) = cell(), cell()
    return Genotype(normal, normal_concat, reduce, reduce_concat)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("network", ["cifar", "imagenet"])
def test_table_count_equals_the_built_network_for_any_node_count(seed: int, network: str) -> None:
    rng = random.Random(seed)
    genotype = _random_genotype(rng, rng.choice([2, 4, 5, 6]))
    C, layers, classes = rng.choice([8, 12, 16]), rng.choice([3, 5, 8]), rng.choice([10, 1000])
    assert eval_param_count(genotype, C, layers, classes, 3, network) == built_params(genotype, C, classes, layers,
                                                                                      network)


@pytest.mark.parametrize("name", ["NASNet", "AmoebaNet"])
def test_five_node_cells_train_on_cifar(name: str) -> None:
    torch.manual_seed(0)
    net = NetworkEval(load_genotype(name), 8, 10, 5, 3, auxiliary=True).train()
    net.drop_path_prob = 0.2
    logits, aux = net(torch.randn(2, 3, 32, 32))
    assert logits.shape == aux.shape == (2, 10)
    (logits.sum() + aux.sum()).backward()
    assert net.eval()(torch.randn(2, 3, 32, 32))[1] is None


@pytest.mark.parametrize("name", ["PDARTS", "AmoebaNet"])
@pytest.mark.parametrize("size", [64, 50])
def test_imagenet_network_forward(name: str, size: int) -> None:
    torch.manual_seed(0)
    net = NetworkEval(load_genotype(name), 8, 7, 3, 3, auxiliary=True, network="imagenet").train()
    s0, s1 = net.stem(torch.randn(2, 3, size, size))
    assert s0.shape[1:] == (8, -(-size // 4), -(-size // 4)) and s1.shape[1:] == (8, -(-size // 8), -(-size // 8))
    logits, aux = net(torch.randn(2, 3, size, size))
    assert logits.shape == aux.shape == (2, 7)


def test_imagenet_auxiliary_head_is_the_reference_head() -> None:
    """At 224x224 the head sees 7x7 maps: 5x5 pool stride 2 to 2x2, and no BN after the 768-channel conv."""
    imagenet = NetworkEval(load_genotype("DARTS_V2"), 8, 5, 3, 3, auxiliary=True, network="imagenet").auxiliary_head
    cifar = NetworkEval(load_genotype("DARTS_V2"), 8, 5, 3, 3, auxiliary=True).auxiliary_head
    bns = [sum(isinstance(m, torch.nn.BatchNorm2d) for m in head.modules()) for head in (imagenet, cifar)]
    assert bns == [1, 2]
    assert imagenet(torch.randn(2, imagenet.features[0].in_channels, 7, 7)).shape == (2, 5)


def test_imagenet_recipe_config() -> None:
    config = load_config(EvalConfig, IMAGENET_YAML)
    m, t = config.model, config.train
    assert (config.network, m.C, m.layers, m.auxiliary_weight) == ("imagenet", 48, 14, 0.4)
    assert (t.epochs, t.batch_size, t.lr, t.momentum, t.weight_decay) == (250, 128, 0.1, 0.9, 3e-5)
    assert (t.scheduler, t.lr_gamma, t.label_smoothing, t.grad_clip) == ("step", 0.97, 0.1, 5.0)
    assert load_config(EvalConfig, None, ["data.dataset=imagenet"]).network == "imagenet"
    assert load_config(EvalConfig, None, ["data.dataset=cifar10"]).network == "cifar"


@pytest.mark.parametrize("override, message", [
    ("model.network=resnet", "model.network 'resnet' is unknown"),
    ("model.C=47", "model.C must be even"),
    ("data.dataset=imagenet1k", "data.dataset 'imagenet1k' is unknown"),
    ("train.lr_gamma=1.5", "train.lr_gamma"),
])
def test_bad_imagenet_config_is_one_line(override: str, message: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        train_eval.main(["--genotype", "PDARTS", "-c", IMAGENET_YAML, "--set", override])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err


def test_dataset_imagenet_trains_the_imagenet_network(tmp_path, capsys) -> None:
    """`--dataset imagenet` reads an ImageFolder root (train/, val/) and trains NetworkImageNet at 224x224."""
    for split in ("train", "val"):
        for k, colour in enumerate(["red", "blue"]):
            folder = tmp_path / "data" / split / f"class{k}"
            folder.mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (40 + i, 30), colour).save(folder / f"{i}.png")
    run_dir = tmp_path / "run"
    train_eval.main(["--genotype", "PDARTS", "--dataset", "imagenet", "--epochs", "1", "--batch-size", "2",
                     "--run-dir", str(run_dir), "--set", f"data.root={tmp_path / 'data'}", "model.C=4",
                     "model.layers=3", "data.num_workers=0"])
    metrics = read_record(run_dir / "genotype.json")["metrics"]["eval"]
    assert (metrics["network"], metrics["dataset"], metrics["test_samples"]) == ("imagenet", "imagenet", 4)
    expected = eval_param_count(load_genotype("PDARTS"), 4, 3, 2, 3, "imagenet")
    assert metrics["params_M"] == round(expected / 1e6, 6)
