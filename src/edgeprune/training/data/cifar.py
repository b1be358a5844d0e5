"""CIFAR-10 through torchvision, from a local copy: the library never downloads unless asked."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from torchvision import datasets, transforms

from edgeprune.training.data.base import DataSplits, DatasetInfo, check_image_size, take_subset
from edgeprune.errors import InputError

#: The usual CIFAR-10 per-channel statistics of the 50,000 training images.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def load_cifar10(
    *,
    seed: int = 0,
    data_dir: Optional[Path] = None,
    image_size: Optional[int] = None,
    train_size: Optional[int] = None,
    test_size: Optional[int] = None,
    download: bool = False,
) -> DataSplits:
    """The official train/test split (optionally a seeded subset); train images are augmented
    with random crops and flips, which draw from torch's RNG and so follow `TrainConfig.seed`."""
    if data_dir is None:
        raise InputError(
            "cifar10 needs a local copy: pass --data-dir DIR where DIR holds cifar-10-batches-py "
            "(download it on a connected machine with torchvision.datasets.CIFAR10(DIR, download=True))"
        )
    image_size = image_size or 32
    check_image_size(image_size)
    to_tensor = [transforms.ToTensor(), transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD)]
    sized = [transforms.Resize((image_size, image_size))] if image_size != 32 else []
    augment = [transforms.RandomCrop(image_size, padding=image_size // 8), transforms.RandomHorizontalFlip()]
    try:
        train = datasets.CIFAR10(
            str(data_dir), train=True, transform=transforms.Compose(sized + augment + to_tensor), download=download
        )
        test = datasets.CIFAR10(str(data_dir), train=False, transform=transforms.Compose(sized + to_tensor))
    except (RuntimeError, OSError) as error:
        raise InputError(
            f"CIFAR-10 not found or incomplete under {data_dir} ({error}); pass --data-dir with a local copy "
            "of the python version (the folder that contains cifar-10-batches-py)"
        ) from None
    info = DatasetInfo(
        name="cifar10",
        num_classes=len(train.classes),
        class_names=tuple(train.classes),
        input_shape=(3, image_size, image_size),
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
    )
    return DataSplits(
        train=take_subset(train, train_size, seed, "train"),
        test=take_subset(test, test_size, seed + 1, "test"),
        info=info,
    )
