"""Your own images in ImageFolder layout: one subfolder per class.

`PATH/train/` and `PATH/test/` (or `PATH/val/`) are used as given; otherwise every class is
split 80/20 with the seed. Images are resized to a square and normalised with ImageNet's
statistics, the usual choice for natural photos.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from sklearn.model_selection import train_test_split
from torch.utils.data import Dataset, Subset
from torchvision import datasets, transforms

from edgeprune.training.data.base import DataSplits, DatasetInfo, check_image_size, take_subset
from edgeprune.errors import InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TEST_FRACTION = 0.2


def load_folder(
    path: Path,
    *,
    seed: int = 0,
    image_size: Optional[int] = None,
    train_size: Optional[int] = None,
    test_size: Optional[int] = None,
) -> DataSplits:
    path = Path(path).expanduser()
    if not path.is_dir():
        raise InputError(f"image folder {path} does not exist; pass folder:PATH with one subfolder per class")
    image_size = image_size or 32
    check_image_size(image_size)
    transform = transforms.Compose(
        [
            transforms.Resize((image_size, image_size)),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    test_dir = next((path / name for name in ("test", "val") if (path / name).is_dir()), None)
    if (path / "train").is_dir() and test_dir is not None:
        train = _image_folder(path / "train", transform)
        test = _image_folder(test_dir, transform)
        if train.classes != test.classes:
            raise InputError(
                f"{path / 'train'} and {test_dir} have different class folders "
                f"({', '.join(train.classes)} vs {', '.join(test.classes)}); give both the same classes"
            )
        classes = train.classes
    else:
        everything = _image_folder(path, transform)
        train, test = _split(everything, seed)
        classes = everything.classes
    info = DatasetInfo(
        name=f"folder:{path}",
        num_classes=len(classes),
        class_names=tuple(classes),
        input_shape=(3, image_size, image_size),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    )
    return DataSplits(
        train=take_subset(train, train_size, seed, "train"),
        test=take_subset(test, test_size, seed + 1, "test"),
        info=info,
    )


def _image_folder(path: Path, transform) -> datasets.ImageFolder:
    try:
        return datasets.ImageFolder(str(path), transform=transform)
    except (FileNotFoundError, OSError) as error:
        raise InputError(
            f"no images found in {path} ({error}); put images (.png, .jpg, ...) in one subfolder per class"
        ) from None


def _split(dataset: datasets.ImageFolder, seed: int) -> tuple[Dataset, Dataset]:
    """Stratified where every class has at least two images, so each class is in both splits."""
    labels = dataset.targets
    if len(labels) < 2:
        raise InputError(f"{dataset.root} has {len(labels)} image(s); a train/test split needs at least 2")
    counts = [labels.count(c) for c in set(labels)]
    stratify = labels if min(counts) >= 2 and len(labels) * TEST_FRACTION >= len(counts) else None
    train_index, test_index = train_test_split(
        list(range(len(labels))), test_size=TEST_FRACTION, stratify=stratify, random_state=seed
    )
    return Subset(dataset, sorted(train_index)), Subset(dataset, sorted(test_index))
