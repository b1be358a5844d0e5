"""Which parameters no plan can remove, and which freeze is to blame: the frozen share in the open."""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from edgeprune.analysis.channels import FROZEN, FrozenShare

_INPUT_OUTPUT = ("", "", "fed by the model input or by an op whose output channels are fixed")


def frozen_share(an: Any, class_of_label: np.ndarray, params: dict[str, torch.Tensor], traced: list[str],
                 leaves: dict[str, str]) -> list[FrozenShare]:
    """Per (where, op, reason), the parameter elements whose every sliced axis is frozen, largest first.

    An element stays whatever the plan when each of its channel indices is frozen; a parameter
    that is not sliced at all stays whole. Each is charged to the first freeze (in graph order)
    that reached its first frozen axis, found by resolving the ties without the freezes.
    """
    component = an.uf.roots(through_frozen=False)
    blame: dict[int, tuple[str, str, str]] = {}
    for where, op, reason, ids in an.frozen_events:
        for c in np.unique(component[ids]).tolist():
            blame.setdefault(c, (where, op, reason))
    by_module: dict[str, tuple[str, str, str]] = {}  # a freeze inside a module explains its unsliced weights
    for where, op, reason, _ in an.frozen_events:
        by_module.setdefault(where.split(":", 1)[0], (where, op, reason))
    by_param: dict[str, dict[int, np.ndarray]] = {}
    for s in an.slices:
        by_param.setdefault(s.name, {}).setdefault(s.axis, s.labels)
    totals: dict[tuple[str, str, str], int] = {}
    for name in traced:
        numel = params[name].numel()
        axes = by_param.get(name)
        if not axes:
            owner = name.rsplit(".", 1)[0]
            leaf = next((path for path in leaves if owner == path or owner.startswith(path + ".")), None)
            if leaf is not None:
                key = (leaf, "module", leaves[leaf])
            else:
                key = by_module.get(owner, (owner, "", "not sliced by any known op"))
            totals[key] = totals.get(key, 0) + numel
            continue
        shape = params[name].shape
        frozen_counts = {axis: int((class_of_label[labels] == FROZEN).sum()) for axis, labels in axes.items()}
        if any(count == 0 for count in frozen_counts.values()):
            continue
        elements = numel // math.prod(shape[a] for a in axes) * math.prod(frozen_counts.values())
        first = min(axes)
        labels = axes[first][class_of_label[axes[first]] == FROZEN]
        key = next((blame[c] for c in component[labels].tolist() if c in blame), _INPUT_OUTPUT)
        totals[key] = totals.get(key, 0) + int(elements)
    ordered = sorted(totals.items(), key=lambda item: -item[1])
    return [FrozenShare(w, o, r, n) for (w, o, r), n in ordered if n > 0]
