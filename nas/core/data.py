"""Datasets, the standard normalisation, and the search split into weight and architecture halves.

Small grey-scale sets (digits, mnist, fashion_mnist) are held in memory as normalised tensors;
CIFAR and image folders go through torchvision with per-image transforms.

The search augments both halves of its split per batch (`BatchAugment`: random crop, and a horizontal
flip for natural images, as the DARTS and P-DARTS searches do) in the main process from the global torch
RNG, so a checkpointed RNG resumes it exactly whatever `num_workers` is; the dataset itself stays
unaugmented for evaluations.
"""
from __future__ import annotations

import gzip
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, TensorDataset

from nas.core.errors import UserError

DATASETS = ("digits", "mnist", "fashion_mnist", "cifar10", "cifar10_jpeg", "cifar100", "imagefolder")

MEAN_STD: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "digits": ((0.3053,), (0.3760,)),  # sklearn digits scaled to [0, 1]
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagefolder": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # ImageNet
}
MEAN_STD["cifar10_jpeg"] = MEAN_STD["cifar10"]  # the same images after one JPEG pass

_HOW_TO_GET = {
    "mnist": "set data.download=true to fetch it with torchvision, or point data.root at a folder holding "
    "MNIST/raw or mnist_5k_train.csv.gz + t10k-*-ubyte.gz",
    "fashion_mnist": "set data.download=true to fetch it with torchvision",
    "cifar10": "set data.download=true to fetch it with torchvision, or point data.root at the folder holding "
    "cifar-10-batches-py",
    "cifar10_jpeg": "build its batches once with `python ../shared/data/cifar10_jpeg/make_batches.py "
    "../shared/data/cifar10_jpeg/cifar10_jpeg_q75.npz ~/.cache/pdarts-nas/cifar10/cifar-10-batches-py` and point "
    "data.root at ~/.cache/pdarts-nas/cifar10",
    "cifar100": "set data.download=true to fetch it with torchvision, or point data.root at the folder holding "
    "cifar-100-python",
    "imagefolder": "point data.root at a folder with train/ and val/ subfolders of class folders",
}

FLIPPED = ("cifar10", "cifar10_jpeg", "cifar100", "imagefolder")  # natural images; digits and clothes never mirror

# cifar10_jpeg is the whole CIFAR-10 after one JPEG pass (../shared/data/cifar10_jpeg): the batches its
# make_batches.py writes are the same bytes every time (that folder's BATCHES.SHA256), so torchvision checks
# these md5s of them where it checks the official files' for cifar10.
CIFAR10_JPEG_MD5: dict[str, str] = {
    "data_batch_1": "fac1c35179c5a40fbf38121790e8411b",
    "data_batch_2": "6a72a7b6e06c1b1a863c8ce817422e91",
    "data_batch_3": "eb14e4db02fe08bd6fbd9dfd18eb3183",
    "data_batch_4": "b68588ed0f527db356b5ed88de59f92e",
    "data_batch_5": "04b268d3d0f9af928f31e079aa0b3fff",
    "test_batch": "1a3be0e6e12030cdd5ae0cf4a6ab06c3",
    "batches.meta": "da61d5246d030a1cd73eb9ed999fa3d1",
}


@dataclass
class DataConfig:
    """The `data:` section of a config."""

    dataset: str = "digits"
    root: str = "data"
    train_portion: float = 0.5
    batch_size: int = 64
    download: bool = False
    num_workers: int = 0
    augment: bool = True  # random crop (+ flip on natural images) of both search halves
    limit: int = 0  # search on the first `limit` training images only (0: all of them)

    def validate(self) -> None:
        if self.dataset not in DATASETS:
            raise UserError(f"unknown dataset {self.dataset!r}; choose one of {', '.join(DATASETS)}")
        if not 0.0 < self.train_portion < 1.0:
            raise UserError(f"data.train_portion must be in (0, 1), got {self.train_portion}")
        if self.batch_size <= 0:
            raise UserError(f"data.batch_size must be positive, got {self.batch_size}")
        if self.num_workers < 0:
            raise UserError(f"data.num_workers must be >= 0, got {self.num_workers}")
        if self.limit < 0:
            raise UserError(f"data.limit must be >= 0 (0: every image), got {self.limit}")
        if self.download and self.dataset == "cifar10_jpeg":
            raise UserError(f"cifar10_jpeg cannot be downloaded; {_HOW_TO_GET['cifar10_jpeg']}")


@dataclass(frozen=True)
class ImageData:
    """A dataset and the shape facts a network needs to be built for it."""

    dataset: Dataset
    in_channels: int
    size: int
    num_classes: int


class Cutout:
    """Zero a size x size square at a random centre (DeVries & Taylor 2017); the square may cross the border."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        h, w = img.shape[-2:]
        cy, cx = np.random.randint(h), np.random.randint(w)
        y0, y1 = max(cy - self.size // 2, 0), min(cy + self.size // 2, h)
        x0, x1 = max(cx - self.size // 2, 0), min(cx + self.size // 2, w)
        img = img.clone()
        img[..., y0:y1, x0:x1] = 0.0
        return img


def _normalised(images: torch.Tensor, name: str) -> torch.Tensor:
    """[N, H, W] or [N, C, H, W] images in [0, 1] -> normalised float [N, C, H, W]."""
    if images.dim() == 3:
        images = images.unsqueeze(1)
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in MEAN_STD[name])
    return ((images.float() - mean) / std).contiguous()


def _digits(train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled 8x8 digits; a fixed 80/20 split into train and test."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    order = np.random.RandomState(0).permutation(len(bunch.target))
    cut = int(0.8 * len(order))
    idx = order[:cut] if train else order[cut:]
    images = torch.from_numpy(bunch.images[idx] / 16.0).float()
    return images, torch.from_numpy(bunch.target[idx]).long()


def _read_idx_gz(path: Path, reader) -> torch.Tensor:
    """Read a gzipped IDX file with one of torchvision's MNIST readers."""
    with gzip.open(path, "rb") as src, tempfile.NamedTemporaryFile(suffix=".idx") as tmp:
        tmp.write(src.read())
        tmp.flush()
        return reader(tmp.name)


def _mnist_shared_layout(root: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The small offline MNIST layout: 5k training images as CSV, the official test set as gzipped IDX."""
    from torchvision.datasets.mnist import read_image_file, read_label_file

    if train and (root / "mnist_5k_train.csv.gz").is_file():
        table = np.loadtxt(root / "mnist_5k_train.csv.gz", delimiter=",", dtype=np.uint8)
        images = torch.from_numpy(table[:, :784].reshape(-1, 28, 28).astype(np.float32) / 255.0)
        return images, torch.from_numpy(table[:, 784].astype(np.int64))
    if not train and (root / "t10k-images-idx3-ubyte.gz").is_file():
        images = _read_idx_gz(root / "t10k-images-idx3-ubyte.gz", read_image_file).float() / 255.0
        return images, _read_idx_gz(root / "t10k-labels-idx1-ubyte.gz", read_label_file).long()
    return None


def _torchvision_grey(name: str, root: Path, train: bool, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    from torchvision import datasets

    cls = datasets.MNIST if name == "mnist" else datasets.FashionMNIST
    try:
        ds = cls(str(root), train=train, download=download)
    except RuntimeError as err:
        raise UserError(f"{name} not found under {root} ({err}); {_HOW_TO_GET[name]}") from None
    return ds.data.float() / 255.0, ds.targets.long()


def _grey(name: str, root: Path, train: bool, download: bool) -> ImageData:
    if name == "digits":
        images, labels = _digits(train)
    else:
        shared = _mnist_shared_layout(root, train) if name == "mnist" else None
        images, labels = shared if shared is not None else _torchvision_grey(name, root, train, download)
    x = _normalised(images, name)
    return ImageData(TensorDataset(x, labels), 1, x.shape[-1], 10)


def _cifar(name: str, root: Path, train: bool, download: bool, augment: bool, cutout: int) -> ImageData:
    from torchvision import datasets, transforms

    steps = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()] if augment else []
    steps += [transforms.ToTensor(), transforms.Normalize(*MEAN_STD[name])]
    if augment and cutout > 0:
        steps.append(Cutout(cutout))
    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    if name == "cifar10_jpeg":
        cls = _cifar10_jpeg_class()
    try:
        ds = cls(str(root), train=train, download=download, transform=transforms.Compose(steps))
    except RuntimeError as err:
        raise UserError(f"{name} not found under {root} ({err}); {_HOW_TO_GET[name]}") from None
    return ImageData(ds, 3, 32, len(ds.classes))


def _cifar10_jpeg_class() -> type:
    """torchvision's CIFAR10 over the JPEG-pass batches, checking their md5s instead of the official files'."""
    from torchvision import datasets

    class CIFAR10JPEG(datasets.CIFAR10):
        train_list = [[name, CIFAR10_JPEG_MD5[name]] for name, _ in datasets.CIFAR10.train_list]
        test_list = [[name, CIFAR10_JPEG_MD5[name]] for name, _ in datasets.CIFAR10.test_list]
        meta = {**datasets.CIFAR10.meta, "md5": CIFAR10_JPEG_MD5[datasets.CIFAR10.meta["filename"]]}

    return CIFAR10JPEG


def _imagefolder(root: Path, train: bool, augment: bool) -> ImageData:
    from torchvision import datasets, transforms

    folder = root / ("train" if train else "val")
    if not folder.is_dir():
        raise UserError(f"image folder {folder} not found; {_HOW_TO_GET['imagefolder']}")
    if augment:
        steps = [transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(),
                 transforms.ColorJitter(0.4, 0.4, 0.4, 0.2)]
    else:
        steps = [transforms.Resize(256), transforms.CenterCrop(224)]
    steps += [transforms.ToTensor(), transforms.Normalize(*MEAN_STD["imagefolder"])]
    ds = datasets.ImageFolder(str(folder), transform=transforms.Compose(steps))
    return ImageData(ds, 3, 224, len(ds.classes))


def load_dataset(name: str, root: str | os.PathLike = "data", train: bool = True, augment: bool = False,
                 cutout: int = 0, download: bool = False) -> ImageData:
    """Load a dataset by name; a missing dataset raises UserError naming the path and how to get it."""
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    root = Path(root).expanduser()
    if name != "digits" and not download and not root.exists():
        raise UserError(f"dataset path {root} does not exist; {_HOW_TO_GET[name]}")
    if name in ("digits", "mnist", "fashion_mnist"):
        return _grey(name, root, train, download)
    if name in ("cifar10", "cifar10_jpeg", "cifar100"):
        return _cifar(name, root, train, download, augment, cutout)
    return _imagefolder(root, train, augment)


def shard_positions(n: int, batch_size: int, rank: int = 0, world_size: int = 1) -> torch.Tensor:
    """The positions (of 0..n-1) that `rank` takes: its contiguous piece (torch.tensor_split) of every global batch
    of `batch_size`, so the ranks' batches together are the one-process batch. A last batch that would give a
    rank fewer than 2 images (BatchNorm needs 2) is dropped on every rank, so all ranks take the same steps."""
    tail = n % batch_size
    if 0 < tail < 2 * world_size:
        n -= tail
    return torch.cat([chunk.tensor_split(world_size)[rank] for chunk in torch.arange(n).split(batch_size)]
                     or [torch.zeros(0, dtype=torch.long)])


class EpochSampler(Sampler[int]):
    """Shuffles a fixed index list with a permutation that depends only on (seed, epoch).

    `set_epoch(e, skip_batches=b)` makes the next iteration start b batches into epoch e, so a run
    resumed in the middle of an epoch sees exactly the batches an uninterrupted run would. Under torchrun every
    rank draws the same permutation and takes its piece of each global batch of `batch_size` (shard_positions);
    batch its indices by batch_size // world_size.
    """

    def __init__(self, indices: list[int], seed: int, batch_size: int, rank: int = 0, world_size: int = 1):
        self.indices = list(indices)
        self.seed = seed
        self.batch_size = batch_size
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch, self.skip = epoch, skip_batches

    def _positions(self) -> torch.Tensor:
        start = self.skip * self.batch_size
        return start + shard_positions(max(len(self.indices) - start, 0), self.batch_size, self.rank,
                                       self.world_size)

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(len(self.indices), generator=g)[self._positions()]
        return iter([self.indices[i] for i in order.tolist()])

    def __len__(self) -> int:
        return len(self._positions())


class BatchAugment:
    """Random crop of every image of a normalised batch from its `pad`-pixel black border, and a horizontal
    flip of each with probability 1/2 when `flip`; offsets and flips come from the global torch RNG."""

    def __init__(self, dataset: str, pad: int, flip: bool):
        mean, std = (torch.tensor(v) for v in MEAN_STD[dataset])
        self.black = (-mean / std).view(1, -1, 1, 1)  # a black pixel, normalised: the padding value
        self.pad, self.flip = pad, flip

    @classmethod
    def for_search(cls, dataset: str, size: int) -> BatchAugment:
        """Padding size/8 rounded half up (4 at 32x32 and 28x28, 1 at 8x8, 28 at 224x224); flips on natural images."""
        return cls(dataset, max(1, (size + 4) // 8), dataset in FLIPPED)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        p = self.pad
        padded = self.black.to(x.dtype).expand(n, c, h + 2 * p, w + 2 * p).clone()
        padded[:, :, p:p + h, p:p + w] = x
        dy, dx = torch.randint(0, 2 * p + 1, (2, n))
        windows = padded.unfold(2, h, 1).unfold(3, w, 1)  # [n, c, 2p+1, 2p+1, h, w], a view
        out = windows[torch.arange(n), :, dy, dx]
        if self.flip:
            out = torch.where((torch.rand(n) < 0.5).view(n, 1, 1, 1), out.flip(-1), out)
        return out


class AugmentedLoader(DataLoader):
    """A DataLoader whose batches of (images, labels) pass through `augment` in the main process."""

    def __init__(self, *args: Any, augment: BatchAugment, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.augment = augment

    def __iter__(self) -> Iterator[list[torch.Tensor]]:
        for x, y in super().__iter__():
            yield [self.augment(x), y]


def search_split(n: int, train_portion: float) -> tuple[list[int], list[int]]:
    """The first `train_portion` of the training set trains weights; the rest validates architectures."""
    cut = int(np.floor(train_portion * n))
    if cut == 0 or cut == n:
        raise UserError(f"data.train_portion={train_portion} leaves one half of the {n} images empty")
    return list(range(cut)), list(range(cut, n))


def make_loader(dataset: Dataset, sampler: Sampler[int], batch_size: int, num_workers: int = 0,
                augment: BatchAugment | None = None, feed: dict[str, Any] | None = None) -> DataLoader:
    """A DataLoader over `sampler` that keeps partial last batches of at least 2 images (BatchNorm needs 2),
    augmenting each batch with `augment` when given; `feed` adds DataLoader keywords (pin_memory,
    persistent_workers: nas.core.accel.loader_options).

    It has its own generator, so starting an epoch never draws from the global RNG (resumes stay exact).
    """
    kwargs: dict[str, Any] = {"batch_size": batch_size, "sampler": sampler, "num_workers": num_workers,
                              "drop_last": len(sampler) % batch_size == 1, "generator": torch.Generator(),
                              **(feed or {})}
    return DataLoader(dataset, **kwargs) if augment is None else AugmentedLoader(dataset, augment=augment, **kwargs)


def search_loaders(cfg: DataConfig, seed: int, rank: int = 0, world_size: int = 1, feed: dict[str, Any] | None = None
                   ) -> tuple[ImageData, DataLoader, DataLoader]:
    """The training set, unaugmented (for evaluations), and the loaders of its weight half and its architecture
    half (of its first `cfg.limit` images when given), whose batches are augmented when `cfg.augment`.

    `cfg.batch_size` is the global batch: under torchrun each rank loads its piece of every batch of both halves
    (EpochSampler), batch_size // world_size images. `feed`: make_loader's."""
    if cfg.batch_size % world_size or cfg.batch_size < 2 * world_size:
        raise UserError(f"data.batch_size {cfg.batch_size} is the global batch; it must split evenly over the "
                        f"{world_size} processes with at least 2 images each")
    data = load_dataset(cfg.dataset, cfg.root, train=True, download=cfg.download)
    if cfg.limit > len(data.dataset):
        raise UserError(f"data.limit={cfg.limit} exceeds the {len(data.dataset)} training images of {cfg.dataset}")
    w_idx, a_idx = search_split(cfg.limit or len(data.dataset), cfg.train_portion)
    augment = BatchAugment.for_search(cfg.dataset, data.size) if cfg.augment else None
    loaders = [
        make_loader(data.dataset, EpochSampler(idx, seed + k, cfg.batch_size, rank, world_size),
                    cfg.batch_size // world_size, cfg.num_workers, augment, feed)
        for k, idx in enumerate((w_idx, a_idx))
    ]
    return data, loaders[0], loaders[1]

