"""Gate learning: scores that rank channels, and when their values belong in the weights."""
from __future__ import annotations

import torch
from torch import nn

from edgeprune.importance.gates import GateConfig, gates_to_fold, learn_gates
from edgeprune.analysis.graph import analyze
from edgeprune.shrink import num_units


def _tiny_data(n: int = 64):
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(n, 3, 8, 8, generator=generator)
    labels = (images[:, 0].mean(dim=(1, 2)) > 0).long()
    return torch.utils.data.TensorDataset(images, labels)


def _tiny_model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 2))


def test_frozen_gate_phase_leaves_the_dense_weights_untouched():
    model = _tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    graph = analyze(model, torch.randn(1, 3, 8, 8))
    result = learn_gates(model, graph, _tiny_data(), GateConfig(max_epochs=2, batch_size=16))
    assert result.gates.shape == (num_units(graph),)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_l1_penalty_pulls_gates_below_one():
    model = _tiny_model()
    graph = analyze(model, torch.randn(1, 3, 8, 8))
    result = learn_gates(model, graph, _tiny_data(), GateConfig(max_epochs=2, batch_size=16, l1=4.0))
    assert float(result.gates.abs().mean()) < 1.0
    assert result.history and "rank_change" in result.history[0]


def test_gates_are_folded_only_after_a_joint_phase():
    gates = torch.rand(8)
    assert gates_to_fold(gates, GateConfig(weights="frozen")) is None
    assert gates_to_fold(gates, GateConfig(weights="joint")) is gates
    assert gates_to_fold(None, GateConfig(weights="joint")) is None


def test_saved_gates_are_reused_only_for_the_same_gate_config(tmp_path):
    from edgeprune.importance.gates import load_or_learn_gates

    model = _tiny_model()
    graph = analyze(model, torch.randn(1, 3, 8, 8))
    path = tmp_path / "gates.pt"
    config = GateConfig(max_epochs=1, batch_size=16)
    first, learned = load_or_learn_gates(path, model, graph, _tiny_data(), config)
    assert learned and path.exists()
    again, learned_again = load_or_learn_gates(path, model, graph, _tiny_data(), config)
    assert not learned_again and torch.equal(first, again)
    _, relearned = load_or_learn_gates(path, model, graph, _tiny_data(), GateConfig(max_epochs=1, batch_size=16, l1=0.5))
    assert relearned


def test_gate_learning_leaves_the_callers_global_rng_as_it_was():
    model = _tiny_model()
    graph = analyze(model, torch.randn(1, 3, 8, 8))
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    learn_gates(model, graph, _tiny_data(), GateConfig(max_epochs=1, batch_size=16, seed=7))
    assert torch.equal(torch.get_rng_state(), state)
