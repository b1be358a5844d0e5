"""`--budget latency`: table, plan, shrink, measure against dense on the target, correct, repeat.

The one function `prune_to_latency` is what `export` and `prune` call for a latency budget (and
what `profile_model` runs alone for `edgeprune profile`). The table is measured on the target's
own runtime; a target whose runtime cannot run here is refused in one line before anything is
built.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from torch import nn

from edgeprune.analysis.graph import ChannelGraph, analyze
from edgeprune.latency.closed_loop import DEFAULT_MAX_ROUNDS, DEFAULT_TOLERANCE, LoopResult, Measurement, closed_loop
from edgeprune.latency.knapsack import plan_latency
from edgeprune.latency.layers import LayerSite, find_layers
from edgeprune.latency.predict import LatencyPredictor
from edgeprune.latency.profile import LayerProfiler, build_model_table, profiler_for
from edgeprune.latency.table import ModelTable
from edgeprune.measure.results import BenchConfig
from edgeprune.plan import FLOOR_BOUND, PlanConfig
from edgeprune.progress import ProgressCallback, report
from edgeprune.targets import Target, load_target
from edgeprune.workflows.prune import PruneResult, example_input, prune_model

#: How the closed loop measures dense against pruned: interleaved, no memory pass.
#: 16 rounds of >= 2.5 s: at 1.5 s and 12 rounds a resnet50 round read 0.539 where the plan ran
#: at 0.505 when measured longer, which sent the next round the wrong way.
LOOP_BENCH = BenchConfig(warmup_s=0.2, min_iterations=60, min_seconds=2.5, rounds=16, memory_iterations=0,
                         bootstrap_resamples=500)


@dataclass(frozen=True)
class ProfileResult:
    sites: tuple[LayerSite, ...]
    table: ModelTable

    def predictor(self) -> LatencyPredictor:
        return LatencyPredictor.from_tables(self.sites, self.table.layers, self.table.dense_ms)


@dataclass(frozen=True)
class LatencyPruneResult:
    prune: PruneResult
    profile: ProfileResult
    loop: LoopResult

    def record(self) -> dict[str, Any]:
        """The manifest's `latency_budget` record: requested, predicted, measured, rounds, table."""
        return {**self.loop.to_dict(), "table": self.profile.table.summary(),
                "predicted_ms": self.prune.plan.latency_after_ms,
                "predicted_dense_ms": self.prune.plan.latency_before_ms}


def profile_model(model: nn.Module, input_shape: Sequence[int], target: Target | str, *, graph: ChannelGraph | None = None,
                  round_to: Optional[int] = None, cache_dir: Optional[Path] = None, ignore: Sequence[str] = (),
                  profiler: Optional[LayerProfiler] = None, progress: Optional[ProgressCallback] = None) -> ProfileResult:
    """The model's latency table on `target` (layers at the plan's channel counts, the dense whole)."""
    from edgeprune.onnx_export.exporter import export_onnx

    target = load_target(target)
    profiler = profiler or profiler_for(target)
    if graph is None:
        graph = analyze(model, example_input(input_shape), ignore=ignore)
    sites = tuple(find_layers(model, graph, input_shape, batch=target.opt_batch))
    with tempfile.TemporaryDirectory(prefix="edgeprune-profile-") as tmp:
        dense = Path(tmp) / "dense.onnx"
        report(progress, "exporting dense ONNX", 0, 1)
        export_onnx(model, input_shape, dense)
        report(progress, "exporting dense ONNX", 1, 1)
        table = build_model_table(sites, dense, input_shape, profiler, round_to or target.round_to,
                                  cache_dir=cache_dir, progress=progress)
    return ProfileResult(sites, table)


def measure_against_dense(dense_onnx: Path, pruned: nn.Module, input_shape: Sequence[int], target: Target,
                          work: Path, bench: BenchConfig = LOOP_BENCH,
                          progress: Optional[ProgressCallback] = None) -> Measurement:
    """Pruned over dense latency on the target, interleaved, at the target's first batch size."""
    from edgeprune import engines
    from edgeprune.measure.bench import benchmark, open_runners
    from edgeprune.onnx_export.exporter import export_onnx

    pruned_onnx = work / "pruned.onnx"
    export_onnx(pruned, input_shape, pruned_onnx)
    sources = [engines.ModelSource("dense", dense_onnx), engines.ModelSource("pruned", pruned_onnx)]
    runners, _ = open_runners(engines.bench_loaders(target, sources, work), discard_first=False)
    batch = target.opt_batch
    x = np.random.default_rng(bench.seed).standard_normal((batch, *input_shape)).astype(np.float32)
    try:
        result = benchmark(runners, {batch: x}, BenchConfig(**{**bench.to_dict(), "batch_sizes": (batch,),
                                                              "threads": target.intra_op_threads or None}),
                           target_name=target.name, progress=progress)
    finally:
        for runner in runners.values():
            runner.close()
    comparison = result.comparisons[0]
    low, high = comparison.speedup_ci95
    entries = {e.model: e for e in result.entries}
    return Measurement(ratio=1.0 / comparison.speedup, ratio_ci95=(1.0 / high, 1.0 / low),
                       dense_ms=entries["dense"].p50_ms, pruned_ms=entries["pruned"].p50_ms)


def prune_to_latency(model: nn.Module, input_shape: Sequence[int], scores: dict[int, np.ndarray] | None,
                     config: PlanConfig, target: Target | str, *, criterion: str = "gate", gates: Any = None,
                     graph: ChannelGraph | None = None, ignore: Sequence[str] = (), cache_dir: Optional[Path] = None,
                     tolerance: float = DEFAULT_TOLERANCE, max_rounds: int = DEFAULT_MAX_ROUNDS,
                     bench: BenchConfig = LOOP_BENCH, profile: Optional[ProfileResult] = None,
                     progress: Optional[ProgressCallback] = None) -> LatencyPruneResult:
    """Prune so that the measured latency on `target` is `config.keep` of dense's, within `tolerance`."""
    from edgeprune.onnx_export.exporter import export_onnx

    target = load_target(target)
    profiler = profiler_for(target)  # refuses, in one line, a target whose runtime cannot run here
    if graph is None:
        graph = analyze(model, example_input(input_shape), ignore=ignore)
    if profile is None:
        profile = profile_model(model, input_shape, target, graph=graph, round_to=config.round_to,
                                cache_dir=cache_dir, profiler=profiler, progress=progress)
    predictor = profile.predictor()

    def plan_at(asked: float) -> tuple[PruneResult, float]:
        result = prune_model(model, input_shape, scores, replace(config, keep=asked), criterion=criterion,
                             gates=gates, graph=graph, ignore=ignore, latency=predictor, latency_planner=plan_latency)
        return replace(result, plan=replace(result.plan, keep_requested=config.keep)), result.plan.keep_achieved

    with tempfile.TemporaryDirectory(prefix="edgeprune-latency-") as tmp:
        work = Path(tmp)
        dense_onnx = work / "dense.onnx"
        export_onnx(model, input_shape, dense_onnx)
        rounds_done = [0]

        def measure(result: PruneResult) -> Measurement:
            rounds_done[0] += 1
            report(progress, "closed loop: measuring on the target", rounds_done[0] - 1, max_rounds)
            return measure_against_dense(dense_onnx, result.model, input_shape, target, work, bench)

        loop = closed_loop(config.keep, plan_at, measure, tolerance=tolerance, max_rounds=max_rounds)
        report(progress, "closed loop: measuring on the target", max_rounds, max_rounds)
    chosen = replace(loop.plan, plan=replace(loop.plan.plan, note=loop_note(loop, loop.plan.plan.note)))
    return LatencyPruneResult(chosen, profile, loop)


def loop_note(loop: LoopResult, plan_note: str) -> str:
    """What the user reads about the budget: the measured result against the request. The plan's
    own note compares the table's prediction with what the loop asked the table for, a step the
    user never chose; it is kept only where the smallest channel counts bound the plan."""
    if loop.met:
        return ""
    final = loop.final
    note = (f"measured latency ratio {final.measured.ratio:.3f} is the closest of {len(loop.rounds)} closed-loop "
            f"rounds to the requested {loop.requested:.3f} (tolerance ±{loop.tolerance * 100:.0f} points)")
    if FLOOR_BOUND in plan_note:
        note += f"; {FLOOR_BOUND}"
    return note
