"""Channel groups from the traced graph: what must be removed together, and what stays."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edgeprune.errors import UnsupportedModelError
from edgeprune.analysis.graph import FROZEN, analyze, unit_labels
from edgeprune.training.models.cifar_resnet import resnet20
from edgeprune.plan import PlanConfig, make_plan
from edgeprune.shrink import check_shrink, num_units, shrink


def _graph(model: nn.Module, shape=(3, 8, 8), ignore=()):
    return analyze(model.eval(), torch.randn(1, *shape), ignore=ignore)


def _group_with(graph, conv: str):
    """The group that holds `conv`'s output channels."""
    classes = graph.class_of_label[graph.convs[conv].out_labels]
    assert (classes != FROZEN).all(), f"{conv}'s outputs are frozen"
    ids = {graph.unit_index[c][0] for c in classes.tolist()}
    assert len(ids) == 1, f"{conv}'s outputs span groups {ids}"
    return graph.groups[ids.pop()]


def _units(graph, labels) -> np.ndarray:
    return unit_labels(graph, np.asarray(labels))


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return self.fc(torch.relu(x + y).mean((2, 3)))


def test_residual_add_ties_its_operands_into_one_group():
    graph = _graph(Residual())
    stem = _group_with(graph, "stem")
    assert {"conv2", "bn2", "fc"} <= set(stem.modules)
    assert np.array_equal(_units(graph, graph.convs["stem"].out_labels), _units(graph, graph.convs["conv2"].out_labels))
    inner = _group_with(graph, "conv1")
    assert inner.id != stem.id and "bn1" in inner.modules


class Depthwise(nn.Module):
    def __init__(self, groups: int) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 16, 1)
        self.g = nn.Conv2d(16, 16 if groups == 16 else 32, 3, padding=1, groups=groups)
        self.b = nn.Conv2d(self.g.out_channels, 8, 1)

    def forward(self, x):
        return self.b(torch.relu(self.g(torch.relu(self.a(x)))))


def test_depthwise_conv_ties_each_output_to_its_input_channel():
    graph = _graph(Depthwise(groups=16))
    group = _group_with(graph, "a")
    assert "g" in group.modules and group.size == 16 and group.unit_width == 1
    assert np.array_equal(_units(graph, graph.convs["g"].in_labels), _units(graph, graph.convs["g"].out_labels))


def test_grouped_conv_makes_one_unit_per_conv_group():
    graph = _graph(Depthwise(groups=4))
    group = _group_with(graph, "a")
    assert group.size == 4 and group.unit_width == 4 and group.channels == 16
    out_units = _units(graph, graph.convs["g"].out_labels)
    assert np.array_equal(out_units, np.repeat(np.unique(out_units), 8))


class Concat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 4, 3, padding=1)
        self.c = nn.Conv2d(12, 6, 1)

    def forward(self, x):
        a = torch.relu(self.a(x))
        return self.c(torch.cat([a, torch.relu(self.b(a))], dim=1)).mean((2, 3))


def test_concat_maps_consumer_inputs_to_producer_channels_at_their_offsets():
    graph = _graph(Concat())
    consumer = _units(graph, graph.convs["c"].in_labels)
    assert np.array_equal(consumer[:8], _units(graph, graph.convs["a"].out_labels))
    assert np.array_equal(consumer[8:], _units(graph, graph.convs["b"].out_labels))
    assert (consumer >= 0).all()


class FlattenLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(4 * 4 * 4, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(torch.relu(self.conv(x))), 1))


def test_flatten_to_linear_ties_every_spatial_feature_to_its_channel():
    graph = _graph(FlattenLinear())
    fc = next(c for c in graph.consumers if c.module == "fc")
    conv_units = _units(graph, graph.convs["conv"].out_labels)
    assert np.array_equal(_units(graph, fc.labels), np.repeat(conv_units, 16))


def test_flatten_to_linear_shrinks_linear_inputs_by_whole_channels():
    model = FlattenLinear().eval()
    graph = _graph(model)
    group = _group_with(graph, "conv")
    plan = make_plan(model, graph, {group.id: np.arange(4.0)}, PlanConfig(0.5, round_to=1, min_channels=1))
    shrunk = shrink(model, graph, plan)
    kept = len(plan.groups[group.id].kept_units)
    assert 0 < kept < 4 and shrunk.fc.in_features == 16 * kept
    check_shrink(model, shrunk, graph, plan, torch.randn(2, 3, 8, 8))


class SqueezeExcite(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.fc1 = nn.Conv2d(16, 4, 1)
        self.fc2 = nn.Conv2d(4, 16, 1)
        self.out = nn.Conv2d(16, 8, 1)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        scale = torch.sigmoid(self.fc2(torch.relu(self.fc1(nn.functional.adaptive_avg_pool2d(x, 1)))))
        return self.out(x * scale).mean((2, 3))


def test_squeeze_excite_ties_the_excitation_to_the_channels_it_scales():
    graph = _graph(SqueezeExcite())
    group = _group_with(graph, "conv")
    assert {"fc2", "fc1", "out"} <= set(group.modules)
    assert np.array_equal(_units(graph, graph.convs["fc2"].out_labels), _units(graph, graph.convs["conv"].out_labels))
    assert _group_with(graph, "fc2").id == group.id


class Shuffle(nn.Module):
    """ShuffleNet-v2 unit: chunk, one branch, concat, channel shuffle."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 1)
        self.branch = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        x1, x2 = x.chunk(2, dim=1)
        x = torch.cat([x1, torch.relu(self.branch(x2))], dim=1)
        b, c, h, w = x.size()
        x = x.view(b, 2, c // 2, h, w).transpose(1, 2).contiguous().view(b, c, h, w)
        return self.head(x).mean((2, 3))


def test_chunk_and_channel_shuffle_keep_pieces_of_equal_width_and_stay_exact():
    model = Shuffle().eval()
    graph = _graph(model)
    group = _group_with(graph, "conv")
    assert "branch" in group.modules and group.size == 8 and group.unit_width == 2
    assert [f for f in graph.frozen if f.reason != "model output"] == []
    rng = np.random.default_rng(0)
    plan = make_plan(model, graph, {g.id: rng.random(g.size) for g in graph.groups}, PlanConfig(0.5, round_to=1, min_channels=1))
    gates = torch.rand(num_units(graph)) + 0.5
    shrunk = shrink(model, graph, plan, gates)
    assert shrunk.conv.out_channels < 16
    assert check_shrink(model, shrunk, graph, plan, torch.randn(2, 3, 8, 8), gates) <= 1e-5


class ChannelsLastNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.LayerNorm(8)
        self.conv2 = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        x = self.norm(self.conv1(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.conv2(x).mean((2, 3))


def test_layernorm_over_channels_is_frozen_with_its_reason():
    graph = _graph(ChannelsLastNorm())
    reasons = [f for f in graph.frozen if f.where == "norm"]
    assert reasons and reasons[0].op == "LayerNorm" and "normalises over these channels" in reasons[0].reason
    assert reasons[0].channels == 8
    assert (graph.class_of_label[graph.convs["conv1"].out_labels] == FROZEN).all()


class UnknownOp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.conv2(torch.cumsum(self.conv1(torch.relu(self.conv0(x))), dim=1)).mean((2, 3))


def test_unknown_op_is_frozen_and_named():
    graph = _graph(UnknownOp())
    frozen = [f for f in graph.frozen if f.op == "cumsum"]
    assert frozen and "not known" in frozen[0].reason
    assert (graph.class_of_label[graph.convs["conv1"].out_labels] == FROZEN).all()


def test_first_conv_input_and_classifier_output_are_never_pruned():
    model = resnet20().eval()
    graph = _graph(model, (3, 32, 32))
    assert (graph.class_of_label[graph.convs["conv1"].in_labels] == FROZEN).all()
    fc_out = next(s for s in graph.slices if s.name == "fc.weight" and s.axis == 0)
    assert (graph.class_of_label[fc_out.labels] == FROZEN).all()
    plan = make_plan(model, graph, {g.id: np.ones(g.size) for g in graph.groups}, PlanConfig(0.3))
    shrunk = shrink(model, graph, plan)
    assert shrunk.conv1.in_channels == 3 and shrunk.fc.out_features == 10
    assert shrunk(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_resnet20_stages_form_one_group_per_residual_stream_plus_one_per_inner_conv():
    graph = _graph(resnet20(), (3, 32, 32))
    assert len(graph.groups) == 3 + 9  # 3 residual streams (16/32/64 wide), 9 blocks' conv1
    assert sorted(g.channels for g in graph.groups if len(g.modules) > 3) == [16, 32, 64]


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.odd = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        x = self.conv(x)
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace this
            x = self.odd(x)
        return x.mean((2, 3))


def test_untraceable_model_raises_unsupported_model_error_naming_the_fix():
    with pytest.raises(UnsupportedModelError, match="--ignore"):
        _graph(Branchy())


def test_ignore_of_an_unknown_module_names_inspect():
    with pytest.raises(UnsupportedModelError, match="no such module"):
        _graph(Residual(), ignore=("nope",))


def test_ignored_module_is_left_unpruned_with_reason():
    graph = _graph(Residual(), ignore=("conv1",))
    assert any(f.where == "conv1" and "--ignore" in f.reason for f in graph.frozen)
    assert "conv1" not in graph.convs
    assert not any("conv1" in g.modules for g in graph.groups)


def test_graph_to_dict_lists_groups_and_frozen_parts():
    data = _graph(UnknownOp()).to_dict()
    assert data["input_shape"] == [3, 8, 8]
    assert data["groups"][0]["name"] == "conv0" and data["groups"][0]["units"] == 8
    assert {"id", "name", "units", "channels", "unit_width", "modules"} <= set(data["groups"][0])
    assert any(f["op"] == "cumsum" and f["channels"] == 8 for f in data["frozen"])


def test_a_bug_in_the_labelling_is_not_reported_as_the_users_input_shape(monkeypatch):
    """The analysis' own errors propagate (a bug to report); only the model's failures become
    "check the input shape"."""
    from edgeprune.analysis import labels

    def broken(self, n, result):
        raise ValueError("an edgeprune bug")

    monkeypatch.setattr(labels._Analyzer, "label_node", broken)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU())
    with pytest.raises(ValueError, match="an edgeprune bug"):
        analyze(model, torch.randn(1, 3, 8, 8), probe=False)


def test_a_model_that_fails_on_its_input_is_a_clear_unsupported_model_error():
    from edgeprune.errors import UnsupportedModelError

    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8, 2))
    with pytest.raises(UnsupportedModelError, match="check the input shape"):
        analyze(model, torch.randn(1, 3, 8, 8))
