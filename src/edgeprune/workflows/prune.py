"""Analyse, score, plan, shrink and check in one call: the heart of every pruning command."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from edgeprune.analysis.graph import ChannelGraph, analyze, meta_copy
from edgeprune.plan import LatencyModel, LatencyPlanner, PlanConfig, PrunePlan, make_plan
from edgeprune.shrink import SHRINK_TOLERANCE, check_shrink, shrink

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PruneResult:
    graph: ChannelGraph
    plan: PrunePlan
    model: nn.Module  # the physically smaller model
    shrink_max_diff: float
    shrink_tolerance: float
    latency_budget: dict = field(default_factory=dict)  # the closed loop's record (--budget latency)


def count_flops(model: nn.Module, example: torch.Tensor) -> int:
    """FLOPs of one forward pass at `example`'s batch size, as torch.utils.flop_counter counts them.

    Counted on a meta-device copy (shapes only, no arithmetic); a model whose forward needs real
    values is run for real.
    """
    was_training = model.training
    model.eval()
    try:
        try:
            with torch.no_grad(), FlopCounterMode(display=False) as counter:
                meta_copy(model)(example.to("meta"))
        except Exception as error:  # any op that needs real values: count on a real forward pass
            log.debug("counting FLOPs on a real forward pass: the meta-device copy failed (%s)", error)
            with torch.no_grad(), FlopCounterMode(display=False) as counter:
                model(example)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def example_input(input_shape: Sequence[int], batch: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.randn((batch, *input_shape), generator=torch.Generator().manual_seed(seed))


def prune_model(
    model: nn.Module,
    input_shape: Sequence[int],
    scores: dict[int, np.ndarray] | None,
    config: PlanConfig,
    *,
    criterion: str = "gate",
    gates: torch.Tensor | None = None,
    graph: ChannelGraph | None = None,
    ignore: Sequence[str] = (),
    check_batch: torch.Tensor | None = None,
    tolerance: float = SHRINK_TOLERANCE,
    latency: LatencyModel | None = None,
    latency_planner: LatencyPlanner | None = None,
) -> PruneResult:
    """Plan to `config.keep` and shrink; the shrunk model is checked against the gated model.

    `scores` are per-unit importances by group id (see `criteria.score_units`); `gates`, when
    given, are folded into the shrunk weights so that it equals the gated model exactly.
    `latency`/`latency_planner` are passed to `make_plan` (see `workflows.latency`).
    """
    example = example_input(input_shape)
    if graph is None:
        graph = analyze(model, example, ignore=ignore)
    if scores is None:
        from edgeprune.importance.criteria import score_units

        scores = score_units(criterion, model, graph, gates=gates)
    flops = count_flops(model, example)
    plan = make_plan(model, graph, scores, config, criterion=criterion, ignore=tuple(ignore), flops_measured=flops,
                     latency=latency, latency_planner=latency_planner)
    shrunk = shrink(model, graph, plan, gates)
    batch = check_batch if check_batch is not None else example_input(input_shape, batch=4, seed=1)
    diff = check_shrink(model, shrunk, graph, plan, batch, gates, tolerance=tolerance)
    return PruneResult(graph, plan, shrunk, diff, tolerance)
