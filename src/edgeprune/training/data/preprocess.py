"""How images become model inputs: the one place resize, crop and normalisation are decided.

Evaluation resizes the short side to `resize_size` and centre-crops `input_size` (the
torchvision and timm convention); fine-tuning uses the usual light augmentation (random
resized crop and horizontal flip). Values come from the weights' own metadata where the
source has it, else from the user's flags, else ImageNet's statistics.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Optional

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: torchvision's 224/256: the crop is this fraction of the resized short side by default.
DEFAULT_CROP_FRACTION = 0.875


@dataclass(frozen=True)
class Preprocess:
    """Square input of `input_size`, resized from `resize_size`, normalised by `mean`/`std`."""

    input_size: int
    resize_size: int
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"
    source: str = "default"  # where the values came from: "weights", "timm", "flags", "default"

    def __post_init__(self) -> None:
        from edgeprune.errors import InputError

        if self.input_size < 8 or self.resize_size < self.input_size:
            raise InputError(f"input size must be >= 8 and at most the resize size, got "
                             f"{self.input_size} from {self.resize_size}")
        if len(self.mean) != len(self.std) or any(s <= 0 for s in self.std):
            raise InputError(f"--mean and --std need one value per channel and std > 0, got {self.mean} / {self.std}")
        if self.interpolation not in ("bilinear", "bicubic", "nearest"):
            raise InputError(f"unknown interpolation {self.interpolation!r}; use bilinear, bicubic or nearest")

    @classmethod
    def for_size(cls, input_size: int, mean: Optional[tuple[float, ...]] = None,
                 std: Optional[tuple[float, ...]] = None, source: str = "default") -> "Preprocess":
        resize = max(input_size, int(math.floor(input_size / DEFAULT_CROP_FRACTION)))
        return cls(input_size, resize, tuple(mean or IMAGENET_MEAN), tuple(std or IMAGENET_STD), source=source)

    def with_overrides(self, input_size: Optional[int] = None, mean: Optional[tuple[float, ...]] = None,
                       std: Optional[tuple[float, ...]] = None) -> "Preprocess":
        """The user's flags win over the weights' metadata, one value at a time."""
        if input_size is None and mean is None and std is None:
            return self
        size = input_size or self.input_size
        ratio = self.input_size / self.resize_size
        return Preprocess(size, max(size, int(math.floor(size / ratio))), tuple(mean or self.mean),
                          tuple(std or self.std), self.interpolation, "flags")

    def eval_transform(self):
        from torchvision import transforms

        return transforms.Compose([
            transforms.Resize(self.resize_size, interpolation=self._mode()),
            transforms.CenterCrop(self.input_size),
            transforms.ToTensor(),
            transforms.Normalize(self.mean, self.std),
        ])

    def train_transform(self):
        from torchvision import transforms

        return transforms.Compose([
            transforms.RandomResizedCrop(self.input_size, scale=(0.35, 1.0), interpolation=self._mode()),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(self.mean, self.std),
        ])

    def _mode(self):
        from torchvision.transforms import InterpolationMode

        return InterpolationMode(self.interpolation)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Preprocess":
        return cls(int(data["input_size"]), int(data["resize_size"]), tuple(data["mean"]), tuple(data["std"]),
                   str(data.get("interpolation", "bilinear")), str(data.get("source", "default")))
