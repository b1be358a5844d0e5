"""What every data source returns: two splits of normalised CHW tensors and their description."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional, Sequence

import torch
from torch.utils.data import Dataset, Subset

from edgeprune.errors import InputError


@dataclass(frozen=True)
class DatasetInfo:
    """Enough to rebuild the model's input pipeline: classes, input shape, normalisation."""

    name: str
    num_classes: int
    class_names: tuple[str, ...]
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DataSplits:
    """Train and test `Dataset`s of `(float32 CHW normalised tensor, int label)`, plus `info`."""

    train: Dataset
    test: Dataset
    info: DatasetInfo


class TensorImageDataset(Dataset):
    """In-memory images (N, C, H, W) float32 and labels (N,); items are `(image, int label)`."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of (N, C, H, W) images, as plain floats for JSON."""
    mean = images.mean(dim=(0, 2, 3))
    std = images.std(dim=(0, 2, 3)).clamp_min(1e-6)
    return tuple(round(float(m), 6) for m in mean), tuple(round(float(s), 6) for s in std)


def normalise(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    mean_t = torch.tensor(mean, dtype=images.dtype).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=images.dtype).view(1, -1, 1, 1)
    return ((images - mean_t) / std_t).contiguous()


def resize(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """Resize (N, C, H, W) images to square `image_size` (antialiased when shrinking)."""
    if images.shape[-2:] == (image_size, image_size):
        return images
    shrinking = image_size < images.shape[-1]
    return torch.nn.functional.interpolate(
        images, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=shrinking
    )


def take_subset(dataset: Dataset, size: Optional[int], seed: int, what: str) -> Dataset:
    """A seeded random subset of `size` items (all of them when `size` is None)."""
    total = len(dataset)
    if size is None or size == total:
        return dataset
    check_size(size, what)
    if size > total:
        raise InputError(f"{what} size {size} is larger than the {total} images available; pass a smaller size")
    order = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
    return Subset(dataset, order[:size].tolist())


def check_size(size: Optional[int], what: str) -> None:
    if size is not None and size < 1:
        raise InputError(f"{what} size must be at least 1, got {size}")


def check_image_size(image_size: Optional[int]) -> None:
    if image_size is not None and image_size < 8:
        raise InputError(f"image size must be at least 8 pixels, got {image_size}")
