"""One dense model's shared context (graph, accuracy, gates, dense ONNX) and one sweep run.

A run is what `edgeprune export` does at one keep ratio, minus the report: plan, shrink, fine-tune
with the seed, evaluate, export ONNX, check parity, and time the pruned model interleaved with the
dense one. Nothing here writes outside the temporary folder it is given, except the dense model's
gate cache (`DenseModel.gates_path`).
"""
from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional

import numpy as np
import torch
from torch import nn

from edgeprune.analysis.graph import ChannelGraph, analyze
from edgeprune.errors import RunError
from edgeprune.importance.gates import load_or_learn_gates
from edgeprune.plan import PlanConfig
from edgeprune.progress import ProgressCallback
from edgeprune.training.train import evaluate
from edgeprune.workflows.prune import example_input
from edgeprune.workflows.gradual import gradual_prune
from edgeprune.workflows.recipe import Importance, SlimmingConfig, finetune, importance_from, slimming_phase

if TYPE_CHECKING:
    from edgeprune.workflows.sweep import SweepConfig

RECORD_SCHEMA_VERSION = 1
PARITY_SAMPLES = 64


@dataclass
class DenseModel:
    """One dense model the sweep prunes: its weights, its data and where its gates are cached."""

    name: str
    model: nn.Module
    splits: Any  # DataSplits: .train and .test datasets of (CHW tensor, label)
    input_shape: tuple[int, ...]
    gates_path: Optional[Path] = None


@dataclass(frozen=True)
class SweepRecord:
    """One finished run: what was asked, what the plan achieved, accuracy and latency."""

    criterion: str
    seed: int
    keep: float
    dense: str
    fingerprint: str
    keep_achieved: float
    params_before: int
    params_after: int
    flops_before: int
    flops_after: int
    plan_note: str
    channels_after: dict[str, int]
    dense_accuracy_pct: float
    accuracy_before_finetune_pct: float
    accuracy_pct: float
    shrink_max_diff: float
    onnx_parity: Optional[dict[str, Any]]
    latency: Optional[dict[str, Any]]
    finetune_seconds: float
    seconds: float
    created: str
    num_classes: Optional[int] = None  # absent from records written before the sweep rules
    #: Training epochs this point used, by phase (absent from records written before issue 15);
    #: the gate phase is shared by every point of a dense model and given as its upper bound.
    compute_epochs: Optional[dict[str, int]] = None
    schema_version: int = RECORD_SCHEMA_VERSION

    @property
    def key(self) -> str:
        return run_key(self.criterion, self.seed, self.keep)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SweepRecord":
        if data.get("schema_version") != RECORD_SCHEMA_VERSION:
            raise RunError(f"sweep record has schema_version {data.get('schema_version')!r}, this edgeprune "
                           f"reads {RECORD_SCHEMA_VERSION}; re-run the sweep with --force")
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


def run_key(criterion: str, seed: int, keep: float) -> str:
    return f"{criterion}-s{seed}-k{keep:.3f}"


@dataclass
class DenseContext:
    """What every run of one dense model shares: its graph, accuracy, gates and dense ONNX."""

    dense: DenseModel
    graph: ChannelGraph
    accuracy_pct: float
    gates: Optional[torch.Tensor]
    slimmed: Optional[nn.Module]  # Network Slimming's sparsity-trained copy, trained once per dense model
    dense_onnx: Optional[Path]
    parity_images: np.ndarray
    num_classes: int

    @classmethod
    def build(cls, dense: DenseModel, config: SweepConfig, tmp: Path,
              progress: Optional[ProgressCallback]) -> "DenseContext":
        model = dense.model.eval()
        graph = analyze(model, example_input(dense.input_shape))
        with torch.no_grad():
            num_classes = int(model(example_input(dense.input_shape)).shape[-1])
        accuracy = evaluate(model, dense.splits.test).accuracy * 100.0
        gates = load_or_learn_gates(dense.gates_path, dense.model, graph, dense.splits.train, config.gate,
                                    progress)[0] if "gate" in config.criteria else None
        dense.model.eval()
        slimmed = slimming_phase(dense.model, dense.splits.train, SlimmingConfig(epochs=config.gate.max_epochs),
                                 progress) if "slimming" in config.criteria else None
        count = min(PARITY_SAMPLES, len(dense.splits.test))
        images = np.stack([dense.splits.test[i][0].numpy() for i in range(count)]).astype(np.float32)
        dense_onnx = None
        if config.bench is not None:
            from edgeprune.onnx_export.exporter import export_onnx

            dense_onnx = tmp / f"dense-{dense.name}.onnx"
            export_onnx(model, dense.input_shape, dense_onnx)
        return cls(dense, graph, accuracy, gates, slimmed, dense_onnx, images, num_classes)

    def importance(self, criterion: str, seed: int, config: SweepConfig) -> Importance:
        """The same scores and fold rule as `edgeprune export`, from the gates learned once."""
        return importance_from(criterion, self.dense.model, self.graph, gates=self.gates, gate_config=config.gate,
                               data=self.dense.splits.train, seed=seed, slimmed=self.slimmed)


def run_one(ctx: DenseContext, criterion: str, seed: int, keep: float, importance: Importance,
            config: SweepConfig, target: Any, fingerprint: str, tmp: Path,
            progress: Optional[ProgressCallback]) -> SweepRecord:
    """Plan, shrink, fine-tune, evaluate, export and time one (criterion, seed, keep)."""
    started = time.perf_counter()
    dense = ctx.dense
    plan_config = PlanConfig(keep=keep, budget=config.budget, round_to=config.round_to or target.round_to,
                             min_channels=config.min_channels)
    to_prune = importance.model if importance.model is not None else dense.model  # slimming's trained copy
    recipe = config.finetune_recipe_for(criterion)
    pruned, recovery_epochs = gradual_prune(to_prune, dense.input_shape, ctx.graph, importance, plan_config,
                                            config.steps, dense.splits, recipe, seed=seed,
                                            teacher=dense.model, progress=progress)
    before = evaluate(pruned.model, dense.splits.test)
    after, finetune_seconds = before, 0.0
    trained = finetune(pruned.model, dense.splits, recipe, seed=seed, teacher=dense.model, progress=progress)
    if trained is not None:
        after, finetune_seconds = trained.test, trained.train_seconds
    pruned.model.eval()
    parity, latency = (None, None)
    if config.bench is not None:
        parity, latency = _export_and_time(ctx, pruned.model, run_key(criterion, seed, keep), seed, config,
                                           target, tmp, progress)
    plan = pruned.plan
    return SweepRecord(
        criterion=criterion, seed=seed, keep=keep, dense=dense.name, fingerprint=fingerprint,
        keep_achieved=plan.keep_achieved, params_before=plan.params_before, params_after=plan.params_after,
        flops_before=plan.flops_before, flops_after=plan.flops_after, plan_note=plan.note,
        channels_after={g.name: g.channels_after for g in plan.groups},
        dense_accuracy_pct=ctx.accuracy_pct, accuracy_before_finetune_pct=before.accuracy * 100.0,
        accuracy_pct=after.accuracy * 100.0, shrink_max_diff=pruned.shrink_max_diff, onnx_parity=parity,
        latency=latency, finetune_seconds=finetune_seconds, seconds=time.perf_counter() - started,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"), num_classes=ctx.num_classes,
        compute_epochs={**config.epochs_for(criterion), "recovery": recovery_epochs},
    )


def _export_and_time(ctx: DenseContext, model: nn.Module, key: str, seed: int, config: SweepConfig,
                     target: Any, tmp: Path, progress: Optional[ProgressCallback]) -> tuple[dict, dict]:
    """Export the pruned model, check it against PyTorch, and time it interleaved with the dense ONNX."""
    from edgeprune import engines
    from edgeprune.measure.bench import benchmark, open_runners
    from edgeprune.onnx_export.exporter import check_parity, export_onnx

    bench = config.bench
    path = tmp / f"{key}.onnx"
    export_onnx(model, ctx.dense.input_shape, path)
    parity = check_parity(model, path, ctx.parity_images).to_dict()
    bench_target = replace(target, intra_op_threads=bench.threads) if bench.threads else target
    # What the target runs (never ONNX Runtime on the CPU under a GPU target's name).
    sources = [engines.ModelSource("dense", ctx.dense_onnx, ctx.dense.model),
               engines.ModelSource("pruned", path, model)]
    build_dir = tmp / f"{key}-engines"
    runners: dict = {}
    try:
        runners, _ = open_runners(engines.bench_loaders(bench_target, sources, build_dir), discard_first=False)
        rng = np.random.default_rng(seed)
        inputs = {b: rng.standard_normal((b, *ctx.dense.input_shape)).astype(np.float32) for b in bench.batch_sizes}
        result = benchmark(runners, inputs, bench, target_name=target.name, progress=progress)
    finally:
        for runner in runners.values():
            runner.close()
        path.unlink(missing_ok=True)
        shutil.rmtree(build_dir, ignore_errors=True)
    by_batch = []
    for comparison in result.comparisons:
        d, p = result.entry("dense", comparison.batch), result.entry("pruned", comparison.batch)
        by_batch.append({
            "batch": comparison.batch, "dense_p50_ms": d.p50_ms, "pruned_p50_ms": p.p50_ms,
            "speedup": comparison.speedup, "speedup_ci95": list(comparison.speedup_ci95),
            "dense_cv": d.cv, "pruned_cv": p.cv, "dense_round_median_cv": d.round_median_cv,
            "pruned_round_median_cv": p.round_median_cv, "rounds": comparison.rounds,
            "n": {"dense": d.n, "pruned": p.n},
            "dense_round_medians_ms": [float(np.median(r)) for r in d.samples_ms],
            "pruned_round_medians_ms": [float(np.median(r)) for r in p.samples_ms],
        })
    latency = {**by_batch[0], "statistic": "p50 of all timed iterations; speedup = p50(dense)/p50(pruned), "
               "interleaved in one run, 95% paired round bootstrap", "threads": bench_target.intra_op_threads,
               "warmup_s": bench.warmup_s, "by_batch": by_batch}
    return parity, latency
