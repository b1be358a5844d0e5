"""`edgeprune export --keep 0.5`: the whole chain from a dense run to a shippable folder.

Every stage is a library call; this module only sequences them and keeps the output honest: the
folder is built under a temporary name and renamed into place at the end, so a failure or an
interrupt never leaves a half-written export, and an existing export is replaced only with
`force`. A full disk or an unwritable output is a one-line `StorageError`.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

import numpy as np

from edgeprune.analysis.graph import analyze
from edgeprune.errors import OutputExistsError
from edgeprune.fileio import storage_errors, write_json_atomic
from edgeprune.importance.gates import GateConfig
from edgeprune.measure.results import BenchConfig
from edgeprune.plan import PlanConfig
from edgeprune.progress import ProgressCallback, report
from edgeprune.report.manifest import EngineRecord, Manifest
from edgeprune.targets import DEFAULT_TARGET
from edgeprune.training.train import evaluate
from edgeprune.workflows.prune import PruneResult, example_input, prune_model
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
    finetune_epochs: int = 3
    finetune_lr: float = 0.02
    gate: GateConfig = GateConfig()
    bench: BenchConfig = BenchConfig(warmup_s=0.2, min_iterations=200, min_seconds=3.0, rounds=20)
    parity_samples: int = 256
    calibration_batches: int = 8
    force: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        PlanConfig(keep=self.keep, budget=self.budget, round_to=self.round_to or 8, min_channels=self.min_channels)
        self.finetune_recipe  # validates the fine-tune settings

    @property
    def finetune_recipe(self) -> FinetuneRecipe:
        return FinetuneRecipe(epochs=self.finetune_epochs, lr=self.finetune_lr)

    @property
    def export_name(self) -> str:
        """RUN-keepK.KK for the default target, RUN-keepK.KK-TARGET otherwise, so exports of one
        run for several targets sit side by side."""
        name = f"{Path(self.run_dir).name}-keep{self.keep:.2f}"
        target = Path(str(self.target)).stem
        return name if target == DEFAULT_TARGET else f"{name}-{target}"

    @property
    def out_dir(self) -> Path:
        return Path(self.out_root) / self.export_name


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
    """Run the whole chain (see module docstring) and return where it went and what it measured."""
    from edgeprune.targets import load_target
    from edgeprune.training.runs import load_splits

    started = time.perf_counter()
    target = load_target(config.target)
    out_dir = config.out_dir
    if out_dir.exists() and not config.force:
        raise OutputExistsError(f"{out_dir} already exists; pass --force to replace it")
    plan_config = PlanConfig(
        keep=config.keep, budget=config.budget, round_to=config.round_to or target.round_to,
        min_channels=config.min_channels,
    )

    with storage_errors(config.run_dir):
        run, trained_demo = ensure_run(config.run_dir, seed=config.seed, progress=progress)
    splits = load_splits(run.spec)
    input_shape = tuple(run.spec.input_shape)
    model = run.model.eval()

    report(progress, "analysing channel groups", 0, 1)
    graph = analyze(model, example_input(input_shape), ignore=config.ignore)
    report(progress, "analysing channel groups", 1, 1)
    with storage_errors(run.path):
        importance, learned = learned_importance(
            config.criterion, model, graph, splits.train, gate_config=config.gate,
            gates_path=Path(run.path) / "gates.pt", seed=config.seed, progress=progress)
    pruned = prune_model(model, input_shape, importance.scores, plan_config, criterion=config.criterion,
                         gates=importance.fold, graph=graph, ignore=config.ignore)
    accuracy_dense = evaluate(model, splits.test)
    tuned = finetune(pruned.model, splits, config.finetune_recipe, seed=config.seed, progress=progress)
    finetune_record = {**config.finetune_recipe.to_dict(), "seconds": tuned.train_seconds if tuned else 0.0}
    pruned.model.eval()
    accuracy_pruned = evaluate(pruned.model, splits.test)

    out_root = Path(config.out_root)
    with storage_errors(out_dir):
        out_root.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{config.export_name}.", dir=out_root))
    try:
        with storage_errors(out_dir):
            manifest, skipped = _build_export(work, config, target, run, graph, model, pruned, splits,
                                              accuracy_dense.accuracy, accuracy_pruned.accuracy, finetune_record,
                                              learned, trained_demo, started, progress)
            replaced = _move_into_place(work, out_dir, config.force)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return ExportResult(out_dir, manifest, trained_demo, learned, replaced, tuple(skipped))


def _build_export(work: Path, config: ExportConfig, target: Any, run: Any, graph: Any, model: Any,
                  pruned: PruneResult, splits: Any, accuracy_dense: float, accuracy_pruned: float,
                  finetune_record: dict, learned: bool, trained_demo: bool, started: float,
                  progress: Optional[ProgressCallback]) -> tuple[Manifest, list[str]]:
    """Write everything of the export into `work`: ONNX, engines, bench, manifest, report."""
    from edgeprune import engines
    from edgeprune.measure.bench import benchmark
    from edgeprune.measure.environment import environment
    from edgeprune.onnx_export.exporter import check_parity, export_onnx
    from edgeprune.report import render_report
    from edgeprune.report.manifest import write_manifest

    input_shape = tuple(run.spec.input_shape)
    report(progress, "exporting ONNX", 0, 2)
    export_onnx(model, input_shape, work / "dense.onnx")
    export_onnx(pruned.model, input_shape, work / "model.onnx")
    report(progress, "exporting ONNX", 1, 2)
    images, labels = _test_arrays(splits, config.parity_samples)
    parity = check_parity(pruned.model, work / "model.onnx", images)
    report(progress, "exporting ONNX", 2, 2)
    write_json_atomic(work / "plan.json", {**pruned.plan.to_dict(), "model": run.spec.model,
                                           "num_classes": run.spec.num_classes})

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

        bench = with_model_memory(bench, {"dense": work / "dense.onnx", "pruned": work / "model.onnx"},
                                  input_shape, target, replace(config.bench, batch_sizes=batches,
                                                               threads=target.intra_op_threads or None))
        bench.write(work / "bench.json")

    manifest = _manifest(config, target, run, graph, model, pruned, accuracy_dense, accuracy_pruned, parity,
                         engine_records, bench, finetune_record, work, skipped, learned, trained_demo,
                         time.perf_counter() - started, environment(threads=target.intra_op_threads or None))
    write_manifest(work, manifest)
    report(progress, "writing report", 0, 1)
    render_report(work)
    manifest = write_manifest(work, manifest)  # again, now with the report's checksums
    report(progress, "writing report", 1, 1)
    return manifest, skipped


def _manifest(config: ExportConfig, target: Any, run: Any, graph: Any, model: Any, pruned: PruneResult,
              accuracy_dense: float, accuracy_pruned: float, parity: Any, engine_records: list[EngineRecord],
              bench: Any, finetune_record: dict, work: Path, skipped: list[str], learned: bool,
              trained_demo: bool, seconds: float, env: dict) -> Manifest:
    """The typed record of everything the stages measured (written by `report.manifest`)."""
    from edgeprune.report.manifest import InputSpec, ShrinkCheck, layer_changes, latency_records, now_iso
    from edgeprune.versions import library_versions

    plan, spec = pruned.plan, run.spec
    latency, speedups = latency_records(bench)
    return Manifest(
        name=config.export_name,
        created=now_iso(),
        model={"spec": spec.model, "data": spec.data, "run": str(run.path)},
        input=InputSpec(shape=tuple(spec.input_shape), mean=tuple(spec.mean), std=tuple(spec.std),
                        class_names=tuple(spec.class_names)),
        num_classes=spec.num_classes,
        keep_requested=plan.keep_requested, keep_achieved=plan.keep_achieved, budget=plan.budget,
        keep_note=plan.note,
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
        trained_demo_now=trained_demo,
        seconds=seconds,
        environment=env,
        versions=library_versions(),
    )


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


def _move_into_place(work: Path, out_dir: Path, force: bool) -> bool:
    """Rename the finished folder over `out_dir`; the old one is removed only after that.
    Returns whether an existing export was replaced."""
    if out_dir.exists():
        if not force:
            raise OutputExistsError(f"{out_dir} already exists; pass --force to replace it")
        trash = out_dir.with_name(f".{out_dir.name}.old")
        shutil.rmtree(trash, ignore_errors=True)
        out_dir.rename(trash)
        work.rename(out_dir)
        shutil.rmtree(trash, ignore_errors=True)
        return True
    work.rename(out_dir)
    return False
