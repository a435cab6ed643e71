"""The table-based FLOPs count of eval networks equals thop on the built networks."""
from __future__ import annotations

import pytest

from nas.core.metrics import flops_millions
from search_spaces.darts.cost import eval_flops_millions
from search_spaces.darts.genotype import load_genotype, shipped_genotype_names
from search_spaces.darts.networks import NetworkEval
from search_spaces.darts.space import DartsSpace
from search_spaces.ops import DARTS_OPS


@pytest.mark.parametrize("name", shipped_genotype_names())
def test_table_flops_match_thop_on_the_cifar_eval_network(name: str) -> None:
    genotype = load_genotype(name)
    built = flops_millions(NetworkEval(genotype, 36, 10, 20, 3, auxiliary=False), (1, 3, 32, 32))
    assert eval_flops_millions(genotype, C=36, layers=20, num_classes=10, in_channels=3, size=32) == pytest.approx(
        built, rel=5e-3)


@pytest.mark.parametrize("size", [7, 8, 9])
def test_table_flops_match_thop_on_small_odd_inputs(size: int) -> None:
    """Odd sizes exercise the ceil halving of stride-2 ops, FactorizedReduce padding and 1x1 deep maps."""
    genotype = load_genotype("PC_DARTS")
    built = flops_millions(NetworkEval(genotype, 6, 10, 8, 1, auxiliary=False), (1, 1, size, size))
    assert eval_flops_millions(genotype, C=6, layers=8, num_classes=10, in_channels=1, size=size) == pytest.approx(
        built, rel=5e-3)


def test_darts_v2_matches_the_published_measurement_and_space_scale() -> None:
    genotype = load_genotype("DARTS_V2")
    assert eval_flops_millions(genotype) == pytest.approx(549.8, rel=1e-3)  # thop 0.1.1, C=36, 20 cells, 32x32
    space = DartsSpace(C=4, num_classes=10, in_channels=1, normal_ops=list(DARTS_OPS), reduce_ops=list(DARTS_OPS),
                       eval_C=8, eval_layers=5, image_size=8)
    assert space.flops_millions(genotype) == eval_flops_millions(genotype, 8, 5, 10, 1, 8)


def test_costing_an_architecture_leaves_the_global_rng_alone() -> None:
    """A search costs each sample as it goes; a resumed run (empty tables) must draw the same random numbers."""
    import torch

    from search_spaces.darts.networks import eval_param_count

    genotype = load_genotype("PC_DARTS")
    before = torch.get_rng_state()
    eval_flops_millions(genotype, C=22, layers=7, size=24)  # sizes no other test costs: every table entry is new
    eval_param_count(genotype, C=22, layers=7)
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize("size", [8, 7, 56])
@pytest.mark.parametrize("channels_last", [False, True])
def test_factorized_reduce_is_the_two_stride2_convs_and_trains_in_channels_last(size: int, channels_last: bool) -> None:
    """Its convs run on the even pixels (oneDNN's channels_last backward of 1x1 stride-2 convs with few channels
    crashes the process at 56x56); the output must stay that of the paper's two 1x1 stride-2 convs."""
    import torch
    import torch.nn.functional as F

    from search_spaces.ops import FactorizedReduce

    layout = torch.channels_last if channels_last else torch.contiguous_format
    op = FactorizedReduce(4, 4).to(memory_format=layout)
    x = torch.randn(2, 4, size, size).contiguous(memory_format=layout).requires_grad_()
    y = op(x)
    y.sum().backward()  # the crash was here
    relu = F.relu(x)
    shifted = F.pad(relu[:, :, 1:, 1:], (0, size % 2, 0, size % 2))
    expected = op.bn(torch.cat([F.conv2d(relu, op.conv_1.weight, stride=2),
                                F.conv2d(shifted, op.conv_2.weight, stride=2)], dim=1))
    assert y.shape == (2, 4, (size + 1) // 2, (size + 1) // 2)
    assert torch.allclose(y, expected, atol=1e-6) and x.grad is not None
