"""Data sources by spec: `synthetic` (built-in), `digits` (scikit-learn), `cifar10`, `folder:PATH`.

Every source returns the same `DataSplits`, with splits fixed by the seed, so a run can be
rebuilt exactly from what its `run.json` records.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from edgeprune.training.data.base import DataSplits, DatasetInfo, TensorImageDataset
from edgeprune.training.data.preprocess import Preprocess
from edgeprune.errors import InputError

DATA_SPECS = ("synthetic", "digits", "cifar10", "folder:PATH")

__all__ = ["DATA_SPECS", "DataSplits", "DatasetInfo", "Preprocess", "TensorImageDataset", "load_dataset"]


def load_dataset(
    spec: str,
    *,
    seed: int = 0,
    data_dir: Optional[Path] = None,
    image_size: Optional[int] = None,
    train_size: Optional[int] = None,
    test_size: Optional[int] = None,
    download: bool = False,
    preprocess: Optional[Preprocess] = None,
) -> DataSplits:
    """Load the data set named by `spec`; sizes left as None take the source's defaults.

    `download` only applies to `cifar10`, and only when asked: offline, pass `data_dir`.
    `preprocess` (resize, crop, normalisation) applies to `folder:` images, whose source has
    no statistics of its own; the built-in sets normalise by their own.
    """
    sizes = dict(seed=seed, image_size=image_size, train_size=train_size, test_size=test_size)
    if spec == "synthetic":
        from edgeprune.training.data.synthetic import load_synthetic

        return load_synthetic(**sizes)
    if spec == "digits":
        from edgeprune.training.data.digits import load_digits

        return load_digits(**sizes)
    if spec == "cifar10":
        from edgeprune.training.data.cifar import load_cifar10

        return load_cifar10(data_dir=data_dir, download=download, **sizes)
    if spec.startswith("folder:") and spec[len("folder:") :]:
        from edgeprune.training.data.folder import load_folder

        return load_folder(Path(spec[len("folder:") :]), preprocess=preprocess, **sizes)
    raise InputError(f"unknown data set {spec!r}; choose one of: {', '.join(DATA_SPECS)}")
