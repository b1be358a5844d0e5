"""scikit-learn's handwritten digits: small real data that ships with the library (no download).

The 8x8 grey images are resized to the model's input (32x32 by default) and repeated to three
channels, so the same CIFAR-style models run on them unchanged.
"""
from __future__ import annotations

from typing import Optional

import torch
from sklearn.datasets import load_digits as sklearn_load_digits
from sklearn.model_selection import train_test_split

from edgeprune.training.data.base import (
    DataSplits,
    DatasetInfo,
    TensorImageDataset,
    channel_stats,
    check_image_size,
    check_size,
    normalise,
    resize,
)
from edgeprune.errors import InputError

DEFAULT_TEST_FRACTION = 0.25


def load_digits(
    *, seed: int = 0, image_size: Optional[int] = None, train_size: Optional[int] = None, test_size: Optional[int] = None
) -> DataSplits:
    """A stratified train/test split fixed by `seed`; normalised with the train split's stats."""
    image_size = image_size or 32
    check_image_size(image_size)
    check_size(train_size, "train")
    check_size(test_size, "test")
    bunch = sklearn_load_digits()
    images = torch.from_numpy(bunch.images).float().unsqueeze(1) / 16.0
    labels = torch.from_numpy(bunch.target).long()
    try:
        train_index, test_index = train_test_split(
            torch.arange(len(labels)).numpy(),
            train_size=train_size,
            test_size=test_size if test_size is not None else (None if train_size else DEFAULT_TEST_FRACTION),
            stratify=labels.numpy(),
            random_state=seed,
        )
    except ValueError as error:
        raise InputError(f"cannot split the {len(labels)} digits images as asked: {error}") from None
    images = resize(images, image_size).repeat(1, 3, 1, 1)
    train_images, test_images = images[train_index], images[test_index]
    mean, std = channel_stats(train_images)
    info = DatasetInfo(
        name="digits",
        num_classes=10,
        class_names=tuple(str(digit) for digit in range(10)),
        input_shape=(3, image_size, image_size),
        mean=mean,
        std=std,
    )
    return DataSplits(
        train=TensorImageDataset(normalise(train_images, mean, std), labels[train_index]),
        test=TensorImageDataset(normalise(test_images, mean, std), labels[test_index]),
        info=info,
    )
