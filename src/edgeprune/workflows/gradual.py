"""Gradual pruning: reach the budget in N steps with recovery between them (`--steps N`).

Zhu and Gupta's cubic schedule (2017): after step t of N the model keeps
`keep + (1 - keep) * (1 - t/N)^3` of its parameters, so most units go early, while the model is
still accurate, and the last steps remove few. Between steps the units planned away are masked
(their gates held at zero, which is exactly what the shrunk model computes) while the model
recovers for `recovery_epochs`; a unit once dropped stays dropped. The last step plans the exact
budget on the original graph and shrinks once, so the plan, the shrink check and `edgeprune.load`
are the one-shot path's. `--steps 1` is one-shot pruning.
"""
from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from edgeprune.analysis.graph import ChannelGraph
from edgeprune.errors import InputError
from edgeprune.plan import PlanConfig, PrunePlan, make_plan
from edgeprune.progress import ProgressCallback
from edgeprune.shrink import gated
from edgeprune.workflows.prune import PruneResult, count_flops, example_input, prune_model
from edgeprune.workflows.recipe import FinetuneRecipe, Importance, finetune, importance_from

#: Score given to units already dropped, so every later plan drops them first (scores are >= 0;
#: the plan normalises each group by its mean, which a negative sentinel would break).
_DROPPED = 0.0


def step_keeps(keep: float, steps: int) -> tuple[float, ...]:
    """The keep ratio after each of `steps` steps (cubic schedule, ending exactly at `keep`)."""
    if not isinstance(steps, int) or steps < 1:
        raise InputError(f"--steps must be an integer >= 1, got {steps!r}")
    return tuple(keep + (1.0 - keep) * (1.0 - t / steps) ** 3 for t in range(1, steps + 1))


def kept_mask(graph: ChannelGraph, plan: PrunePlan) -> torch.Tensor:
    """One value per unit (groups in order): 1 where `plan` keeps the unit, 0 where it drops it."""
    kept = {group.id: set(group.kept_units) for group in plan.groups}
    parts = [torch.tensor([1.0 if unit in kept[group.id] else 0.0 for unit in range(group.size)])
             for group in graph.groups]
    return torch.cat(parts) if parts else torch.zeros(0)


def gradual_prune(model: nn.Module, input_shape: tuple[int, ...], graph: ChannelGraph, importance: Importance,
                  config: PlanConfig, steps: int, splits: Any, recipe: FinetuneRecipe, *, seed: int,
                  recovery_epochs: int = 1, teacher: Optional[nn.Module] = None, ignore: tuple[str, ...] = (),
                  progress: Optional[ProgressCallback] = None) -> tuple[PruneResult, int]:
    """Prune a copy of `model` to `config.keep` in `steps` steps; returns the result and the
    recovery epochs spent (for the compute record). `steps == 1` is `prune_model` itself."""
    if steps == 1:
        return prune_model(model, input_shape, importance.scores, config, criterion=importance.criterion,
                           gates=importance.fold, graph=graph, ignore=ignore), 0
    if importance.fold is not None:
        raise InputError("gradual pruning needs gates learned with frozen weights (the default); "
                         "use --steps 1 with joint gates")
    work = copy.deepcopy(model)
    scores = {gid: np.asarray(values, dtype=np.float64).copy() for gid, values in importance.scores.items()}
    flops = count_flops(work, example_input(input_shape))
    recovery = replace(recipe, epochs=recovery_epochs)
    spent = 0
    for keep in step_keeps(config.keep, steps)[:-1]:
        plan = make_plan(work, graph, scores, replace(config, keep=keep), criterion=importance.criterion,
                         ignore=ignore, flops_measured=flops)
        mask = kept_mask(graph, plan)
        with gated(work, graph, mask.to(next(work.parameters()).device)):
            finetune(work, splits, recovery, seed=seed + spent, teacher=teacher, progress=progress)
        spent += recovery.epochs
        fresh = _rescore(importance, work, graph, splits, seed)
        for group in graph.groups:
            kept = {unit for gp in plan.groups if gp.id == group.id for unit in gp.kept_units}
            values = fresh[group.id] if fresh is not None else scores[group.id]
            scores[group.id] = np.where([u in kept for u in range(group.size)], values, _DROPPED)
    work.cpu().eval()  # the shrink and its check run on the CPU, as in one-shot pruning
    return prune_model(work, input_shape, scores, config, criterion=importance.criterion, graph=graph,
                       ignore=ignore), spent


def _rescore(importance: Importance, model: nn.Module, graph: ChannelGraph, splits: Any, seed: int):
    """Weight-based criteria are re-measured on the recovered model; learned gates and the random
    floor keep their original ranking (relearning gates every step would cost a gate phase each)."""
    if importance.criterion not in ("magnitude", "bn", "taylor"):
        return None
    return importance_from(importance.criterion, model, graph, data=splits.train, seed=seed).scores
