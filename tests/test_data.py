"""Every data source gives seeded, normalised (CHW float32 tensor, int label) splits."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edgeprune.training.data import DATA_SPECS, load_dataset
from edgeprune.errors import InputError


def _all_images(dataset) -> torch.Tensor:
    return torch.stack([dataset[i][0] for i in range(len(dataset))])


def _all_labels(dataset) -> list[int]:
    return [dataset[i][1] for i in range(len(dataset))]


def test_synthetic_is_deterministic_for_a_seed():
    first = load_dataset("synthetic", seed=3, train_size=40, test_size=20)
    second = load_dataset("synthetic", seed=3, train_size=40, test_size=20)
    assert torch.equal(_all_images(first.train), _all_images(second.train))
    assert _all_labels(first.test) == _all_labels(second.test)


def test_synthetic_differs_between_seeds():
    first = load_dataset("synthetic", seed=0, train_size=40, test_size=20)
    second = load_dataset("synthetic", seed=1, train_size=40, test_size=20)
    assert not torch.equal(_all_images(first.train), _all_images(second.train))


def test_synthetic_items_are_normalised_chw_float_tensors_with_int_labels():
    splits = load_dataset("synthetic", train_size=200, test_size=20)
    image, label = splits.train[0]
    assert image.dtype == torch.float32 and tuple(image.shape) == splits.info.input_shape == (3, 32, 32)
    assert isinstance(label, int)
    images = _all_images(splits.train)
    assert images.mean(dim=(0, 2, 3)).abs().max() < 0.05
    assert (images.std(dim=(0, 2, 3)) - 1).abs().max() < 0.05


def test_synthetic_classes_are_balanced_and_named():
    splits = load_dataset("synthetic", train_size=100, test_size=50)
    assert np.bincount(_all_labels(splits.train), minlength=10).tolist() == [10] * 10
    assert np.bincount(_all_labels(splits.test), minlength=10).tolist() == [5] * 10
    assert splits.info.num_classes == 10 and len(set(splits.info.class_names)) == 10


def test_synthetic_test_split_does_not_depend_on_train_size():
    small = load_dataset("synthetic", train_size=20, test_size=30)
    large = load_dataset("synthetic", train_size=60, test_size=30)
    assert _all_labels(small.test) == _all_labels(large.test)


def test_synthetic_resizes_to_image_size():
    splits = load_dataset("synthetic", image_size=16, train_size=10, test_size=10)
    assert splits.info.input_shape == (3, 16, 16)
    assert tuple(splits.test[0][0].shape) == (3, 16, 16)


def test_digits_are_resized_to_three_channel_images_with_a_stratified_split():
    splits = load_dataset("digits", seed=0)
    assert len(splits.train) + len(splits.test) == 1797
    assert tuple(splits.train[0][0].shape) == (3, 32, 32)
    assert torch.equal(splits.train[0][0][0], splits.train[0][0][1])
    assert sorted(set(_all_labels(splits.test))) == list(range(10))
    assert splits.info.class_names == tuple(str(d) for d in range(10))


def test_digits_split_is_fixed_by_the_seed():
    first = load_dataset("digits", seed=5, train_size=100, test_size=50)
    again = load_dataset("digits", seed=5, train_size=100, test_size=50)
    other = load_dataset("digits", seed=6, train_size=100, test_size=50)
    assert (len(first.train), len(first.test)) == (100, 50)
    assert torch.equal(_all_images(first.test), _all_images(again.test))
    assert not torch.equal(_all_images(first.test), _all_images(other.test))


def test_digits_rejects_a_split_larger_than_the_data():
    with pytest.raises(InputError, match="cannot split"):
        load_dataset("digits", train_size=2000, test_size=100)


CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _write_cifar_copy(root: Path, per_batch: int = 4, test_count: int = 6) -> Path:
    """A tiny CIFAR-10 in the real on-disk format (pickled dicts in cifar-10-batches-py)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def batch(count: int, offset: int) -> dict:
        return {
            "batch_label": "generated",
            "labels": [(offset + i) % 10 for i in range(count)],
            "data": rng.integers(0, 256, size=(count, 3072), dtype=np.uint8),
            "filenames": [f"img{offset + i}.png" for i in range(count)],
        }

    for index in range(1, 6):
        (folder / f"data_batch_{index}").write_bytes(pickle.dumps(batch(per_batch, index * per_batch)))
    (folder / "test_batch").write_bytes(pickle.dumps(batch(test_count, 0)))
    meta = {"label_names": CIFAR_NAMES, "num_cases_per_batch": per_batch, "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta))
    return root


@pytest.fixture
def cifar_copy(tmp_path, monkeypatch):
    """The generated copy cannot match the real files' md5 sums, so only existence is checked."""
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda path, md5=None: Path(path).is_file())
    return _write_cifar_copy(tmp_path / "cifar")


def test_cifar10_loads_a_local_copy_in_the_official_format(cifar_copy):
    splits = load_dataset("cifar10", data_dir=cifar_copy)
    assert (len(splits.train), len(splits.test)) == (20, 6)
    assert splits.info.class_names == tuple(CIFAR_NAMES)
    image, label = splits.test[3]
    assert tuple(image.shape) == (3, 32, 32) and image.dtype == torch.float32
    assert label == 3


def test_cifar10_takes_a_seeded_subset(cifar_copy):
    first = load_dataset("cifar10", data_dir=cifar_copy, train_size=8, test_size=3, seed=1)
    again = load_dataset("cifar10", data_dir=cifar_copy, train_size=8, test_size=3, seed=1)
    assert (len(first.train), len(first.test)) == (8, 3)
    assert _all_labels(first.train) == _all_labels(again.train)


def test_cifar10_without_data_dir_says_to_pass_one():
    with pytest.raises(InputError, match="--data-dir"):
        load_dataset("cifar10")


def test_cifar10_missing_copy_says_to_pass_a_local_copy(tmp_path):
    with pytest.raises(InputError, match="not found or incomplete.*--data-dir"):
        load_dataset("cifar10", data_dir=tmp_path / "nowhere")


def test_cifar10_copy_with_wrong_checksums_is_refused(tmp_path):
    root = _write_cifar_copy(tmp_path / "cifar")
    with pytest.raises(InputError, match="not found or incomplete"):
        load_dataset("cifar10", data_dir=root)


def _write_image_folder(root: Path, classes=("cat", "dog", "fox"), per_class: int = 5) -> Path:
    rng = np.random.default_rng(0)
    for class_name in classes:
        (root / class_name).mkdir(parents=True)
        for index in range(per_class):
            pixels = rng.integers(0, 256, size=(12, 10, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / class_name / f"{index}.png")
    return root


def test_folder_resizes_images_and_splits_every_class_into_both_splits(tmp_path):
    root = _write_image_folder(tmp_path / "images")
    splits = load_dataset(f"folder:{root}", image_size=16)
    assert splits.info.class_names == ("cat", "dog", "fox")
    assert len(splits.train) + len(splits.test) == 15
    assert sorted(set(_all_labels(splits.test))) == [0, 1, 2]
    assert tuple(splits.train[0][0].shape) == splits.info.input_shape == (3, 16, 16)


def test_folder_uses_given_train_and_test_subfolders(tmp_path):
    _write_image_folder(tmp_path / "images" / "train", per_class=4)
    _write_image_folder(tmp_path / "images" / "test", per_class=2)
    splits = load_dataset(f"folder:{tmp_path / 'images'}")
    assert (len(splits.train), len(splits.test)) == (12, 6)


def test_folder_that_does_not_exist_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_dataset(f"folder:{tmp_path / 'missing'}")


def test_folder_without_images_is_a_clear_error(tmp_path):
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    with pytest.raises(InputError, match="no images found"):
        load_dataset(f"folder:{tmp_path / 'empty'}")


def test_unknown_data_spec_lists_the_valid_ones():
    with pytest.raises(InputError) as error:
        load_dataset("imagenet")
    for spec in DATA_SPECS:
        assert spec in str(error.value)


def test_folder_evaluation_images_are_fixed_and_training_images_augmented(tmp_path):
    from edgeprune.training.data.preprocess import Preprocess

    _write_image_folder(tmp_path / "images" / "train", per_class=4)
    _write_image_folder(tmp_path / "images" / "val", per_class=2)
    preprocess = Preprocess(16, 20, mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2))
    splits = load_dataset(f"folder:{tmp_path / 'images'}", preprocess=preprocess)
    assert splits.info.mean == (0.5, 0.5, 0.5) and splits.info.input_shape == (3, 16, 16)
    assert torch.equal(splits.test[0][0], splits.test[0][0])
    torch.manual_seed(0)
    draws = [splits.train[0][0] for _ in range(4)]
    assert any(not torch.equal(draws[0], d) for d in draws[1:])


def test_preprocess_rejects_a_crop_larger_than_its_resize_and_bad_statistics():
    from edgeprune.training.data.preprocess import Preprocess

    with pytest.raises(InputError, match="at most the resize size"):
        Preprocess(64, 32)
    with pytest.raises(InputError, match="std > 0"):
        Preprocess.for_size(32, mean=(0.5, 0.5, 0.5), std=(0.2, 0.0, 0.2))
