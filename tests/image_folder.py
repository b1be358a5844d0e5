"""Small ImageFolder trees the tests write: each class has its own colour, so it is learnable."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = {"cat": (200, 40, 40), "dog": (40, 200, 40), "fox": (40, 40, 200), "owl": (200, 200, 40)}


def write_image_folder(root: Path, classes=("cat", "dog", "fox"), per_class: int = 6, size=(40, 36),
                       seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for class_name in classes:
        (root / class_name).mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            noise = rng.integers(-40, 40, size=(size[1], size[0], 3))
            pixels = np.clip(np.array(COLOURS[class_name]) + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / class_name / f"{index}.png")
    return root


def write_train_val(root: Path, classes=("cat", "dog", "fox"), train: int = 6, val: int = 4) -> Path:
    write_image_folder(root / "train", classes, train, seed=0)
    write_image_folder(root / "val", classes, val, seed=1)
    return root
