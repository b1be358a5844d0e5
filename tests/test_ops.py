"""The op registry and its handlers: each op on a tiny model, pruned, with shrink == gated."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from edgeprune.analysis import ops
from edgeprune.analysis.graph import FROZEN, analyze
from edgeprune.analysis.handlers import elementwise
from edgeprune.plan import PlanConfig, make_plan
from edgeprune.shrink import check_shrink, num_units, shrink
from edgeprune.workflows.prune import count_flops, prune_model


def scaled_twice(x):
    return x * 2.0


def add(x, y):  # a user function that happens to be called `add`: it concatenates
    return torch.cat([x, y], dim=1)


torch.fx.wrap("scaled_twice")
torch.fx.wrap("add")


def _prune(model: nn.Module, shape=(3, 8, 8), keep=0.5, seed=0):
    """Analyse, plan with random scores and gates, shrink, and check shrink == gated (raises if not)."""
    model.eval()
    graph = analyze(model, torch.randn(1, *shape))
    rng = np.random.default_rng(seed)
    scores = {g.id: rng.random(g.size) for g in graph.groups}
    plan = make_plan(model, graph, scores, PlanConfig(keep, round_to=1, min_channels=1))
    gates = torch.rand(num_units(graph), generator=torch.Generator().manual_seed(seed)) + 0.5
    small = shrink(model, graph, plan, gates)
    check_shrink(model, small, graph, plan, torch.randn(2, *shape), gates)
    return graph, plan, small


def _frozen(graph, labels) -> np.ndarray:
    return graph.class_of_label[np.asarray(labels)] == FROZEN


class FunctionalBN(nn.Module):
    """timm's BatchNormAct2d style: parameters of its own, normalised with F.batch_norm."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.rand(channels) + 0.5)
        self.bias = nn.Parameter(torch.randn(channels))
        self.register_buffer("running_mean", torch.randn(channels))
        self.register_buffer("running_var", torch.rand(channels) + 0.5)

    def forward(self, x):
        return F.relu(F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.1, 1e-5))


class FunctionalHead(nn.Module):
    def __init__(self, features: int, classes: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, features))
        self.bias = nn.Parameter(torch.randn(classes))

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


class SamePadConv(nn.Conv2d):
    """timm's Conv2dSame style: pads in forward, then F.conv2d with the module's own weight."""

    def forward(self, x):
        return F.conv2d(F.pad(x, (1, 1, 1, 1)), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class FunctionalNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = FunctionalBN(16)
        self.dw = SamePadConv(16, 16, 3, groups=16)
        self.pw = SamePadConv(16, 16, 3)
        self.head = FunctionalHead(16, 10)

    def forward(self, x):
        x = self.bn(self.conv(x))
        x = self.pw(F.relu(self.dw(x)))
        return self.head(x.mean((2, 3)))


def test_functional_batch_norm_linear_and_conv_are_sliced_like_their_modules():
    graph, plan, small = _prune(FunctionalNet())
    sliced = {s.name for s in graph.slices}
    assert {"bn.weight", "bn.running_mean", "dw.weight", "pw.weight", "head.weight"} <= sliced
    assert not _frozen(graph, graph.convs["conv"].out_labels).any()
    assert small.bn.weight.shape[0] < 16 and small.head.weight.shape[1] < 16
    assert small.dw.groups == small.dw.weight.shape[0]


class GroupNormNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.gn = nn.GroupNorm(4, 16)
        self.out = nn.Conv2d(16, 8, 1)

    def forward(self, x):
        return self.out(F.relu(self.gn(self.conv(x)))).mean((2, 3))


def test_group_norm_prunes_whole_groups_and_updates_num_groups():
    graph, plan, small = _prune(GroupNormNet())
    group = next(g for g in graph.groups if "gn" in g.modules)
    assert group.size == 4 and group.unit_width == 4
    assert small.gn.num_groups == small.gn.weight.shape[0] // 4 < 4


class ActivationNet(nn.Module):
    def __init__(self, act) -> None:
        super().__init__()
        self.act = act
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.b = nn.Conv2d(16, 8, 1)

    def forward(self, x):
        return self.b(self.act(self.a(x))).mean((2, 3))


@pytest.mark.parametrize("name, act", [
    ("swish", lambda x: x * x.sigmoid()),
    ("hardswish", F.hardswish),
    ("gelu", F.gelu),
    ("adaptive_avg_pool2d", lambda x: F.adaptive_avg_pool2d(x, 4)),
    ("interpolate", lambda x: F.interpolate(x, scale_factor=2.0, mode="nearest")),
])
def test_functional_activations_and_resampling_keep_channels_prunable(name, act):
    graph, plan, small = _prune(ActivationNet(act))
    assert not _frozen(graph, graph.convs["a"].out_labels).any(), name
    assert small.a.out_channels < 16


class ShuffleUp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.up = nn.PixelShuffle(2)
        self.b = nn.Conv2d(4, 8, 3, padding=1)

    def forward(self, x):
        return self.b(self.up(self.a(x))).flatten(1).mean(1, keepdim=True) + self.b(self.up(self.a(x))).mean((2, 3))


def test_pixel_shuffle_keeps_each_output_channels_block_of_inputs_together():
    graph, plan, small = _prune(ShuffleUp())
    group = next(g for g in graph.groups if "a" in g.modules)
    assert group.unit_width == 4 and group.size == 4
    assert small.a.out_channels % 4 == 0 and small.b.in_channels == small.a.out_channels // 4


class SliceNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.left = nn.Conv2d(6, 8, 1)
        self.right = nn.Conv2d(10, 8, 1)

    def forward(self, x):
        y = self.a(x)
        return torch.cat([self.left(y[:, :6]), self.right(y[:, 6:])], dim=1).mean((2, 3))


def test_constant_slices_freeze_the_channels_before_their_end_and_prune_the_rest():
    graph, plan, small = _prune(SliceNet())
    frozen = _frozen(graph, graph.convs["a"].out_labels)
    assert frozen[:6].all() and not frozen[6:].any()
    assert small.right.in_channels < 10 and small.left.in_channels == 6


class SplitNet(nn.Module):
    def __init__(self, sizes) -> None:
        super().__init__()
        self.sizes = sizes
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.b = nn.Conv2d(16, 8, 1)

    def forward(self, x):
        y = self.a(x)
        pieces = torch.split(y, y.shape[1] // 2 if self.sizes == "half" else self.sizes, dim=1)
        return self.b(torch.cat([torch.relu(pieces[0]), torch.sigmoid(pieces[1])], dim=1)).mean((2, 3))


@pytest.mark.parametrize("sizes", [[6, 10], 8])
def test_split_by_sizes_written_into_the_forward_is_frozen_with_its_reason(sizes):
    graph, plan, small = _prune(SplitNet(sizes))
    assert _frozen(graph, graph.convs["a"].out_labels).all()
    assert any("split of channels by sizes written into the forward" in f.reason for f in graph.frozen)


def test_split_into_halves_computed_from_the_shape_stays_prunable():
    graph, plan, small = _prune(SplitNet("half"))
    assert not _frozen(graph, graph.convs["a"].out_labels).any() and small.a.out_channels < 16


class TwoSources(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(3, 12, 3, stride=1, padding=1)
        self.c = nn.Conv2d(20, 8, 1)

    def forward(self, x):
        return self.c(torch.cat([self.a(x), F.relu(self.b(x))], dim=1)).mean((2, 3))


def test_cat_of_branches_from_different_sources_maps_each_to_its_offset():
    graph, plan, small = _prune(TwoSources())
    consumer = graph.convs["c"].in_labels
    assert np.array_equal(consumer[:8], graph.convs["a"].out_labels)
    assert np.array_equal(consumer[8:], graph.convs["b"].out_labels)
    assert small.c.in_channels == small.a.out_channels + small.b.out_channels < 20


class Wrapped(nn.Module):
    def __init__(self, use_add: bool) -> None:
        super().__init__()
        self.use_add = use_add
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.c = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        y = self.a(x)
        joined = add(y, self.b(y)) if self.use_add else torch.cat([scaled_twice(y), self.b(y)], 1)
        return self.c(joined).mean((2, 3))


def test_a_registered_user_op_is_followed_and_an_unregistered_one_is_frozen(monkeypatch):
    monkeypatch.setattr(ops, "_FUNCTIONS", dict(ops._FUNCTIONS))
    graph = analyze(Wrapped(False).eval(), torch.randn(1, 3, 8, 8))
    assert _frozen(graph, graph.convs["a"].out_labels).all()
    assert any("scaled_twice" in f.reason and "register_op" in f.reason for f in graph.frozen)
    ops.register_op(scaled_twice, handler=elementwise)
    graph, plan, small = _prune(Wrapped(False))
    assert not _frozen(graph, graph.convs["a"].out_labels).any()


def test_a_user_function_named_add_is_not_treated_as_addition():
    graph = analyze(Wrapped(True).eval(), torch.randn(1, 3, 8, 8))
    assert any("'add' is not known" in f.reason for f in graph.frozen)
    a, b = graph.class_of_label[graph.convs["a"].out_labels], graph.class_of_label[graph.convs["b"].out_labels]
    assert (a == FROZEN).all() and (b == FROZEN).all()


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        if x.sum() > 0:  # torch.fx cannot trace this
            return self.conv(x)
        return x


class PartlyTraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.mid = nn.Conv2d(8, 16, 3, padding=1)
        self.back = nn.Conv2d(16, 8, 1)
        self.odd = DataDependent()
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = self.odd(self.back(F.relu(self.mid(F.relu(self.stem(x))))))
        return self.fc(x.mean((2, 3)))


def test_untraceable_submodule_becomes_an_opaque_leaf_and_the_rest_is_pruned():
    graph, plan, small = _prune(PartlyTraceable())
    assert list(graph.opaque_modules) == ["odd"] and "cannot be traced" in graph.opaque_modules["odd"]
    assert not _frozen(graph, graph.convs["mid"].out_labels).any() and small.mid.out_channels < 16
    assert _frozen(graph, graph.convs["back"].out_labels).all()
    assert any(f.where == "odd" and f.params == 8 * 8 * 9 + 8 for f in graph.frozen_params)
    assert graph.to_dict()["opaque_modules"] == graph.opaque_modules


class Res2Like(nn.Module):
    """Res2Net's idiom: torch.split by a width fixed at construction."""

    def __init__(self) -> None:
        super().__init__()
        self.width = 4
        self.conv1 = nn.Conv2d(3, 12, 1)
        self.convs = nn.ModuleList(nn.Conv2d(4, 4, 3, padding=1) for _ in range(2))
        self.conv3 = nn.Conv2d(12, 8, 1)
        self.other = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        pieces = torch.split(self.conv1(x), self.width, 1)
        out = torch.cat([self.convs[0](pieces[0]), self.convs[1](pieces[1]), pieces[2]], 1)
        return (self.conv3(out) + self.other(x)).mean((2, 3))


def test_res2net_split_by_its_width_is_frozen_during_analysis_not_at_the_shrink_check():
    model = Res2Like().eval()
    result = prune_model(model, (3, 8, 8), None, PlanConfig(0.7, round_to=1, min_channels=1), criterion="magnitude")
    graph = result.graph
    assert _frozen(graph, graph.convs["conv1"].out_labels).all()
    assert any("split of channels by sizes written into the forward" in f.reason for f in graph.frozen)
    assert result.shrink_max_diff <= result.shrink_tolerance


class ChannelBias(nn.Module):
    """Adds a bias whose width is fixed when built: its forward cannot follow pruning."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels

    def forward(self, x):
        return x + torch.arange(self.channels, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)


class HardCoded(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.bias = ChannelBias(8)
        self.b = nn.Conv2d(8, 16, 3, padding=1)
        self.c = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        return self.c(F.relu(self.b(self.bias(self.a(x))))).mean((2, 3))


def test_hard_coded_width_behind_a_handler_is_found_by_the_probe_and_frozen_with_its_module_path(monkeypatch):
    monkeypatch.setattr(ops, "_MODULES", dict(ops._MODULES))
    ops.register_op(ChannelBias, handler=elementwise)  # claims per-channel, but its width is fixed
    graph, plan, small = _prune(HardCoded())
    assert _frozen(graph, graph.convs["a"].out_labels).all()
    assert not _frozen(graph, graph.convs["b"].out_labels).any() and small.b.out_channels < 16
    finding = next(f for f in graph.frozen if "hard-codes the channel count" in f.reason)
    assert finding.where == "bias" and finding.op == "ChannelBias"


class MultiOutput(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.b = nn.Conv2d(16, 16, 3, padding=1)
        self.head = nn.Conv2d(16, 5, 1)

    def forward(self, x):
        f1 = F.relu(self.a(x))
        f2 = F.relu(self.b(f1))
        if self.kind == "dict":
            return {"out": self.head(f2), "aux": f1}
        return [self.head(f2), f1] if self.kind == "list" else (self.head(f2), (f1,))


@pytest.mark.parametrize("kind", ["dict", "list", "tuple"])
def test_dict_list_and_tuple_outputs_keep_their_channels_and_shrink_exactly(kind):
    graph, plan, small = _prune(MultiOutput(kind))
    assert _frozen(graph, graph.convs["a"].out_labels).all()  # an output's channels stay
    assert not _frozen(graph, graph.convs["b"].out_labels).any() and small.b.out_channels < 16


class NormOverChannels(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.ln = nn.LayerNorm(16)
        self.b = nn.Conv2d(16, 32, 1)
        self.c = nn.Conv2d(32, 8, 1)

    def forward(self, x):
        y = self.ln(self.a(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.c(F.relu(self.b(y))).mean((2, 3))


def test_frozen_share_charges_each_unprunable_parameter_to_its_reason_largest_first():
    graph = analyze(NormOverChannels().eval(), torch.randn(1, 3, 8, 8))
    share = graph.frozen_params
    assert [s.params for s in share] == sorted((s.params for s in share), reverse=True)
    layer_norm = next(s for s in share if "layer_norm" in s.reason)
    # conv a (weight 16x3x3x3 + bias) and the LayerNorm's 32 parameters cannot shrink
    assert layer_norm.params == 16 * 27 + 16 + 32
    assert graph.frozen_fraction == pytest.approx(sum(s.params for s in share) / graph.params_total)


class Paths(nn.Module):
    """SKNet's idiom: stacked paths, softmax over the path axis, then summed."""

    def __init__(self) -> None:
        super().__init__()
        self.p0 = nn.Conv2d(3, 8, 3, padding=1)
        self.p1 = nn.Conv2d(3, 8, 3, padding=1)
        self.out = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        paths = torch.stack([self.p0(x), self.p1(x)], dim=1)
        weights = torch.softmax(paths.mean((3, 4), keepdim=True), dim=1)
        return self.out((paths * weights).sum(1)).mean((2, 3))


def test_softmax_and_sum_over_an_axis_of_paths_tie_each_channel_across_the_paths():
    graph, plan, small = _prune(Paths())
    p0, p1 = (graph.class_of_label[graph.convs[c].out_labels] for c in ("p0", "p1"))
    assert (p0 != FROZEN).all() and np.array_equal(p0, p1)
    assert small.p0.out_channels == small.p1.out_channels == small.out.in_channels < 8


class DetectorHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cls = nn.Conv2d(16, 3, 1)
        self.box = nn.Conv2d(16, 4, 1)

    def forward(self, features):
        scores = self.cls(features)
        if scores.amax() > 100:  # data-dependent, like a detector's post-processing
            scores = scores.clamp(max=100)
        return {"scores": scores, "boxes": self.box(features)}


class Detector(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.body = nn.Conv2d(16, 32, 3, padding=1)
        self.neck = nn.Conv2d(32, 16, 1)
        self.head = DetectorHead()

    def forward(self, x):
        return self.head(self.neck(F.relu(self.body(F.relu(self.stem(x))))))


def test_detector_with_an_untraceable_head_gets_its_body_pruned_and_its_head_kept_whole():
    graph, plan, small = _prune(Detector())
    assert list(graph.opaque_modules) == ["head"]
    assert not _frozen(graph, graph.convs["body"].out_labels).any() and small.body.out_channels < 32
    assert small.head.cls.weight.shape == (3, 16, 1, 1)
    with torch.no_grad():
        assert set(small(torch.randn(1, 3, 8, 8))) == {"scores", "boxes"}


class StandardisedConv(nn.Conv2d):
    """Weight standardisation (timm's StdConv2d idiom): the weight is computed in the forward."""

    def forward(self, x):
        w = self.weight
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


class StdNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.std = StandardisedConv(16, 16, 3, padding=1)
        self.b = nn.Conv2d(16, 32, 1)
        self.c = nn.Conv2d(32, 4, 1)

    def forward(self, x):
        return self.c(F.relu(self.b(self.std(F.relu(self.a(x)))))).mean((2, 3))


def test_conv_with_a_computed_weight_is_frozen_and_its_weight_charged_to_that_reason():
    graph, plan, small = _prune(StdNet())
    assert _frozen(graph, graph.convs["a"].out_labels).all() and small.b.out_channels < 32
    part = next(s for s in graph.frozen_params if s.where.startswith("std"))
    # the standardised conv's own weight and bias, and conv a whose outputs it froze
    assert "weight is computed in the forward" in part.reason and part.params == (16 * 16 * 9 + 16) + (16 * 27 + 16)


class CalledTwice(nn.Module):
    """One conv applied to two inputs: its output channels are the same channels on both paths."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.b = nn.Conv2d(16, 8, 1)

    def forward(self, x):
        return (self.b(self.a(x)) + self.b(self.a(x.flip(3)))).mean((2, 3))


def test_a_module_called_twice_is_one_group_pruned_alike_on_both_calls():
    graph, plan, small = _prune(CalledTwice())
    assert [g.modules for g in graph.groups if "a" in g.modules] == [["a", "b"]]
    assert small.a.out_channels == small.b.in_channels < 16
    # both calls' FLOPs scale with the kept channels (the plan's count is the counter's on the result)
    assert plan.flops_after == count_flops(small, torch.randn(1, 3, 8, 8))


def test_a_module_called_twice_plans_to_a_flops_budget_like_a_model_calling_it_once():
    model = CalledTwice().eval()
    graph = analyze(model, torch.randn(1, 3, 8, 8))
    scores = {g.id: np.random.default_rng(0).random(g.size) for g in graph.groups}
    plan = make_plan(model, graph, scores, PlanConfig(0.5, budget="flops", round_to=1, min_channels=1))
    small = shrink(model, graph, plan)
    assert plan.flops_before == count_flops(model, torch.randn(1, 3, 8, 8))
    assert plan.flops_after == count_flops(small, torch.randn(1, 3, 8, 8))
    assert abs(plan.keep_achieved - 0.5) <= 0.05
