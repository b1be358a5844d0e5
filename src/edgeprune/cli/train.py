"""`edgeprune train`: train a dense model into a run folder and show how it did."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Optional

import click


@click.command("train")
@click.option("--run", "run_dir", type=click.Path(path_type=Path), default=None,
              help="Run folder to write [default: runs/MODEL-DATA].")
@click.option("--model", "model_spec", default="resnet20", show_default=True,
              help="resnet20, resnet56, resnet18, tv:NAME (torchvision) or module:function.")
@click.option("--data", "data_spec", default="synthetic", show_default=True,
              help="synthetic, digits, cifar10 or folder:PATH.")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Epochs [default: the demo recipe's].")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Batch size [default: the demo recipe's].")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Peak learning rate [default: the demo recipe's].")
@click.option("--seed", type=int, default=0, show_default=True, help="Fixes the data split, initial weights and batch order.")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None, help="Local copy of the data (cifar10).")
@click.option("--train-size", type=click.IntRange(min=1), default=None, help="Number of training images [default: the data set's].")
@click.option("--test-size", type=click.IntRange(min=1), default=None, help="Number of test images [default: the data set's].")
@click.option("--image-size", type=click.IntRange(min=8), default=None, help="Resize images to this square size.")
@click.option("--force", is_flag=True, help="Overwrite an existing run folder.")
def train(
    run_dir: Optional[Path],
    model_spec: str,
    data_spec: str,
    epochs: Optional[int],
    batch_size: Optional[int],
    lr: Optional[float],
    seed: int,
    data_dir: Optional[Path],
    train_size: Optional[int],
    test_size: Optional[int],
    image_size: Optional[int],
    force: bool,
) -> None:
    """Train a dense model into a run folder (run.json, dense.pt, metrics.json)."""
    from rich.table import Table

    from edgeprune.cli.console import console, progress_bars
    from edgeprune.training.runs import train_run
    from edgeprune.training.train import DEMO_TRAIN_CONFIG

    overrides = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed}
    config = dataclasses.replace(DEMO_TRAIN_CONFIG, **{k: v for k, v in overrides.items() if v is not None})
    run_dir = run_dir or Path("runs") / default_run_name(model_spec, data_spec)
    with progress_bars() as progress:
        run = train_run(
            run_dir,
            model_spec,
            data_spec,
            config,
            data_dir=data_dir,
            train_size=train_size,
            test_size=test_size,
            image_size=image_size,
            force=force,
            progress=progress,
        )
    dense = run.metrics["dense"]
    table = Table(title=f"dense run {run_dir}", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("model / data", f"{run.spec.model} / {run.spec.data}")
    table.add_row("test accuracy", f"{100 * dense['test_accuracy']:.2f}% (n={dense['test_n']})")
    table.add_row("test loss", f"{dense['test_loss']:.4f}")
    table.add_row("params", f"{dense['params']:,}")
    table.add_row("epochs / train images", f"{config.epochs} / {dense['train_n']}")
    table.add_row("train seconds", f"{dense['train_seconds']:.1f}")
    console.print(table)


def default_run_name(model_spec: str, data_spec: str) -> str:
    """`resnet20-synthetic`; specs with paths or colons become file-name safe."""
    data_name = Path(data_spec.split(":", 1)[1]).name if data_spec.startswith("folder:") else data_spec
    return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{model_spec}-{data_name}").strip("_")
