"""Network Slimming as a criterion: sparsity training on BN scales, then |gamma| ranks a trained copy."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from edgeprune.analysis.graph import analyze
from edgeprune.errors import InputError
from edgeprune.plan import PlanConfig
from edgeprune.workflows.prune import prune_model
from edgeprune.workflows.recipe import SlimmingConfig, importance_from, learned_importance, slimming_phase
from edgeprune.importance.gates import GateConfig


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


@pytest.fixture(scope="module")
def digits():
    from edgeprune.training.data import load_dataset

    return load_dataset("digits", image_size=8, train_size=400, test_size=100)


def _bn_l1(model):
    return sum(float(m.weight.detach().abs().sum()) for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def test_the_sparsity_phase_shrinks_bn_scales_on_a_copy(digits):
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plain = slimming_phase(model, digits.train, SlimmingConfig(epochs=2, l1=0.0))
    slim = slimming_phase(model, digits.train, SlimmingConfig(epochs=2, l1=1e-2))
    assert _bn_l1(slim) < _bn_l1(plain)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_slimming_prunes_its_trained_copy_and_meets_the_budget(digits):
    model = _model()
    graph = analyze(model, torch.randn(1, 3, 8, 8))
    importance, learned = learned_importance("slimming", model, graph, digits.train,
                                             gate_config=GateConfig(max_epochs=1), gates_path=None)
    assert importance.model is not None and importance.model is not model and not learned
    result = prune_model(importance.model, (3, 8, 8), importance.scores, PlanConfig(keep=0.5, round_to=1),
                         criterion="slimming", graph=graph)
    assert abs(result.plan.keep_achieved - 0.5) < 0.03
    assert result.shrink_max_diff <= result.shrink_tolerance


def test_slimming_without_its_phase_or_without_batchnorm_says_what_to_do(digits):
    model = _model()
    graph = analyze(model, torch.randn(1, 3, 8, 8))
    with pytest.raises(InputError, match="sparsity-training phase"):
        importance_from("slimming", model, graph)
    with pytest.raises(InputError, match="needs BatchNorm"):
        slimming_phase(nn.Sequential(nn.Flatten(), nn.Linear(192, 10)), digits.train)
