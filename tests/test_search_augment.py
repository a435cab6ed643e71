"""Search-time augmentation: both halves of the split are cropped (and flipped on natural images) per batch
from the global torch RNG; the architecture-half evaluation sees the raw images."""
from __future__ import annotations

import pytest
import torch
from conftest import ROOT

import search
from nas.core.config import load_config
from nas.core.data import MEAN_STD, BatchAugment, DataConfig, search_loaders
from nas.engine.search_config import SearchConfig
from nas.engine.search_loop import Search

QUICK = str(ROOT / "experiments" / "quick_digits.yaml")


def _raw_first_batch(loader) -> tuple[torch.Tensor, torch.Tensor]:
    """The unaugmented images and labels of the loader's first batch (its sampler's first indices)."""
    idx = list(loader.sampler)[:loader.batch_size]
    x, y = loader.dataset.tensors
    return x[idx], y[idx]


def _views(img: torch.Tensor, pad: int, black: torch.Tensor, flips: bool) -> list[torch.Tensor]:
    """Every crop of `img` from its `pad`-pixel black border (and their mirror images when `flips`)."""
    c, h, w = img.shape
    padded = black.view(c, 1, 1).expand(c, h + 2 * pad, w + 2 * pad).clone()
    padded[:, pad:pad + h, pad:pad + w] = img
    crops = [padded[:, i:i + h, j:j + w] for i in range(2 * pad + 1) for j in range(2 * pad + 1)]
    return crops + [crop.flip(-1) for crop in crops] if flips else crops


def _is_one_of(img: torch.Tensor, views: list[torch.Tensor]) -> bool:
    return any(torch.equal(img, view) for view in views)


def test_digits_batches_are_cropped_never_flipped_and_keep_their_shape():
    _, train, val = search_loaders(DataConfig(batch_size=64), seed=0)
    augment = BatchAugment.for_search("digits", 8)
    assert (augment.pad, augment.flip) == (1, False)
    black = -torch.tensor(MEAN_STD["digits"][0]) / torch.tensor(MEAN_STD["digits"][1])
    for loader in (train, val):
        raw, labels = _raw_first_batch(loader)
        torch.manual_seed(0)
        x, y = next(iter(loader))
        assert x.shape == raw.shape == (64, 1, 8, 8) and torch.equal(y, labels)
        assert not torch.equal(x, raw)
        assert all(_is_one_of(a, _views(r, 1, black, flips=False)) for a, r in zip(x, raw))  # crops, no mirror


def test_natural_images_are_cropped_from_a_black_border_and_flipped():
    augment = BatchAugment.for_search("cifar10", 32)
    assert (augment.pad, augment.flip) == (4, True)
    assert [BatchAugment.for_search(name, size).pad for name, size in [("mnist", 28), ("imagefolder", 224)]] == [4, 28]
    assert not BatchAugment.for_search("fashion_mnist", 28).flip
    torch.manual_seed(0)
    raw = torch.randn(32, 3, 32, 32)
    out = augment(raw)
    black = augment.black.flatten()
    assert out.shape == raw.shape
    assert all(_is_one_of(a, _views(r, 4, black, flips=True)) for a, r in zip(out, raw))
    unflipped = sum(_is_one_of(a, _views(r, 4, black, flips=False)) for a, r in zip(out, raw))
    assert 0 < unflipped < len(raw)  # some flipped, some not
    border = out[(out == black.view(1, 3, 1, 1)).all(1, keepdim=True).expand_as(out)]
    assert border.numel() > 0  # padding is the normalised black, not 0


def test_augmentation_follows_the_global_rng_whatever_the_workers():
    batches = []
    for workers in (0, 2, 0):
        _, train, _ = search_loaders(DataConfig(batch_size=64, num_workers=workers), seed=0)
        torch.manual_seed(5)
        batches.append(next(iter(train))[0])
    assert torch.equal(batches[0], batches[1]) and torch.equal(batches[0], batches[2])
    torch.manual_seed(6)
    assert not torch.equal(next(iter(train))[0], batches[0])


def test_augment_false_gives_the_raw_images():
    _, train, val = search_loaders(DataConfig(batch_size=64, augment=False), seed=0)
    for loader in (train, val):
        x, y = next(iter(loader))
        raw, labels = _raw_first_batch(loader)
        assert torch.equal(x, raw) and torch.equal(y, labels)


def test_the_architecture_half_is_evaluated_on_raw_images(tmp_path):
    cfg = load_config(SearchConfig, QUICK, ["data.augment=true"])
    searcher = Search(cfg, tmp_path)
    x, y = searcher.val_loader.dataset.tensors
    idx = list(searcher.val_loader.sampler.indices)
    seen = torch.cat([batch[0] for batch in searcher.val_eval_loader])
    assert torch.equal(seen, x[idx])
    torch.manual_seed(0)
    augmented, labels = next(iter(searcher.val_loader))
    assert not torch.equal(augmented, x[list(searcher.val_loader.sampler)[:len(labels)]])


@pytest.mark.parametrize("value", ["maybe", "1"])
def test_a_bad_augment_value_is_a_one_line_error(value, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        search.main(["-c", QUICK, "--run-dir", str(tmp_path / "r"), "--set", f"data.augment={value}"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "data.augment must be bool" in err, err
