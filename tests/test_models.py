"""Model specs build traceable CNNs with the requested number of outputs."""
from __future__ import annotations

import sys

import pytest
import torch
from torch import fx, nn

from edgeprune.errors import InputError
from edgeprune.training.models import MODEL_SPECS, build_model


@pytest.mark.parametrize(
    "spec, params_low, params_high",
    [("resnet20", 0.26e6, 0.28e6), ("resnet56", 0.84e6, 0.87e6), ("resnet18", 11.0e6, 11.3e6)],
)
def test_builtin_resnets_have_the_published_size_and_output(spec, params_low, params_high):
    model = build_model(spec, num_classes=7)
    assert params_low < sum(p.numel() for p in model.parameters()) < params_high
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)


@pytest.mark.parametrize("spec", ["resnet20", "resnet56", "resnet18"])
def test_builtin_resnets_trace_with_fx_and_compute_the_same(spec):
    model = build_model(spec, num_classes=10).eval()
    traced = fx.symbolic_trace(model)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(traced(x), model(x))


def test_every_residual_connection_is_a_real_tensor_add():
    traced = fx.symbolic_trace(build_model("resnet20", num_classes=10))
    adds = [n for n in traced.graph.nodes if n.op == "call_function" and n.target in (torch.add, __import__("operator").add)]
    assert len(adds) == 9
    projections = [name for name, m in traced.named_modules() if name.endswith("shortcut.0")]
    assert len(projections) == 2 and all(isinstance(traced.get_submodule(p), nn.Conv2d) for p in projections)


def test_relus_are_separate_non_inplace_modules():
    model = build_model("resnet20", num_classes=10)
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    assert len(relus) == 1 + 2 * 9
    assert len({id(m) for m in relus}) == len(relus) and not any(m.inplace for m in relus)


def test_builtin_resnet_takes_the_data_channel_count():
    model = build_model("resnet20", num_classes=4, input_shape=(1, 16, 16))
    assert model(torch.randn(1, 1, 16, 16)).shape == (1, 4)


def test_torchvision_models_are_built_by_name_with_random_weights():
    model = build_model("tv:mobilenet_v3_small", num_classes=5)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)


def test_unknown_torchvision_model_lists_the_known_ones():
    with pytest.raises(InputError, match="unknown torchvision.*resnet18"):
        build_model("tv:resnet7", num_classes=10)


FACTORY_SOURCE = """
from torch import nn

def tiny(num_classes):
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))

def fixed_ten(num_classes):
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(10))

def not_a_model(num_classes):
    return "model"
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_factories.py").write_text(FACTORY_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_factories"
    sys.modules.pop("my_factories", None)


def test_module_function_spec_calls_the_users_factory(user_module):
    model = build_model(f"{user_module}:tiny", num_classes=3)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3)


def test_factory_with_the_wrong_number_of_outputs_is_refused(user_module):
    with pytest.raises(InputError, match=r"expected logits of shape \(1, 3\)"):
        build_model(f"{user_module}:fixed_ten", num_classes=3)


def test_factory_that_returns_no_module_is_refused(user_module):
    with pytest.raises(InputError, match="not a torch.nn.Module"):
        build_model(f"{user_module}:not_a_model", num_classes=3)


def test_missing_factory_module_or_function_is_a_clear_error(user_module):
    with pytest.raises(InputError, match="cannot import"):
        build_model("no_such_module_xyz:make", num_classes=3)
    with pytest.raises(InputError, match="has no function 'missing'"):
        build_model(f"{user_module}:missing", num_classes=3)


def test_unknown_model_lists_the_options():
    with pytest.raises(InputError) as error:
        build_model("resnet21", num_classes=10)
    for spec in MODEL_SPECS:
        assert spec in str(error.value)
