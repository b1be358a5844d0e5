"""Channel groups from the model's graph: which channels must be removed together.

The model is traced with torch.fx and run once on an example input. Beside every real tensor we
carry a *label tensor*: an integer per channel naming the atomic channel it came from (a conv's or
linear's output channel). Labels travel through shape ops exactly as the data does (view,
permute, cat, chunk, flatten...), so concatenation offsets, channel shuffles and flatten->Linear
fall out of running the ops themselves rather than per-architecture tables. Ops that force
channels to be removed together *tie* labels (a residual add ties its operands element-wise; a
grouped conv ties each conv group's inputs and outputs). Anything the analysis does not know is
*frozen*: left unpruned, with the module path, the op and the reason recorded.

The result is a `ChannelGraph`: groups of prunable *units* (one unit = one choice to keep or drop,
usually one channel in every tied layer), and for every parameter the label of each slice along
each prunable axis, which is all that counting, gating and shrinking need.
"""
from __future__ import annotations

import copy
import logging
from typing import Any, Iterable, Sequence

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from edgeprune.errors import UnsupportedModelError

from edgeprune.analysis.channels import (  # noqa: F401  (re-exported: the public types of the analysis)
    FROZEN,
    ChannelGraph,
    ChannelGroup,
    Consumer,
    ConvInfo,
    FrozenReason,
    ParamSlice,
    unit_labels,
)
from edgeprune.analysis import handlers, shape_ops  # noqa: F401  (register the built-in op handlers)
from edgeprune.analysis.frozen import frozen_share
from edgeprune.analysis.labels import ModelForwardError, _Analyzer, _UnionFind, op_name
from edgeprune.analysis.tracing import Tracer, first_line

log = logging.getLogger(__name__)


def trace(model: nn.Module, ignore: Iterable[str] = ()) -> fx.GraphModule:
    """torch.fx trace; untraceable submodules become opaque leaves (listed in `auto_leaves`)."""
    return _trace(model, ignore)[0]


def _trace(model: nn.Module, ignore: Iterable[str] = ()) -> tuple[fx.GraphModule, dict[str, str]]:
    leaves = frozenset(ignore)
    names = dict(model.named_modules())
    for name in leaves:
        if name not in names:
            raise UnsupportedModelError(
                f"--ignore {name}: no such module; run `edgeprune inspect` to see module names"
            )
    tracer = Tracer(leaves)
    try:
        graph = tracer.trace(model)
    except Exception as error:  # fx raises many types; all mean "not traceable"
        raise UnsupportedModelError(
            f"torch.fx cannot trace {type(model).__name__}'s own forward: {first_line(error)}. Wrap the "
            "data-dependent part in a submodule (which is then kept whole) or pass --ignore for it"
        ) from error
    return fx.GraphModule(tracer.root, graph, type(model).__name__), dict(tracer.auto_leaves)


def analyze(model: nn.Module, example_input: torch.Tensor, ignore: Sequence[str] = (), probe: bool = True) -> ChannelGraph:
    """Trace `model` and find its channel groups; see the module docstring for the method.

    Labels only need shapes, so the traced model first runs on the meta device (no arithmetic,
    whatever the input size); a model whose forward needs real values is run for real instead.
    With `probe`, groups whose removal breaks the model's own forward (a hard-coded channel
    count) are found by shrinking a copy (probe.py) and frozen with that reason.
    """
    was_training = model.training
    model.eval()
    try:
        gm, auto_leaves = _trace(model, ignore)
        leaves = {name: "left unpruned by --ignore" for name in ignore}
        leaves.update(auto_leaves)
        on_meta = True
        with torch.no_grad():
            try:
                meta_gm = fx.GraphModule(meta_copy(gm), gm.graph, type(model).__name__)
                analyzer = _Analyzer(meta_gm, leaves)
                analyzer.run(example_input.to("meta"))
            except ModelForwardError as failure:  # needs real values (a tensor index, .item()): run it for real
                log.debug("analysing on real values: the meta-device run failed at %s (%s)",
                          failure.node.name, failure.error)
                on_meta = False
                analyzer = _Analyzer(gm, leaves)
                try:
                    analyzer.run(example_input)
                except ModelForwardError as failure:
                    node, error = failure.node, failure.error
                    raise UnsupportedModelError(
                        f"running the traced model failed at {analyzer.where(node)} ({op_name(node)}): "
                        f"{str(error).splitlines()[0] if str(error) else type(error).__name__}; check the "
                        "input shape, or pass --ignore for that module"
                    ) from error
        graph = _build_graph(model, analyzer, tuple(example_input.shape[1:]), leaves)
        if probe and graph.groups:
            from edgeprune.analysis.probe import find_hardcoded_widths

            broken = find_hardcoded_widths(model, graph, example_input, on_meta)
            if broken:
                for finding in broken:
                    analyzer.freeze(finding.labels, finding.reason, where=finding.where, op=finding.op)
                graph = _build_graph(model, analyzer, tuple(example_input.shape[1:]), leaves)
    finally:
        model.train(was_training)
    return graph


def meta_copy(module: nn.Module) -> nn.Module:
    """A copy of `module` whose parameters and buffers live on the meta device (no data copied)."""
    memo: dict[int, Any] = {}
    for tensor in list(module.parameters()) + list(module.buffers()):
        if id(tensor) not in memo:
            meta = tensor.detach().to("meta")
            memo[id(tensor)] = nn.Parameter(meta, tensor.requires_grad) if isinstance(tensor, nn.Parameter) else meta
    return copy.deepcopy(module, memo)


def _build_graph(model: nn.Module, an: _Analyzer, input_shape: tuple[int, ...], leaves: dict[str, str]) -> ChannelGraph:
    class_of_label = an.uf.roots()
    params = dict(model.named_parameters())
    traced = [name for name in params if name in an.used_params]
    used_modules = {name.rsplit(".", 1)[0] for name in traced}
    unused = sorted(
        {name.rsplit(".", 1)[0] for name in params if name not in an.used_params} - used_modules
    )

    # Units are classes; groups join classes that share a sliced parameter axis.
    slice_classes = [class_of_label[s.labels] for s in an.slices]
    group_uf = _UnionFind()
    group_uf.add(len(class_of_label) - 1)
    for classes in slice_classes:
        classes = np.unique(classes)
        classes = classes[classes != FROZEN]
        if classes.size > 1:
            group_uf.union_many(np.full(classes.size - 1, classes[0]), classes[1:])
    group_of = group_uf.roots()
    every = np.concatenate(slice_classes) if slice_classes else np.zeros(0, dtype=np.int64)
    every = every[every != FROZEN]
    _, first_seen = np.unique(every, return_index=True)
    ordered = every[np.sort(first_seen)]  # unit classes in order of first appearance
    keys = group_of[ordered]
    _, key_first = np.unique(keys, return_index=True)
    members: dict[int, np.ndarray] = {int(keys[i]): ordered[keys == keys[i]] for i in np.sort(key_first)}
    producer_of: dict[int, tuple[str, np.ndarray]] = {}
    for name, vector in an.producers:
        classes = class_of_label[vector]
        for key in np.unique(group_of[classes[classes != FROZEN]]).tolist():
            producer_of.setdefault(key, (name, vector))
    modules_of: dict[int, set[str]] = {}
    for s, classes in zip(an.slices, slice_classes):
        classes = np.unique(classes)
        for key in np.unique(group_of[classes[classes != FROZEN]]).tolist():
            modules_of.setdefault(key, set()).add(s.name.rsplit(".", 1)[0])
    groups: list[ChannelGroup] = []
    unit_index: dict[int, tuple[int, int]] = {}
    for key, classes in members.items():
        units = classes.tolist()
        name, vector = producer_of.get(key, (f"group{len(groups)}", np.zeros(0, dtype=np.int64)))
        in_producer = class_of_label[vector]
        in_producer = in_producer[(in_producer != FROZEN) & (group_of[in_producer] == key)]
        unit_width = max(1, in_producer.size // max(1, np.unique(in_producer).size))
        group = ChannelGroup(
            len(groups), name, units, sorted(modules_of.get(key, ())), int(in_producer.size) or len(units), unit_width
        )
        for u, c in enumerate(units):
            unit_index[c] = (group.id, u)
        groups.append(group)

    channels_by_reason: dict[tuple[str, str, str], int] = {}
    for where, op, reason, ids in an.frozen_events:
        key = (where, op, reason)
        channels_by_reason[key] = channels_by_reason.get(key, 0) + int(ids.size)
    frozen = [FrozenReason(w, o, r, n) for (w, o, r), n in channels_by_reason.items()]
    frozen_param_count = 0
    sliced_names = {s.name for s in an.slices}
    for pname in traced:
        if pname not in sliced_names:
            frozen_param_count += params[pname].numel()
    notes = []
    if unused:
        notes.append(
            "modules not used by the traced (eval) forward are left as they are and not counted: "
            + ", ".join(unused)
        )
    share = frozen_share(an, class_of_label, params, traced, leaves)
    return ChannelGraph(
        groups=groups,
        frozen=frozen,
        slices=an.slices,
        consumers=an.consumers,
        convs=an.convs,
        class_of_label=class_of_label,
        unit_index=unit_index,
        flop_weights=an.flop_weights,
        traced_params=traced,
        unused_modules=unused,
        input_shape=input_shape,
        frozen_param_count=frozen_param_count,
        notes=notes,
        norm_groups=dict(an.norm_groups),
        opaque_modules=dict(sorted((k, v) for k, v in leaves.items())),
        frozen_params=share,
        params_total=sum(params[n].numel() for n in traced),
    )


