"""`edgeprune export --keep 0.5`: the whole chain from a dense run to a shippable folder.

Every stage is a library call; this module only sequences them and keeps the output honest: the
folder is built under a temporary name and renamed into place at the end, so a failure or an
interrupt never leaves a half-written export, and an existing export is replaced only with
`force`. A full disk or an unwritable output is a one-line `StorageError`.
"""
from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

import numpy as np

from edgeprune.analysis.graph import analyze
from edgeprune.errors import InputError, OutputExistsError
from edgeprune.fileio import move_into_place, storage_errors
from edgeprune.importance.gates import GateConfig
from edgeprune.measure.results import BenchConfig
from edgeprune.plan import FLOOR_BOUND, PlanConfig
from edgeprune.progress import ProgressCallback, report
from edgeprune.report.manifest import EngineRecord, Manifest
from edgeprune.targets import DEFAULT_TARGET, Target
from edgeprune.training.train import evaluate
from edgeprune.workflows.gradual import gradual_prune
from edgeprune.workflows.prune import PruneResult, example_input
from edgeprune.workflows.recipe import DEMO_RUN, FinetuneRecipe, ensure_run, finetune, learned_importance


@dataclass(frozen=True)
class ExportConfig:
    """Everything `edgeprune export` can be told; defaults are the demo's."""

    keep: float = 0.5
    run_dir: Path = DEMO_RUN
    out_root: Path = Path("dist")
    target: str = DEFAULT_TARGET
    budget: str = "params"
    round_to: Optional[int] = None  # None: the target's channel rounding
    min_channels: int = 8
    criterion: str = "gate"
    ignore: tuple[str, ...] = ()
    finetune_epochs: int = FinetuneRecipe.epochs
    finetune_lr: float = FinetuneRecipe.lr
    distill_weight: float = 0.5  # distillation from the dense model while fine-tuning; 0: labels only
    steps: int = 1  # gradual pruning in this many steps (workflows.gradual); 1: one-shot
    gate: GateConfig = GateConfig()
    bench: BenchConfig = BenchConfig(warmup_s=0.2, min_iterations=200, min_seconds=3.0, rounds=20)
    parity_samples: int = 256
    calibration_batches: int = 8
    force: bool = False
    seed: int = 0
    device: str = "cpu"  # gate learning, scoring, fine-tuning, evaluation; ONNX and checks stay on CPU
    out: Optional[Path] = None  # the export folder itself; None: OUT_ROOT/export_name

    def __post_init__(self) -> None:
        PlanConfig(keep=self.keep, budget=self.budget, round_to=self.round_to or 8, min_channels=self.min_channels)
        self.finetune_recipe  # validates the fine-tune settings
        from edgeprune.workflows.gradual import step_keeps

        step_keeps(self.keep, self.steps)  # validates --steps
        if self.steps > 1 and self.budget == "latency":
            raise InputError("--steps applies to params and flops budgets; a latency budget is met by its "
                             "measured closed loop in one shrink: use --steps 1")

    @property
    def finetune_recipe(self) -> FinetuneRecipe:
        return FinetuneRecipe(epochs=self.finetune_epochs, lr=self.finetune_lr, distill_weight=self.distill_weight)

    @property
    def export_name(self) -> str:
        """RUN-keepK.KK for the default target, RUN-keepK.KK-TARGET otherwise, so exports of one
        run for several targets sit side by side (or the name of `out` when it is given); a latency
        budget adds `-latency`."""
        if self.out is not None:
            return Path(self.out).name
        name = f"{Path(self.run_dir).name}-keep{self.keep:.2f}" + ("-latency" if self.budget == "latency" else "")
        target = Path(str(self.target)).stem
        return name if target == DEFAULT_TARGET else f"{name}-{target}"

    @property
    def out_dir(self) -> Path:
        return Path(self.out) if self.out is not None else Path(self.out_root) / self.export_name


@dataclass(frozen=True)
class DenseSource:
    """The dense model and the data it is pruned, fine-tuned and measured on: a run folder's, or
    an in-memory model and data sets from the Python API. The model is left on the CPU."""

    model: Any
    splits: Any  # training.data.DataSplits
    model_spec: str  # how `edgeprune.load` rebuilds the architecture; "python:CLASS" for in-memory models
    data: str
    run_path: Optional[Path] = None  # the gates are cached here; None: learned each time
    trained_demo: bool = False


@dataclass(frozen=True)
class ExportResult:
    out_dir: Path
    manifest: Manifest
    trained_demo: bool
    learned_gates: bool
    replaced: bool = False
    skipped: tuple[str, ...] = field(default_factory=tuple)


def _test_arrays(splits, limit: int) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for i in range(min(limit, len(splits.test))):
        x, y = splits.test[i]
        images.append(x.numpy())
        labels.append(int(y))
    return np.stack(images).astype(np.float32), np.array(labels)


def _calibration_batches(splits, count: int, batch: int = 32, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(splits.train))[: count * batch]
    stacked = np.stack([splits.train[int(i)][0].numpy() for i in order]).astype(np.float32)
    return [stacked[i: i + batch] for i in range(0, len(stacked), batch)]


def export_pipeline(config: ExportConfig, progress: Optional[ProgressCallback] = None) -> ExportResult:
    """Export the run at `config.run_dir` (the demo run is trained on first use).

    Under `torchrun` every rank fine-tunes (data-parallel, `training.distributed`); rank 0 alone
    trains a missing demo run, learns the gates, writes the export, checks parity and benchmarks,
    and the other ranks read its manifest back at the end.
    """
    from edgeprune.training.runs import load_splits

    started = time.perf_counter()
    _check_outputs(config)
    with _process_group(config) as progress_here:
        progress = progress if progress_here else None
        with storage_errors(config.run_dir):
            run, trained_demo = _rank_zero_first(lambda: ensure_run(config.run_dir, seed=config.seed,
                                                                    progress=progress))
        source = DenseSource(run.model, load_splits(run.spec), run.spec.model, run.spec.data, Path(run.path),
                             trained_demo)
        return export_source(source, config, progress, started=started)


@contextlib.contextmanager
def _process_group(config: ExportConfig):
    """Join torchrun's process group for the export (NCCL on CUDA, gloo on CPU) and leave it after;
    yields whether this rank reports progress (rank 0, or no torchrun)."""
    from edgeprune.devices import resolve_device
    from edgeprune.training import distributed

    started = distributed.init_from_env(str(resolve_device(config.device)))
    try:
        yield distributed.is_rank_zero()
    finally:
        if started:
            distributed.shutdown()


def _rank_zero_first(step):
    """Run `step` on rank 0, then on the other ranks, which then find what rank 0 wrote (a trained
    demo run, learned gates) and only read it. Without torchrun: just `step()`."""
    from edgeprune.training import distributed

    if distributed.is_rank_zero():
        result = step()
        distributed.barrier()
        return result
    distributed.barrier()
    return step()


def _check_outputs(config: ExportConfig):
    """The target profile and the output folder are checked before any work."""
    from edgeprune.devices import resolve_device
    from edgeprune.targets import load_target

    target = load_target(config.target)
    if config.budget == "latency":
        from edgeprune.latency.profile import profiler_for

        profiler_for(target)  # a runtime that cannot run here is refused before anything is trained
    if config.out_dir.exists() and not config.force:
        raise OutputExistsError(f"{config.out_dir} already exists; pass --force to replace it")
    resolve_device(config.device)
    return target


def export_source(source: DenseSource, config: ExportConfig, progress: Optional[ProgressCallback] = None, *,
                  started: Optional[float] = None) -> ExportResult:
    """Run the whole chain (see module docstring) on `source` and return where it went and what
    it measured. Gate learning, scoring, fine-tuning and evaluation run on `config.device`; the
    analysis, the shrink check and the ONNX export on the CPU."""
    with _process_group(config) as progress_here:
        return _export_source(source, config, progress if progress_here else None, started=started)


def _export_source(source: DenseSource, config: ExportConfig, progress: Optional[ProgressCallback], *,
                   started: Optional[float]) -> ExportResult:
    from edgeprune.devices import resolve_device
    from edgeprune.report.manifest import read_manifest
    from edgeprune.training import distributed

    started = time.perf_counter() if started is None else started
    target = _check_outputs(config)
    device = distributed.rank_device(resolve_device(config.device))
    out_dir = config.out_dir
    plan_config = PlanConfig(
        keep=config.keep, budget=config.budget, round_to=config.round_to or target.round_to,
        min_channels=config.min_channels,
    )
    splits = source.splits
    input_shape = tuple(splits.info.input_shape)
    model = source.model.cpu().eval()

    report(progress, "analysing channel groups", 0, 1)
    graph = analyze(model, example_input(input_shape), ignore=config.ignore)
    report(progress, "analysing channel groups", 1, 1)
    gates_path = source.run_path / "gates.pt" if source.run_path is not None else None
    model.to(device)
    try:
        with storage_errors(source.run_path) if source.run_path is not None else contextlib.nullcontext():
            importance, learned = _rank_zero_first(lambda: learned_importance(
                config.criterion, model, graph, splits.train, gate_config=config.gate,
                gates_path=gates_path, seed=config.seed, progress=progress))
        accuracy_dense = evaluate(model, splits.test)
    finally:
        model.cpu().eval()
    to_prune = (importance.model if importance.model is not None else model).cpu()  # slimming's trained copy
    if config.steps > 1:
        to_prune.to(device)  # gradual steps recover on the device; the final shrink and its check run on CPU
        model.to(device)  # the teacher
    try:
        if config.budget == "latency":
            from edgeprune.workflows.latency import prune_to_latency

            outcome = prune_to_latency(to_prune, input_shape, importance.scores, plan_config, target,
                                       criterion=config.criterion, gates=importance.fold, graph=graph,
                                       ignore=config.ignore, progress=progress)
            pruned, recovery_epochs = replace(outcome.prune, latency_budget=outcome.record()), 0
        else:
            pruned, recovery_epochs = gradual_prune(to_prune, input_shape, graph, importance, plan_config,
                                                    config.steps, splits, config.finetune_recipe, seed=config.seed,
                                                    teacher=model, ignore=config.ignore, progress=progress)
    finally:
        model.cpu().eval()
    pruned.model.to(device)
    model.to(device)  # the teacher
    try:
        tuned = finetune(pruned.model, splits, config.finetune_recipe, seed=config.seed, teacher=model,
                         progress=progress)
        pruned.model.eval()
        accuracy_pruned = evaluate(pruned.model, splits.test)
    finally:
        pruned.model.cpu().eval()
        model.cpu().eval()
    finetune_record = {**config.finetune_recipe.to_dict(), "seconds": tuned.train_seconds if tuned else 0.0,
                       "device": str(device), "steps": config.steps, "recovery_epochs": recovery_epochs}
    if distributed.world().size > 1:
        finetune_record["processes"] = distributed.world().size  # data-parallel ranks (torchrun)
    if not distributed.is_rank_zero():  # rank 0 writes the export; the others return what it wrote
        distributed.barrier()
        return ExportResult(out_dir, read_manifest(out_dir), source.trained_demo, learned)

    out_root = out_dir.parent
    with storage_errors(out_dir):
        out_root.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{config.export_name}.", dir=out_root))
    try:
        with storage_errors(out_dir):
            manifest, skipped = _build_export(work, config, target, source, graph, model, pruned,
                                              accuracy_dense.accuracy, accuracy_pruned.accuracy, finetune_record,
                                              learned, started, progress)
            replaced = move_into_place(work, out_dir, config.force)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    distributed.barrier()
    return ExportResult(out_dir, manifest, source.trained_demo, learned, replaced, tuple(skipped))


def _build_export(work: Path, config: ExportConfig, target: Any, source: DenseSource, graph: Any, model: Any,
                  pruned: PruneResult, accuracy_dense: float, accuracy_pruned: float,
                  finetune_record: dict, learned: bool, started: float,
                  progress: Optional[ProgressCallback]) -> tuple[Manifest, list[str]]:
    """Write everything of the export into `work`: ONNX, engines, bench, manifest, report."""
    from edgeprune import engines
    from edgeprune.measure.bench import benchmark
    from edgeprune.measure.environment import environment
    from edgeprune.onnx_export.exporter import check_parity, export_onnx
    from edgeprune.report import render_report
    from edgeprune.report.manifest import write_manifest

    from edgeprune.workflows.checkpoint import save_pruned

    splits = source.splits
    input_shape = tuple(splits.info.input_shape)
    report(progress, "exporting ONNX", 0, 2)
    export_onnx(model, input_shape, work / "dense.onnx")
    export_onnx(pruned.model, input_shape, work / "model.onnx")
    report(progress, "exporting ONNX", 1, 2)
    images, labels = _test_arrays(splits, config.parity_samples)
    parity = check_parity(pruned.model, work / "model.onnx", images)
    report(progress, "exporting ONNX", 2, 2)
    save_pruned(work, pruned, source.model_spec, splits.info.num_classes, force=True)  # plan.json + weights

    engine_records: list[EngineRecord] = []
    bench_models: dict = {}
    load_mb: dict = {}
    skipped: list[str] = []
    reason = engines.unavailable_reason(target)
    if reason is not None:
        skipped.append(f"engines and latency for {target.name}: {reason}")
    else:
        calibration = _calibration_batches(splits, config.calibration_batches, seed=config.seed) \
            if target.precision == "int8" else None
        artifacts = engines.build_engines(work / "model.onnx", work, target, calibration, module=pruned.model)
        engine_records = [_engine_record(engines, artifact, work, images, labels, target) for artifact in artifacts]
        bench_models, load_mb = _bench_runners(engines, target, work, model, pruned.model, calibration)
    bench = None
    if bench_models:
        batches = tuple(sorted(b for b in set(config.bench.batch_sizes) if b <= target.max_batch)) or (target.min_batch,)
        rng = np.random.default_rng(config.seed)
        inputs = {b: rng.standard_normal((b, *input_shape)).astype(np.float32) for b in batches}
        try:
            bench = benchmark(bench_models, inputs, replace(config.bench, batch_sizes=batches,
                                                            threads=target.intra_op_threads or None),
                              target_name=target.name, progress=progress, load_rss_mb=load_mb)
        finally:
            for runner in bench_models.values():
                runner.close()
        from edgeprune.measure.bench import with_model_memory

        bench = with_model_memory(bench, input_shape, target, replace(config.bench, batch_sizes=batches,
                                                                      threads=target.intra_op_threads or None))
        # The files are in the folder being built under a temporary name: record them by name.
        bench = replace(bench, entries=tuple(replace(e, model_file=Path(e.model_file).name if e.model_file else None)
                                             for e in bench.entries))
        bench.write(work / "bench.json")

    manifest = _manifest(config, target, source, graph, model, pruned, accuracy_dense, accuracy_pruned, parity,
                         engine_records, bench, finetune_record, work, skipped, learned,
                         time.perf_counter() - started, environment(threads=target.intra_op_threads or None))
    write_manifest(work, manifest)
    report(progress, "writing report", 0, 1)
    render_report(work)
    manifest = write_manifest(work, manifest)  # again, now with the report's checksums
    report(progress, "writing report", 1, 1)
    return manifest, skipped


def _manifest(config: ExportConfig, target: Any, source: DenseSource, graph: Any, model: Any, pruned: PruneResult,
              accuracy_dense: float, accuracy_pruned: float, parity: Any, engine_records: list[EngineRecord],
              bench: Any, finetune_record: dict, work: Path, skipped: list[str], learned: bool,
              seconds: float, env: dict) -> Manifest:
    """The typed record of everything the stages measured (written by `report.manifest`)."""
    from edgeprune.report.manifest import InputSpec, ShrinkCheck, layer_changes, latency_records, now_iso
    from edgeprune.versions import library_versions

    plan, info = pruned.plan, source.splits.info
    latency, speedups = latency_records(bench)
    budget_record = final_latency_budget(pruned.latency_budget, bench, target)
    return Manifest(
        name=config.export_name,
        created=now_iso(),
        model={"spec": source.model_spec, "data": source.data,
               "run": str(source.run_path) if source.run_path is not None else None},
        input=InputSpec(shape=tuple(info.input_shape), mean=tuple(info.mean) if info.mean else None,
                        std=tuple(info.std) if info.std else None, class_names=tuple(info.class_names)),
        num_classes=info.num_classes,
        keep_requested=plan.keep_requested, budget=plan.budget,
        keep_achieved=budget_record.get("measured_ratio", plan.keep_achieved),
        keep_note=latency_budget_note(budget_record, plan.note),
        params_before=plan.params_before, params_after=plan.params_after,
        flops_before=plan.flops_before, flops_after=plan.flops_after,
        accuracy_before=accuracy_dense, accuracy_after=accuracy_pruned,
        plan={
            "criterion": plan.criterion, "round_to": plan.round_to, "min_channels": plan.min_channels,
            "ignore": list(plan.ignore), "learned_gates_now": learned,
            "gate_config": config.gate.to_dict() if plan.criterion == "gate" else None,
            "groups": [{"id": g.id, "name": g.name, "channels_before": g.channels_before,
                        "channels_after": g.channels_after} for g in plan.groups],
            "frozen": [f.to_dict() for f in graph.frozen],
            "frozen_fraction": plan.frozen_fraction,
            "frozen_params": [dict(f) for f in plan.frozen_params],
            "opaque_modules": dict(plan.opaque_modules),
        },
        layers=layer_changes(model, pruned.model),
        finetune=finetune_record,
        shrink_check=ShrinkCheck(pruned.shrink_max_diff, pruned.shrink_tolerance,
                                 pruned.shrink_max_diff <= pruned.shrink_tolerance),
        onnx_parity=parity,
        engines=tuple(engine_records),
        latency=latency,
        speedups=speedups,
        size_bytes={"dense_onnx": (work / "dense.onnx").stat().st_size,
                    "pruned_onnx": (work / "model.onnx").stat().st_size},
        target=target.to_dict(),
        skipped=tuple(skipped),
        trained_demo_now=source.trained_demo,
        seconds=seconds,
        environment=env,
        versions=library_versions(),
        latency_budget=budget_record,
    )


def final_latency_budget(record: dict, bench: Any, target: Target) -> dict:
    """The closed loop's record, judged on the export's own benchmark where it ran on the target.

    The loop keeps its best round, which favours a lucky short measurement; the export's bench
    measures the chosen model against dense again, interleaved and longer, so that figure is the
    one the report judges (the loop's stays beside it as `loop_measured_ratio`)."""
    from edgeprune.latency.closed_loop import Measurement, confirms

    if not record or bench is None:
        return dict(record)
    comparison = next((c for c in bench.comparisons if c.candidate == "pruned" and c.baseline == "dense"
                       and c.batch == target.opt_batch), None)
    if comparison is None:
        return {**record, "measured_by": f"the closed loop's chosen round (the export's benchmark has no "
                                         f"dense-vs-pruned comparison at batch {target.opt_batch})"}
    low, high = comparison.speedup_ci95
    final = Measurement(1.0 / comparison.speedup, (1.0 / high, 1.0 / low), 0.0, 0.0)
    requested, tolerance = float(record["requested_ratio"]), float(record["tolerance"])
    return {**record, "loop_measured_ratio": record.get("measured_ratio"),
            "loop_measured_ratio_ci95": record.get("measured_ratio_ci95"),
            "measured_ratio": final.ratio, "measured_ratio_ci95": list(final.ratio_ci95),
            "measured_by": f"the export's benchmark at batch {comparison.batch} (dense and pruned interleaved, "
                           "independent of the loop's choice of round)",
            "met": abs(final.ratio - requested) <= tolerance, "confirmed": confirms(final, requested, tolerance)}


def latency_budget_note(record: dict, plan_note: str) -> str:
    """The note beside a latency budget, about the figure the report judges: where the export's
    benchmark re-judged it, the loop's note (about its own best round) would contradict it."""
    if not record or "loop_measured_ratio" not in record:
        return plan_note
    if record["met"]:
        return ""
    note = (f"the export's benchmark measured a latency ratio of {record['measured_ratio']:.3f} against the "
            f"requested {record['requested_ratio']:.3f} (tolerance ±{record['tolerance'] * 100:.0f} points)")
    if record.get("loop_measured_ratio") is not None:
        note += f"; the closed loop's chosen round had measured {record['loop_measured_ratio']:.3f}"
    if FLOOR_BOUND in plan_note:
        note += f"; {FLOOR_BOUND}"
    return note


def _engine_record(engines, artifact, work: Path, images: np.ndarray, labels: np.ndarray, target) -> EngineRecord:
    """An engine's build record plus its accuracy on test images, the FP32 ONNX model's accuracy
    on the same images, and parity against ORT FP32; the verdict on them is `report.rules`'."""
    with engines.load_runner(artifact.path, target) as runner:
        accuracy = engines.accuracy_of_runner(runner, images, labels)
        parity = engines.compare_with_onnxruntime(runner, work / "model.onnx", images[:64])
    with engines.load_runner(work / "model.onnx") as fp32:
        reference = engines.accuracy_of_runner(fp32, images, labels)
    built = artifact.to_dict(relative_to=work)
    return EngineRecord(name=built["name"], path=built["path"], precision=built["precision"],
                        target=built["target"], build_info=built["build_info"], accuracy=accuracy,
                        parity=parity, reference_accuracy=reference, accuracy_samples=len(labels))


def _bench_runners(engines, target, work: Path, dense_model, pruned_model, calibration) -> tuple[dict, dict]:
    """Dense and pruned on what the target runs, plus any lower-precision pruned engine.

    The engine registry finds the engines already built into `work` and builds the rest there
    (the dense TensorRT plan, the torch programs), so the export folder holds every engine its
    bench ran. Returns the runners and the RSS each one added when loaded (after one discarded
    load, so the runtime's own start-up is not charged to the first model).
    """
    from edgeprune.measure.bench import open_runners

    sources = [engines.ModelSource("dense", work / "dense.onnx", dense_model),
               engines.ModelSource("pruned", work / "model.onnx", pruned_model)]
    return open_runners(engines.bench_loaders(target, sources, work, calibration=calibration))
