"""The batches an estimator scores on: images drawn at random, with a seed, from a dataset."""
from __future__ import annotations

import torch
from torch.utils.data import Dataset

from nas.core.estimators.common import Batch


def image_batches(dataset: Dataset, count: int, batch_size: int, seed: int) -> list[Batch]:
    """`count` batches of `batch_size` distinct images drawn uniformly from `dataset` with generator seed `seed`."""
    needed = count * batch_size
    if needed > len(dataset):
        raise ValueError(f"{count} batches of {batch_size} need {needed} images; the dataset has {len(dataset)}")
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:needed].tolist()
    batches = []
    for start in range(0, needed, batch_size):
        images, labels = zip(*(dataset[i] for i in order[start:start + batch_size]))
        batches.append((torch.stack(images), torch.as_tensor(labels)))
    return batches
