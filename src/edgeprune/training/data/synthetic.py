"""The built-in data set: procedural 32x32 scenes that a small CNN learns in about a minute.

A class is a *conjunction* of a stripe orientation (five angles, 36 degrees apart) and a stripe
period (fine or coarse) on an object; the object's shape, colours, position, size and phase,
the blotchy background, clutter (blobs and lines) and pixel noise are nuisances. Telling the
classes apart needs many oriented filters at two scales across colours, so a network pruned to
a fraction of its channels visibly loses accuracy. It is not perfectly separable on purpose:
the angles are jittered and the two period ranges overlap, and small noisy objects show few
stripes, so a good model lands in the 90s, not at 100%.
"""
from __future__ import annotations

from typing import Optional, Union

import numpy as np
import torch
from torch.nn import functional as F

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

SHAPES = ("disc", "square", "triangle", "ring", "cross")
ORIENTATIONS_DEG = (0, 36, 72, 108, 144)
PERIODS = ("fine", "coarse")
CLASS_NAMES = tuple(f"{period}_stripes_{angle:03d}deg" for angle in ORIENTATIONS_DEG for period in PERIODS)
ORIENTATION_JITTER_DEG = 8.0
FINE_PERIOD_RANGE_PX = (3.0, 4.1)
COARSE_PERIOD_RANGE_PX = (4.0, 6.5)
IMAGE_SIZE = 32

OBJECT_RADIUS_RANGE_PX = (4.5, 11.0)
PIXEL_NOISE_STD = 0.08
NUM_DISTRACTORS = 3

DEFAULT_TRAIN_SIZE = 6000
DEFAULT_TEST_SIZE = 2000

_CHUNK = 1024


def load_synthetic(
    *, seed: int = 0, image_size: Optional[int] = None, train_size: Optional[int] = None, test_size: Optional[int] = None
) -> DataSplits:
    """Train and test images drawn from independent streams of `seed`, so the test split does
    not change with the train size; normalised with the train split's statistics."""
    check_size(train_size, "train")
    check_size(test_size, "test")
    check_image_size(image_size)
    image_size = image_size or IMAGE_SIZE
    splits = []
    for stream, size in enumerate((train_size or DEFAULT_TRAIN_SIZE, test_size or DEFAULT_TEST_SIZE)):
        images, labels = generate(size, np.random.SeedSequence([seed, stream]))
        splits.append((resize(torch.from_numpy(images), image_size), torch.from_numpy(labels)))
    (train_images, train_labels), (test_images, test_labels) = splits
    mean, std = channel_stats(train_images)
    info = DatasetInfo(
        name="synthetic",
        num_classes=len(CLASS_NAMES),
        class_names=CLASS_NAMES,
        input_shape=(3, image_size, image_size),
        mean=mean,
        std=std,
    )
    return DataSplits(
        train=TensorImageDataset(normalise(train_images, mean, std), train_labels),
        test=TensorImageDataset(normalise(test_images, mean, std), test_labels),
        info=info,
    )


def generate(num_images: int, seed: Union[int, np.random.SeedSequence]) -> tuple[np.ndarray, np.ndarray]:
    """`num_images` images (N, 3, 32, 32) float32 in [0, 1] and their int64 labels.

    Classes are balanced to within one image and the result depends only on (num_images, seed).
    """
    rng = np.random.default_rng(seed)
    labels = np.arange(num_images, dtype=np.int64) % len(CLASS_NAMES)
    rng.shuffle(labels)
    images = np.empty((num_images, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    for start in range(0, num_images, _CHUNK):
        chunk = labels[start : start + _CHUNK]
        images[start : start + len(chunk)] = _render(chunk, rng)
    return images, labels


def _render(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n = len(labels)
    orientation_ids = labels // len(PERIODS)
    fine = (labels % len(PERIODS)) == 0
    shape_ids = rng.integers(0, len(SHAPES), size=n)
    y, x = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32) + 0.5

    image = _background(n, rng, x, y)
    for _ in range(NUM_DISTRACTORS):
        image = _add_distractor(image, rng, x, y)

    radius = rng.uniform(*OBJECT_RADIUS_RANGE_PX, size=n).astype(np.float32)
    margin = radius * 0.6
    cx = rng.uniform(margin, IMAGE_SIZE - margin).astype(np.float32)
    cy = rng.uniform(margin, IMAGE_SIZE - margin).astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi, size=n).astype(np.float32)
    u, v = _local_coords(x, y, cx, cy, angle, radius)
    distance = _signed_distance(shape_ids, u, v)
    mask = _sigmoid(-distance * radius[:, None, None] * 1.5)

    texture = _texture(orientation_ids, fine, rng, x, y)
    bright = _random_colours(n, rng, low=0.45, high=1.0)
    dark = bright * rng.uniform(0.15, 0.5, size=(n, 1)).astype(np.float32)
    fill = dark[:, :, None, None] + (bright - dark)[:, :, None, None] * texture[:, None]
    image = image * (1 - mask[:, None]) + fill * mask[:, None]
    image += rng.normal(0, PIXEL_NOISE_STD, size=image.shape).astype(np.float32)
    return np.clip(image, 0.0, 1.0)


def _background(n: int, rng: np.random.Generator, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A random colour with a linear gradient and a blurry low-frequency blotch pattern."""
    base = _random_colours(n, rng, low=0.1, high=0.8)
    gx, gy = (rng.uniform(-0.3, 0.3, size=(2, n, 3, 1, 1)) / IMAGE_SIZE).astype(np.float32)
    image = base[:, :, None, None] + gx * (x - IMAGE_SIZE / 2) + gy * (y - IMAGE_SIZE / 2)
    coarse = torch.from_numpy(rng.normal(0, 0.15, size=(n, 3, 5, 5)).astype(np.float32))
    blotches = F.interpolate(coarse, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bicubic", align_corners=True)
    return image + blotches.numpy()


def _add_distractor(image: np.ndarray, rng: np.random.Generator, x, y) -> np.ndarray:
    """A small untextured blob or a thin line: clutter that carries no label."""
    n = image.shape[0]
    cx, cy = rng.uniform(0, IMAGE_SIZE, size=(2, n, 1, 1)).astype(np.float32)
    if rng.random() < 0.5:
        radius = rng.uniform(1.5, 3.5, size=(n, 1, 1)).astype(np.float32)
        distance = np.sqrt((x - cx) ** 2 + (y - cy) ** 2) - radius
    else:
        theta = rng.uniform(0, np.pi, size=(n, 1, 1)).astype(np.float32)
        along = (x - cx) * np.cos(theta) + (y - cy) * np.sin(theta)
        across = -(x - cx) * np.sin(theta) + (y - cy) * np.cos(theta)
        distance = np.maximum(np.abs(across) - 0.7, np.abs(along) - rng.uniform(4, 10))
    mask = _sigmoid(-distance * 2.0)[:, None]
    colour = _random_colours(n, rng, low=0.0, high=1.0)[:, :, None, None]
    return image * (1 - mask) + colour * mask


def _local_coords(x, y, cx, cy, angle, radius):
    dx = x - cx[:, None, None]
    dy = y - cy[:, None, None]
    cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    r = radius[:, None, None]
    return (dx * cos + dy * sin) / r, (-dx * sin + dy * cos) / r


def _signed_distance(shape_ids: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Signed distance to each shape's outline, in units of the object radius (< 0 inside)."""
    norm = np.sqrt(u**2 + v**2)
    third = 2 * np.pi / 3
    triangle = np.max(
        [u * np.cos(a) + v * np.sin(a) for a in (np.pi / 2, np.pi / 2 + third, np.pi / 2 + 2 * third)],
        axis=0,
    ) - 0.55
    candidates = np.stack(
        [
            norm - 0.95,
            np.maximum(np.abs(u), np.abs(v)) - 0.8,
            triangle,
            np.abs(norm - 0.72) - 0.28,
            np.minimum(
                np.maximum(np.abs(u) - 1.0, np.abs(v) - 0.3),
                np.maximum(np.abs(u) - 0.3, np.abs(v) - 1.0),
            ),
        ]
    )
    return np.take_along_axis(candidates, shape_ids[None, :, None, None], axis=0)[0]


def _texture(orientation_ids, fine, rng: np.random.Generator, x, y) -> np.ndarray:
    """Stripes whose angle and period are drawn around the class's values, with overlap."""
    n = len(orientation_ids)
    centre = np.asarray(ORIENTATIONS_DEG, dtype=np.float32)[orientation_ids]
    theta = np.deg2rad(centre + rng.normal(0, ORIENTATION_JITTER_DEG, size=n)).astype(np.float32)[:, None, None]
    period = np.where(
        fine, rng.uniform(*FINE_PERIOD_RANGE_PX, size=n), rng.uniform(*COARSE_PERIOD_RANGE_PX, size=n)
    ).astype(np.float32)[:, None, None]
    phase = rng.uniform(0, 2 * np.pi, size=(n, 1, 1)).astype(np.float32)
    wave = np.sin((x * np.cos(theta) + y * np.sin(theta)) * (2 * np.pi / period) + phase)
    return 0.5 + 0.5 * np.tanh(2.0 * wave)


def _random_colours(n: int, rng: np.random.Generator, low: float, high: float) -> np.ndarray:
    return rng.uniform(low, high, size=(n, 3)).astype(np.float32)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.tanh(0.5 * z))
