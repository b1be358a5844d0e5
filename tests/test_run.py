"""Run folders round-trip, and every broken one fails with one line saying what to do."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from edgeprune.errors import OutputExistsError, RunError
from edgeprune.training.models import build_model
from edgeprune.training.runs import RunSpec, load_run, load_splits, train_run
from edgeprune.training.train import TrainConfig, evaluate

CONFIG = TrainConfig(epochs=1, batch_size=32, lr=0.05, seed=2)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    return train_run(run_dir, "resnet20", "synthetic", CONFIG, train_size=64, test_size=32, image_size=16)


@pytest.fixture
def run_copy(trained, tmp_path):
    """A private copy of the trained run that a test may break."""
    return shutil.copytree(trained.path, tmp_path / "copy")


def test_train_run_writes_the_run_files(trained):
    assert sorted(p.name for p in trained.path.iterdir()) == ["dense.pt", "metrics.json", "run.json"]
    spec = json.loads((trained.path / "run.json").read_text())
    assert spec["schema_version"] == 1
    assert (spec["model"], spec["data"], spec["seed"], spec["input_shape"]) == ("resnet20", "synthetic", 2, [3, 16, 16])
    assert spec["train"] == CONFIG.to_dict()
    assert {"edgeprune", "torch", "torchvision"} <= set(spec["versions"])
    assert spec["versions"]["torch"] is not None


def test_load_run_gives_back_the_same_model_spec_and_metrics(trained):
    loaded = load_run(trained.path)
    assert loaded.spec == trained.spec
    assert loaded.metrics == json.loads((trained.path / "metrics.json").read_text())
    for key, tensor in trained.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], tensor), key
    assert not loaded.model.training


def test_load_splits_rebuilds_the_test_split_the_accuracy_was_measured_on(trained):
    loaded = load_run(trained.path)
    splits = load_splits(loaded.spec)
    result = evaluate(loaded.model, splits.test)
    assert result.n == loaded.metrics["dense"]["test_n"] == 32
    assert result.accuracy == pytest.approx(loaded.metrics["dense"]["test_accuracy"])


def test_run_spec_round_trips_through_a_dict(trained):
    assert RunSpec.from_dict(json.loads(json.dumps(trained.spec.to_dict()))) == trained.spec


def test_train_run_refuses_an_existing_run_without_force(run_copy):
    with pytest.raises(OutputExistsError, match="--force"):
        train_run(run_copy, "resnet20", "synthetic", CONFIG, train_size=16, test_size=16, image_size=16)


def test_force_retrains_and_drops_stale_gates(run_copy):
    (run_copy / "gates.pt").write_bytes(b"stale")
    train_run(run_copy, "resnet20", "digits", CONFIG, train_size=32, test_size=16, image_size=8, force=True)
    assert not (run_copy / "gates.pt").exists()
    assert load_run(run_copy).spec.data == "digits"


def test_missing_run_folder_says_to_train_first(tmp_path):
    with pytest.raises(RunError, match="not found; run `edgeprune train --run"):
        load_run(tmp_path / "never-trained")


def test_missing_run_json_is_reported(run_copy):
    (run_copy / "run.json").unlink()
    with pytest.raises(RunError, match="run.json is missing.*--force"):
        load_run(run_copy)


def test_corrupt_run_json_is_reported(run_copy):
    (run_copy / "run.json").write_text("{ not json")
    with pytest.raises(RunError, match="run.json is not valid JSON"):
        load_run(run_copy)


def test_run_json_of_another_schema_version_is_reported(run_copy):
    spec = json.loads((run_copy / "run.json").read_text())
    spec["schema_version"] = 99
    (run_copy / "run.json").write_text(json.dumps(spec))
    with pytest.raises(RunError, match="schema_version 99, this edgeprune reads 1"):
        load_run(run_copy)


def test_missing_dense_checkpoint_is_reported(run_copy):
    (run_copy / "dense.pt").unlink()
    with pytest.raises(RunError, match="dense.pt is missing"):
        load_run(run_copy)


def test_corrupt_dense_checkpoint_is_reported(run_copy):
    (run_copy / "dense.pt").write_bytes(b"this is not a torch file")
    with pytest.raises(RunError, match="dense.pt is not a readable torch checkpoint"):
        load_run(run_copy)


def test_checkpoint_of_another_shape_names_the_key_and_both_shapes(run_copy):
    torch.save(build_model("resnet20", num_classes=5).state_dict(), run_copy / "dense.pt")
    with pytest.raises(RunError, match=r"'fc.weight' has shape \(5, 64\) in the checkpoint but \(10, 64\) in the model"):
        load_run(run_copy)


def test_checkpoint_with_missing_or_extra_keys_names_the_key(run_copy):
    state = torch.load(run_copy / "dense.pt", weights_only=True)
    del state["fc.bias"]
    torch.save(state, run_copy / "dense.pt")
    with pytest.raises(RunError, match=r"1 missing key\(s\), first 'fc.bias'"):
        load_run(run_copy)
    state = build_model("resnet20", num_classes=10).state_dict()
    state["gate.scale"] = torch.ones(3)
    torch.save(state, run_copy / "dense.pt")
    with pytest.raises(RunError, match=r"1 unexpected key\(s\), first 'gate.scale'"):
        load_run(run_copy)
