"""The torchvision classification zoo pruned exactly to budget, at a CI-sized input.

Every model at keep 0.3/0.5/0.7: physically smaller, keep achieved within half a point by params
and by FLOPs (or the closest with a note), predicted params/FLOPs equal to the shrunk model's real counts,
shrunk == gated with random gates and randomised BatchNorm statistics, and ONNX Runtime equal
to PyTorch. The analysis is shared across keeps. The 224 px check is benchmarks/zoo_224.py.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from edgeprune.onnx_export.exporter import check_parity, export_onnx
from edgeprune.analysis.graph import analyze
from edgeprune.plan import PlanConfig, make_plan
from edgeprune.workflows.prune import count_flops
from edgeprune.shrink import check_shrink, num_units, shrink

pytestmark = pytest.mark.slow  # 18 torchvision models, analysed and exported

ZOO = (
    "resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2", "mobilenet_v2", "mobilenet_v3_small",
    "mobilenet_v3_large", "efficientnet_b0", "efficientnet_v2_s", "regnet_x_400mf", "regnet_y_400mf",
    "shufflenet_v2_x1_0", "mnasnet1_0", "densenet121", "vgg11_bn", "squeezenet1_1", "googlenet", "convnext_tiny",
)
KEEPS = (0.3, 0.5, 0.7)
SIZE = 32  # the smallest size every model above runs at (16 px takes densenet/vgg/squeezenet/convnext to 0)
TOLERANCE = 1e-4


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Many small ops: with 2 OpenMP threads on a shared, busy 2-core machine every op waits for a
    descheduled thread (densenet121 at 32 px: 5 s a forward instead of 0.02 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build_zoo_model(name: str, seed: int = 0) -> nn.Module:
    """Random weights, 10 classes, randomised BN statistics and layer scales ~1 so every block matters."""
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kwargs = {"aux_logits": False, "init_weights": False} if name == "googlenet" else {}
        model = torchvision.models.get_model(name, weights=None, num_classes=10, **kwargs)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module_name, module in model.named_modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.running_mean.copy_(torch.rand(module.num_features, generator=generator) - 0.5)
                module.running_var.copy_(torch.rand(module.num_features, generator=generator) * 1.5 + 0.5)
                module.weight.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
                module.bias.copy_(torch.rand(module.num_features, generator=generator) - 0.5)
        for param_name, param in model.named_parameters():
            if param_name.endswith("layer_scale"):
                param.copy_(torch.rand(param.shape, generator=generator) * 0.5 + 0.75)
    return model.eval()


_CACHE: dict[str, tuple] = {}


@pytest.fixture(scope="module")
def analysed():
    """name -> (model, graph, flops at batch 1, example batch), built once per model."""

    def get(name: str):
        if name not in _CACHE:
            _CACHE.clear()  # one model in memory at a time; tests run model by model
            model = build_zoo_model(name)
            example = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
            graph = analyze(model, example)
            _CACHE[name] = (model, graph, count_flops(model, example))
        return _CACHE[name]

    yield get
    _CACHE.clear()


def _used_param_count(model: nn.Module, graph) -> int:
    """Parameters of the modules the eval forward uses (googlenet's aux heads would be extra)."""
    unused = tuple(f"{m}." for m in graph.unused_modules)
    return sum(p.numel() for n, p in model.named_parameters() if not n.startswith(unused))


@pytest.mark.parametrize("name, keep", [(name, keep) for name in ZOO for keep in KEEPS])
def test_zoo_model_prunes_to_budget_and_shrunk_equals_gated_and_onnx(name, keep, analysed, tmp_path):
    model, graph, flops = analysed(name)
    rng = np.random.default_rng(int(keep * 10))
    scores = {g.id: rng.random(g.size) for g in graph.groups}
    plan = make_plan(model, graph, scores, PlanConfig(keep), criterion="random", flops_measured=flops)
    assert abs(plan.keep_achieved - keep) <= 0.005
    by_flops = make_plan(model, graph, scores, PlanConfig(keep, budget="flops"), flops_measured=flops)
    assert abs(by_flops.flops_after / by_flops.flops_before - keep) <= 0.005

    gates = torch.rand(num_units(graph), generator=torch.Generator().manual_seed(1)) + 0.5
    shrunk = shrink(model, graph, plan, gates)
    batch = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    assert check_shrink(model, shrunk, graph, plan, batch, gates, tolerance=TOLERANCE) <= TOLERANCE * 10

    assert plan.params_after == _used_param_count(shrunk, graph) < _used_param_count(model, graph)
    assert plan.flops_after == count_flops(shrunk, batch[:1])

    if keep == 0.5:  # ONNX once per model keeps CI fast; benchmarks/zoo_224.py checks every keep
        path = tmp_path / "model.onnx"
        export_onnx(shrunk, (3, SIZE, SIZE), path)
        parity = check_parity(shrunk, path, batch, tolerance=TOLERANCE)
        assert parity.passed, f"ONNX Runtime differs by {parity.max_abs_err:.3g}"


@pytest.mark.parametrize("name", ["resnet50", "mobilenet_v3_small", "convnext_tiny", "densenet121"])
def test_zoo_model_flops_budget_predicts_the_shrunk_models_real_flops(name, analysed):
    model, graph, flops = analysed(name)
    scores = {g.id: np.ones(g.size) for g in graph.groups}
    plan = make_plan(model, graph, scores, PlanConfig(0.5, budget="flops"), flops_measured=flops)
    assert abs(plan.flops_after / plan.flops_before - 0.5) <= 0.005
    shrunk = shrink(model, graph, plan)
    assert plan.flops_after == count_flops(shrunk, torch.randn(1, 3, SIZE, SIZE))
    assert plan.keep_achieved == pytest.approx(plan.flops_after / plan.flops_before)
