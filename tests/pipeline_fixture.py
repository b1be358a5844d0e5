"""A tiny trained run and fast export settings shared by the pipeline and CLI tests."""
from __future__ import annotations

from pathlib import Path

from edgeprune.measure.results import BenchConfig
from edgeprune.importance.gates import GateConfig
from edgeprune.workflows.export import ExportConfig
from edgeprune.training.runs import train_run
from edgeprune.training.train import TrainConfig

FAST_BENCH = BenchConfig(warmup_s=0.02, min_iterations=10, min_seconds=0.1, rounds=3, memory_iterations=1,
                         bootstrap_resamples=200)


def make_tiny_run(root: Path) -> Path:
    run_dir = root / "runs" / "tiny"
    train_run(run_dir, "resnet20", "synthetic", TrainConfig(epochs=1, batch_size=64), train_size=256, test_size=64)
    return run_dir


def fast_config(run_dir: Path, out_root: Path, **overrides) -> ExportConfig:
    settings = dict(keep=0.5, run_dir=run_dir, out_root=out_root, finetune_epochs=1,
                    gate=GateConfig(max_epochs=1, batch_size=64), bench=FAST_BENCH, parity_samples=64,
                    calibration_batches=2)
    settings.update(overrides)
    return ExportConfig(**settings)
