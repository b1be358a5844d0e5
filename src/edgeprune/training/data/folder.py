"""Your own images in ImageFolder layout: one subfolder per class.

`PATH/train/` and `PATH/val/` (or `PATH/test/`) are used as given; otherwise every class is
split 80/20 with the seed. Evaluation images are resized and centre-cropped, training images
get the usual light augmentation; sizes and normalisation come from a `Preprocess` (the
imported weights' metadata or the user's flags), else a square `image_size` with ImageNet's
statistics. An image that cannot be read is named in the error, never skipped.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from sklearn.model_selection import train_test_split
from torch.utils.data import Subset
from torchvision import datasets

from edgeprune.errors import InputError
from edgeprune.training.data.base import DataSplits, DatasetInfo, check_image_size, take_subset
from edgeprune.training.data.preprocess import Preprocess

__all__ = ["load_folder", "read_image"]

TEST_FRACTION = 0.2
DEFAULT_IMAGE_SIZE = 32


def load_folder(
    path: Path,
    *,
    seed: int = 0,
    image_size: Optional[int] = None,
    train_size: Optional[int] = None,
    test_size: Optional[int] = None,
    preprocess: Optional[Preprocess] = None,
) -> DataSplits:
    path = Path(path).expanduser()
    if not path.is_dir():
        raise InputError(f"image folder {path} does not exist; pass folder:PATH with one subfolder per class")
    if preprocess is None:
        check_image_size(image_size)
        preprocess = Preprocess.for_size(image_size or DEFAULT_IMAGE_SIZE)
    train_tf, eval_tf = preprocess.train_transform(), preprocess.eval_transform()
    test_dir = next((path / name for name in ("val", "test") if (path / name).is_dir()), None)
    if (path / "train").is_dir() and test_dir is not None:
        train = _image_folder(path / "train", train_tf)
        test = _image_folder(test_dir, eval_tf)
        if train.classes != test.classes:
            raise InputError(
                f"{path / 'train'} and {test_dir} have different class folders "
                f"({', '.join(train.classes)} vs {', '.join(test.classes)}); give both the same classes"
            )
        classes = train.classes
    else:
        train_view = _image_folder(path, train_tf)
        eval_view = _image_folder(path, eval_tf)
        train_index, test_index = _split(eval_view, seed)
        train, test = Subset(train_view, train_index), Subset(eval_view, test_index)
        classes = train_view.classes
    info = DatasetInfo(
        name=f"folder:{path}",
        num_classes=len(classes),
        class_names=tuple(classes),
        input_shape=(3, preprocess.input_size, preprocess.input_size),
        mean=tuple(preprocess.mean),
        std=tuple(preprocess.std),
    )
    return DataSplits(
        train=take_subset(train, train_size, seed, "train"),
        test=take_subset(test, test_size, seed + 1, "test"),
        info=info,
    )


def read_image(path: str):
    """PIL's RGB image at `path`; an unreadable file is an `InputError` that names it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with open(path, "rb") as handle:
            image = Image.open(handle)
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise InputError(f"cannot read image {path} ({error}); fix or remove it") from None


def _image_folder(path: Path, transform) -> datasets.ImageFolder:
    try:
        folder = datasets.ImageFolder(str(path), transform=transform, loader=read_image)
    except (FileNotFoundError, OSError) as error:
        raise InputError(
            f"no images found in {path} ({error}); put images (.png, .jpg, ...) in one subfolder per class"
        ) from None
    if len(folder.classes) < 2:
        raise InputError(f"{path} has {len(folder.classes)} class folder ({', '.join(folder.classes)}); "
                         "a classifier needs at least 2, one subfolder per class")
    return folder


def _split(dataset: datasets.ImageFolder, seed: int) -> tuple[list[int], list[int]]:
    """Stratified where every class has at least two images, so each class is in both splits."""
    labels = dataset.targets
    if len(labels) < 2:
        raise InputError(f"{dataset.root} has {len(labels)} image(s); a train/test split needs at least 2")
    counts = [labels.count(c) for c in set(labels)]
    stratify = labels if min(counts) >= 2 and len(labels) * TEST_FRACTION >= len(counts) else None
    train_index, test_index = train_test_split(
        list(range(len(labels))), test_size=TEST_FRACTION, stratify=stratify, random_state=seed
    )
    return sorted(train_index), sorted(test_index)
