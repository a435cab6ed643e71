"""The real CIFAR-10 code path (torchvision dataset, augmentation, cutout) on the shared 1,000-image subset.

torchvision checks the md5 of the six official batches and reads str keys (the official files are
Python 2 pickles); the subset's pickles have bytes keys. The fixture rewrites the subset with str keys
into a temporary root and points torchvision's dataset class at those files and their own checksums,
so production code keeps every integrity check.
"""
from __future__ import annotations

import hashlib
import pickle

import pytest
import torch
import torchvision
from conftest import shared_path

import train_eval
from nas.core.data import load_dataset
from nas.core.records import read_record


def _md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _str_keys(value):
    if isinstance(value, dict):
        return {k.decode() if isinstance(k, bytes) else k: _str_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [v.decode() if isinstance(v, bytes) else v for v in value]
    return value


@pytest.fixture(scope="module")
def cifar_subset(tmp_path_factory):
    """A root holding the shared subset in torchvision's layout, with str keys."""
    source = shared_path("cifar10_subset", "cifar-10-batches-py")
    root = tmp_path_factory.mktemp("cifar10")
    (root / source.name).mkdir()
    for name in ("data_batch_1", "test_batch", "batches.meta"):
        with open(source / name, "rb") as handle:
            entry = _str_keys(pickle.load(handle, encoding="bytes"))
        with open(root / source.name / name, "wb") as handle:
            pickle.dump(entry, handle)
    return root


@pytest.fixture
def cifar_root(cifar_subset, monkeypatch):
    """The subset's root, with torchvision's CIFAR10 checking the subset's files instead of the full set's."""
    batches = cifar_subset / "cifar-10-batches-py"

    class CIFAR10Subset(torchvision.datasets.CIFAR10):
        train_list = [["data_batch_1", _md5(batches / "data_batch_1")]]
        test_list = [["test_batch", _md5(batches / "test_batch")]]
        meta = {**torchvision.datasets.CIFAR10.meta, "md5": _md5(batches / "batches.meta")}

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", CIFAR10Subset)
    return cifar_subset


def test_cifar10_loads_augmented_normalised_images(cifar_root):
    data = load_dataset("cifar10", cifar_root, train=True, augment=True, cutout=16)
    assert (len(data.dataset), data.in_channels, data.size, data.num_classes) == (1000, 3, 32, 10)
    assert torch.bincount(torch.tensor(data.dataset.targets)).tolist() == [100] * 10
    images = torch.stack([data.dataset[i][0] for i in range(200)])
    assert images.shape == (200, 3, 32, 32)
    assert images.mean().abs() < 0.3 and 0.6 < images.std() < 1.4  # normalised with the CIFAR-10 mean and std
    test = load_dataset("cifar10", cifar_root, train=False)
    x0, _ = test.dataset[0]
    assert torch.equal(x0, test.dataset[0][0])  # no augmentation on the test split


def test_train_eval_on_cifar10_subset(cifar_root, tmp_path):
    run_dir = tmp_path / "run"
    train_eval.main(["--genotype", "PDARTS", "--dataset", "cifar10", "--epochs", "1", "--run-dir", str(run_dir),
                            "--set", f"data.root={cifar_root}", "model.C=4", "model.layers=3",
                            "train.batch_size=100"])
    metrics = read_record(run_dir / "genotype.json")["metrics"]["eval"]
    assert metrics["dataset"] == "cifar10" and metrics["test_samples"] == 1000 and metrics["epochs"] == 1
    assert 0.0 <= metrics["top1"] <= metrics["top5"] <= 100.0 and metrics["params_M"] > 0
