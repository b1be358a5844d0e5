"""Physical shrink: smaller layers that compute exactly what the gated model computes."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edgeprune.errors import CheckFailedError
from edgeprune.analysis.graph import analyze
from edgeprune.training.models.cifar_resnet import resnet20
from edgeprune.plan import PlanConfig, make_plan
from edgeprune.shrink import check_shrink, gated, num_units, plan_gates, shrink

SHAPE = (3, 32, 32)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Many small ops: with 2 OpenMP threads on a shared, busy 2-core machine every op waits for a
    descheduled thread (densenet121 at 32 px: 5 s a forward instead of 0.02 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _randomise_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                for tensor, low, high in ((module.running_mean, -0.5, 0.5), (module.running_var, 0.5, 2.0),
                                          (module.weight, 0.5, 1.5), (module.bias, -0.5, 0.5)):
                    tensor.copy_(torch.rand(tensor.shape, generator=generator) * (high - low) + low)
    return model.eval()


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = _randomise_batchnorm(resnet20())
    graph = analyze(model, torch.randn(1, *SHAPE))
    rng = np.random.default_rng(0)
    plan = make_plan(model, graph, {g.id: rng.random(g.size) for g in graph.groups}, PlanConfig(0.4))
    return model, graph, plan


def test_shrunk_model_equals_gated_model_with_random_gates(setup):
    model, graph, plan = setup
    gates = torch.rand(num_units(graph), generator=torch.Generator().manual_seed(1)) * 1.5 + 0.1
    shrunk = shrink(model, graph, plan, gates)
    assert check_shrink(model, shrunk, graph, plan, torch.randn(4, *SHAPE), gates) <= 1e-5


def test_shrunk_model_without_gates_equals_model_with_dropped_channels_zeroed(setup):
    model, graph, plan = setup
    shrunk = shrink(model, graph, plan)
    x = torch.randn(3, *SHAPE)
    with torch.no_grad(), gated(model, graph, plan_gates(graph, plan)):
        expected = model(x)
    with torch.no_grad():
        actual = shrunk(x)
    assert torch.allclose(actual, expected, atol=1e-5)


def test_shrink_leaves_the_original_model_untouched(setup):
    model, graph, plan = setup
    before = {name: value.clone() for name, value in model.state_dict().items()}
    shrink(model, graph, plan, torch.rand(num_units(graph)) + 0.5)
    after = model.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)


def test_shrunk_layers_are_physically_smaller_and_consistent(setup):
    model, graph, plan = setup
    shrunk = shrink(model, graph, plan)
    assert sum(p.numel() for p in shrunk.parameters()) < sum(p.numel() for p in model.parameters())
    for module in shrunk.modules():
        if isinstance(module, nn.Conv2d):
            assert module.weight.shape[:2] == (module.out_channels, module.in_channels // module.groups)
        elif isinstance(module, nn.BatchNorm2d):
            assert module.weight.shape == module.running_mean.shape == (module.num_features,)
        elif isinstance(module, nn.Linear):
            assert module.weight.shape == (module.out_features, module.in_features)


def test_shrunk_parameters_are_trainable_leaves(setup):
    model, graph, plan = setup
    shrunk = shrink(model, graph, plan)
    assert all(isinstance(p, nn.Parameter) and p.requires_grad and p.is_leaf for p in shrunk.parameters())
    shrunk.train()
    shrunk(torch.randn(2, *SHAPE)).sum().backward()
    assert shrunk.conv1.weight.grad is not None


def test_gated_hooks_are_removed_on_exit(setup):
    model, graph, plan = setup
    x = torch.randn(2, *SHAPE)
    with torch.no_grad():
        plain = model(x)
        with gated(model, graph, torch.zeros(num_units(graph))):
            zeroed = model(x)
        again = model(x)
    assert not torch.allclose(plain, zeroed)
    assert torch.equal(plain, again)


def test_check_shrink_fails_loudly_when_the_shrunk_model_differs(setup):
    model, graph, plan = setup
    shrunk = shrink(model, graph, plan)
    with torch.no_grad():
        shrunk.fc.bias.add_(1.0)
    with pytest.raises(CheckFailedError, match="differs from the gated model"):
        check_shrink(model, shrunk, graph, plan, torch.randn(2, *SHAPE))


class Grouped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 32, 1)
        self.bn = nn.BatchNorm2d(32)
        self.g = nn.Conv2d(32, 64, 3, padding=1, groups=8)
        self.dw = nn.Conv2d(64, 64, 3, padding=1, groups=64)
        self.fc = nn.Linear(64, 5)

    def forward(self, x):
        x = self.dw(torch.relu(self.g(torch.relu(self.bn(self.a(x))))))
        return self.fc(x.mean((2, 3)))


def test_grouped_and_depthwise_convs_shrink_by_whole_conv_groups_and_stay_exact():
    model = _randomise_batchnorm(Grouped())
    graph = analyze(model, torch.randn(1, 3, 8, 8))
    rng = np.random.default_rng(0)
    plan = make_plan(model, graph, {g.id: rng.random(g.size) for g in graph.groups},
                     PlanConfig(0.5, round_to=1, min_channels=1))
    gates = torch.rand(num_units(graph)) + 0.5
    shrunk = shrink(model, graph, plan, gates)
    assert shrunk.g.groups < 8 and shrunk.g.in_channels == 4 * shrunk.g.groups
    assert shrunk.dw.groups == shrunk.dw.in_channels == shrunk.dw.out_channels
    assert check_shrink(model, shrunk, graph, plan, torch.randn(2, 3, 8, 8), gates) <= 1e-5


@pytest.mark.parametrize("spec", ["resnet20", "resnet56", "resnet18"])
def test_builtin_resnets_shrunk_equal_gated_for_random_gates(spec):
    from edgeprune.training.models import build_model
    from edgeprune.workflows.prune import example_input, prune_model

    model = _randomise_batchnorm(build_model(spec, 10)).eval()
    rng = np.random.default_rng(1)
    graph = analyze(model, example_input((3, 32, 32)))
    gates = torch.from_numpy(rng.uniform(0.2, 1.5, num_units(graph))).float()
    scores = {g.id: rng.random(g.size) for g in graph.groups}
    keep = float(rng.uniform(0.3, 0.8))
    result = prune_model(model, (3, 32, 32), scores, PlanConfig(keep=keep), gates=gates, graph=graph)
    assert result.shrink_max_diff <= 1e-5
    assert sum(p.numel() for p in result.model.parameters()) < sum(p.numel() for p in model.parameters())
