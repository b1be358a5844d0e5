"""`edgeprune export --keep 0.5`: the whole chain from a dense run to a shippable folder.

Every stage is a library call; this module only sequences them and keeps the output honest: the
folder is built under a temporary name and renamed into place at the end, so a failure or an
interrupt never leaves a half-written export, and an existing export is replaced only with
`force`.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

import numpy as np

from edgeprune.measure.results import BenchConfig
from edgeprune.errors import InputError, OutputExistsError
from edgeprune.fileio import write_json_atomic
from edgeprune.importance.gates import GateConfig, gates_to_fold, load_or_learn_gates, split_by_group
from edgeprune.analysis.graph import analyze
from edgeprune.plan import PlanConfig
from edgeprune.progress import ProgressCallback, report
from edgeprune.workflows.prune import PruneResult, example_input, prune_model
from edgeprune.training.train import DEMO_TRAIN_CONFIG, TrainConfig, evaluate, train_model

DEMO_RUN = Path("runs/demo")
DEMO_MODEL = "resnet20"
DEMO_DATA = "synthetic"


@dataclass(frozen=True)
class ExportConfig:
    """Everything `edgeprune export` can be told; defaults are the demo's."""

    keep: float = 0.5
    run_dir: Path = DEMO_RUN
    out_root: Path = Path("dist")
    target: str = "cpu-x86"
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
        if self.finetune_epochs < 0:
            raise InputError(f"--finetune-epochs must be >= 0, got {self.finetune_epochs}")

    @property
    def export_name(self) -> str:
        return f"{Path(self.run_dir).name}-keep{self.keep:.2f}"

    @property
    def out_dir(self) -> Path:
        return Path(self.out_root) / self.export_name


@dataclass(frozen=True)
class ExportResult:
    out_dir: Path
    manifest: dict
    trained_demo: bool
    learned_gates: bool
    skipped: tuple[str, ...] = field(default_factory=tuple)


def _ensure_run(config: ExportConfig, progress: Optional[ProgressCallback]) -> tuple[object, bool]:
    """Load the run; the built-in demo run is trained on first use, any other must exist."""
    from edgeprune.training.runs import load_run, train_run

    run_dir = Path(config.run_dir)
    if not run_dir.exists() and run_dir.resolve() == DEMO_RUN.resolve():
        train_run(run_dir, DEMO_MODEL, DEMO_DATA, replace(DEMO_TRAIN_CONFIG, seed=config.seed), progress=progress)
        return load_run(run_dir), True
    return load_run(run_dir), False


def _finetune(pruned: PruneResult, splits, config: ExportConfig, progress) -> dict:
    if config.finetune_epochs == 0:
        return {"epochs": 0}
    train_config = TrainConfig(
        epochs=config.finetune_epochs, batch_size=128, lr=config.finetune_lr, schedule="cosine",
        label_smoothing=0.05, seed=config.seed,
    )
    result = train_model(pruned.model, splits, train_config, progress=progress, label="fine-tuning")
    return {"epochs": config.finetune_epochs, "lr": config.finetune_lr, "seconds": result.train_seconds}


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
    from edgeprune import engines
    from edgeprune.measure.bench import benchmark
    from edgeprune.onnx_export.exporter import check_parity, export_onnx
    from edgeprune.report.manifest import build_manifest, record_files
    from edgeprune.report import render_report
    from edgeprune.training.runs import load_splits
    from edgeprune.targets import load_target

    started = time.perf_counter()
    target = load_target(config.target)
    out_dir = config.out_dir
    if out_dir.exists() and not config.force:
        raise OutputExistsError(f"{out_dir} already exists; pass --force to replace it")
    plan_config = PlanConfig(
        keep=config.keep, budget=config.budget, round_to=config.round_to or target.round_to,
        min_channels=config.min_channels,
    )

    run, trained_demo = _ensure_run(config, progress)
    splits = load_splits(run.spec)
    input_shape = tuple(run.spec.input_shape)
    model = run.model.eval()

    report(progress, "analysing channel groups", 0, 1)
    graph = analyze(model, example_input(input_shape), ignore=config.ignore)
    report(progress, "analysing channel groups", 1, 1)
    gates, learned = (None, False)
    scores = None
    if config.criterion == "gate":
        gates, learned = load_or_learn_gates(Path(run.path) / "gates.pt", run.model, graph, splits.train,
                                             config.gate, progress)
        scores = split_by_group(graph, gates.abs())
    else:
        from edgeprune.importance.criteria import score_units

        scores = score_units(config.criterion, model, graph, data=splits.train, seed=config.seed)
    pruned = prune_model(
        model, input_shape, scores, plan_config, criterion=config.criterion,
        gates=gates_to_fold(gates, config.gate), graph=graph,
        ignore=config.ignore,
    )
    accuracy_dense = evaluate(model, splits.test)
    finetune = _finetune(pruned, splits, config, progress)
    pruned.model.eval()
    accuracy_pruned = evaluate(pruned.model, splits.test)

    out_root = Path(config.out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{config.export_name}.", dir=out_root))
    skipped: list[str] = []
    try:
        report(progress, "exporting ONNX", 0, 2)
        export_onnx(model, input_shape, work / "dense.onnx")
        export_onnx(pruned.model, input_shape, work / "model.onnx")
        report(progress, "exporting ONNX", 1, 2)
        images, labels = _test_arrays(splits, config.parity_samples)
        parity = check_parity(pruned.model, work / "model.onnx", images)
        report(progress, "exporting ONNX", 2, 2)
        write_json_atomic(work / "plan.json", {**pruned.plan.to_dict(), "model": run.spec.model,
                                               "num_classes": run.spec.num_classes})

        engine_records: list[dict] = []
        bench_models: dict = {}
        load_mb: dict = {}
        reason = engines.unavailable_reason(target)
        if reason is not None:
            skipped.append(f"engines and latency for {target.name}: {reason}")
        else:
            calibration = _calibration_batches(splits, config.calibration_batches, seed=config.seed) \
                if target.precision == "int8" else None
            artifacts = engines.build_engines(work / "model.onnx", work, target, calibration)
            engine_records = [_engine_record(engines, artifact, work, images, labels, target) for artifact in artifacts]
            bench_models, load_mb = _bench_runners(engines, target, work, model, pruned.model, artifacts, calibration)
        bench_dict = None
        if bench_models:
            batches = tuple(sorted(b for b in set(config.bench.batch_sizes) if b <= target.max_batch)) or (target.min_batch,)
            rng = np.random.default_rng(config.seed)
            inputs = {b: rng.standard_normal((b, *input_shape)).astype(np.float32) for b in batches}
            bench = benchmark(bench_models, inputs, replace(config.bench, batch_sizes=batches,
                                                            threads=target.intra_op_threads or None),
                              target_name=target.name, progress=progress, load_rss_mb=load_mb)
            for runner in bench_models.values():
                runner.close()
            bench_dict = bench.to_dict()
            write_json_atomic(work / "bench.json", bench_dict)

        manifest = build_manifest(
            name=config.export_name, run=run, config=config, target=target, graph=graph, pruned=pruned,
            accuracy_dense=accuracy_dense.accuracy, accuracy_pruned=accuracy_pruned.accuracy,
            parity=parity.to_dict(), engines=engine_records, bench=bench_dict, finetune=finetune,
            work_dir=work, skipped=skipped, learned_gates=learned, trained_demo=trained_demo,
            seconds=time.perf_counter() - started,
        )
        write_json_atomic(work / "manifest.json", manifest)
        report(progress, "writing report", 0, 1)
        render_report(work)
        manifest = record_files(work)
        report(progress, "writing report", 1, 1)
        _move_into_place(work, out_dir, config.force)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return ExportResult(out_dir, manifest, trained_demo, learned, tuple(skipped))


def _engine_record(engines, artifact, work: Path, images: np.ndarray, labels: np.ndarray, target) -> dict:
    """An engine's build record plus its accuracy on the test split and parity against ORT FP32."""
    record = artifact.to_dict(relative_to=work)
    with engines.load_runner(artifact.path, target) as runner:
        record["accuracy"] = engines.accuracy_of_runner(runner, images, labels)
        parity = engines.compare_with_onnxruntime(runner, work / "model.onnx", images[:64])
    record["parity"] = parity.to_dict()
    if artifact.precision == "int8":  # logits move under INT8; decisions must not
        record["parity"]["passed"] = parity.top1_agreement >= 0.95
        record["parity"]["criterion"] = "top-1 agreement >= 0.95 against ONNX Runtime FP32"
    return record


def _bench_runners(engines, target, work: Path, dense_model, pruned_model, artifacts, calibration) -> tuple[dict, dict]:
    """Dense and pruned on what the target runs, plus any lower-precision pruned engine.

    The engine registry finds the `artifacts` already built into `work` and builds the rest there
    (the dense TensorRT plan, the torch programs), so the export folder holds every engine its
    bench ran. Returns the runners and the RSS each one added when loaded (after one discarded
    load, so the runtime's own start-up is not charged to the first model).
    """
    from edgeprune.measure.bench import open_runners

    sources = [engines.ModelSource("dense", work / "dense.onnx", dense_model),
               engines.ModelSource("pruned", work / "model.onnx", pruned_model)]
    return open_runners(engines.bench_loaders(target, sources, work, calibration=calibration))


def _move_into_place(work: Path, out_dir: Path, force: bool) -> None:
    """Rename the finished folder over `out_dir`; the old one is removed only after that."""
    if out_dir.exists():
        if not force:
            raise OutputExistsError(f"{out_dir} already exists; pass --force to replace it")
        trash = out_dir.with_name(f".{out_dir.name}.old")
        shutil.rmtree(trash, ignore_errors=True)
        out_dir.rename(trash)
        work.rename(out_dir)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        work.rename(out_dir)
