"""A pruned folder (plan.json + model.safetensors) saves atomically and loads back exactly."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgeprune.workflows import checkpoint
from edgeprune.workflows.checkpoint import PLAN_FILE, WEIGHTS_FILE, load, save_pruned
from edgeprune.errors import InputError, OutputExistsError
from edgeprune.analysis.graph import analyze
from edgeprune.plan import PlanConfig
from edgeprune.workflows.prune import example_input, prune_model
from edgeprune.shrink import num_units

SHAPE = (3, 16, 16)


@pytest.fixture(scope="module")
def pruned():
    from edgeprune.training.models.cifar_resnet import resnet20

    torch.manual_seed(0)
    model = resnet20().eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    graph = analyze(model, example_input(SHAPE))
    gates = torch.rand(num_units(graph)) + 0.5
    rng = np.random.default_rng(0)
    scores = {g.id: rng.random(g.size) for g in graph.groups}
    return prune_model(model, SHAPE, scores, PlanConfig(0.5), criterion="gate", gates=gates, graph=graph)


def test_save_then_load_gives_the_shrunk_models_outputs(pruned, tmp_path):
    out = save_pruned(tmp_path / "out", pruned, "resnet20", 10)
    loaded = load("resnet20", out)
    x = torch.randn(3, *SHAPE)
    with torch.no_grad():
        assert torch.allclose(loaded(x), pruned.model.eval()(x), atol=1e-6)
    assert sum(p.numel() for p in loaded.parameters()) == pruned.plan.params_after
    assert not loaded.training


def test_load_without_a_spec_uses_the_one_in_plan_json(pruned, tmp_path):
    out = save_pruned(tmp_path / "out", pruned, "resnet20", 10)
    loaded = load(None, out)
    assert loaded.fc.in_features == pruned.model.fc.in_features


def test_plan_json_records_the_request_the_result_and_the_weights_hash(pruned, tmp_path):
    out = save_pruned(tmp_path / "out", pruned, "resnet20", 10)
    document = json.loads((out / PLAN_FILE).read_text())
    for key in ("keep_requested", "keep_achieved", "params_before", "params_after", "flops_before", "flops_after",
                "input_shape", "ignore", "criterion", "note", "schema_version", "groups"):
        assert key in document
    assert document["model"] == "resnet20" and document["num_classes"] == 10
    assert document["input_shape"] == list(SHAPE)
    assert all("kept_units" in g for g in document["groups"])
    assert len(document["weights"]["sha256"]) == 64
    assert sorted(p.name for p in out.iterdir()) == [WEIGHTS_FILE, PLAN_FILE]


def test_existing_output_is_refused_without_force(pruned, tmp_path):
    out = save_pruned(tmp_path / "out", pruned, "resnet20", 10)
    with pytest.raises(OutputExistsError, match="--force"):
        save_pruned(out, pruned, "resnet20", 10)
    save_pruned(out, pruned, "resnet20", 10, force=True)
    assert (out / PLAN_FILE).is_file()


def test_corrupt_plan_json_is_an_input_error(pruned, tmp_path):
    out = save_pruned(tmp_path / "out", pruned, "resnet20", 10)
    (out / PLAN_FILE).write_text("{ not json")
    with pytest.raises(InputError, match="not valid JSON"):
        load("resnet20", out)


def test_plan_json_missing_fields_is_an_input_error(pruned, tmp_path):
    out = save_pruned(tmp_path / "out", pruned, "resnet20", 10)
    document = json.loads((out / PLAN_FILE).read_text())
    del document["groups"]
    (out / PLAN_FILE).write_text(json.dumps(document))
    with pytest.raises(InputError, match="not a valid edgeprune plan"):
        load("resnet20", out)


def test_missing_weights_file_is_an_input_error(pruned, tmp_path):
    out = save_pruned(tmp_path / "out", pruned, "resnet20", 10)
    (out / WEIGHTS_FILE).unlink()
    with pytest.raises(InputError, match="model.safetensors not found"):
        load("resnet20", out)


def test_weights_that_do_not_match_the_plan_are_refused(pruned, tmp_path):
    out = save_pruned(tmp_path / "out", pruned, "resnet20", 10)
    (out / WEIGHTS_FILE).write_bytes((out / WEIGHTS_FILE).read_bytes()[:-8])
    with pytest.raises(InputError, match="sha256"):
        load("resnet20", out)


def test_plan_for_another_architecture_is_refused(pruned, tmp_path):
    out = save_pruned(tmp_path / "out", pruned, "resnet20", 10)
    with pytest.raises(InputError, match="made for another model"):
        load("resnet56", out)


def test_missing_folder_names_the_command_that_writes_it(tmp_path):
    with pytest.raises(InputError, match="edgeprune prune"):
        checkpoint.load("resnet20", tmp_path / "nothing")
