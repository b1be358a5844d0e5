"""A dozen timm CNN families, pruned to keep 0.5 at a small input: budget met, shrink == gated.

The full benchmark (benchmarks/timm_zoo.py, 73 models at 224 px, ONNX and Torch-Pruning beside)
is run by hand; this is its reduced subset for CI.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("timm", reason="timm is a test dependency (pip install -e .[dev])")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from timm_zoo import CI_SUBSET, build  # noqa: E402

from edgeprune.plan import PlanConfig  # noqa: E402
from edgeprune.workflows.prune import prune_model  # noqa: E402

SIZE = 64


@pytest.mark.parametrize("name", CI_SUBSET)
def test_timm_model_prunes_to_half_its_parameters_and_shrunk_equals_gated(name):
    model = build(name)
    result = prune_model(model, (3, SIZE, SIZE), None, PlanConfig(0.5), criterion="magnitude",
                         tolerance=1e-4)
    assert abs(result.plan.keep_achieved - 0.5) <= 0.005
    assert result.shrink_max_diff <= 1e-4
    assert result.graph.frozen_fraction < 0.5
    with torch.no_grad():
        assert result.model(torch.randn(2, 3, SIZE, SIZE)).shape == (2, 10)


def test_timm_same_padding_conv_and_batchnorm_act_are_kept_whole_and_pruned_like_their_bases():
    from timm.layers import BatchNormAct2d, Conv2dSame

    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), BatchNormAct2d(16),
        Conv2dSame(16, 16, 3, stride=2, groups=16), BatchNormAct2d(16),
        torch.nn.Conv2d(16, 10, 1), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
    ).eval()
    result = prune_model(model, (3, 15, 15), None, PlanConfig(0.5, round_to=1, min_channels=1),
                         criterion="magnitude")
    graph = result.graph
    assert graph.opaque_modules == {} and "2" in graph.convs and graph.convs["2"].groups == 16
    assert {"1.weight", "1.running_mean", "3.weight"} <= {s.name for s in graph.slices}
    assert result.model[2].out_channels == result.model[2].groups < 16
    assert result.shrink_max_diff <= result.shrink_tolerance
