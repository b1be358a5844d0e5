"""`edgeprune import`: turn a model trained elsewhere into a run folder (see training.importer)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import click

from edgeprune.cli.options import DEVICE, NumberList


#: Where the preprocessing came from, in words (`Preprocess.source`).
_ORIGIN = {"weights": "the published weights' metadata", "timm": "timm's pretrained config",
           "flags": "--input-size/--mean/--std", "default": "the default (ImageNet statistics)"}


@click.command("import")
@click.option("--model", "model_spec", required=True,
              help="tv:NAME (torchvision), timm:NAME, resnet20/resnet56/resnet18, or module:function.")
@click.option("--weights", required=True,
              help="A state_dict or training checkpoint (.pt, .pth, .safetensors), or a torchvision "
                   "weights name (IMAGENET1K_V1, DEFAULT; downloaded).")
@click.option("--data", "data_spec", required=True,
              help="folder:PATH (PATH/train and PATH/val, else one folder split 80/20), digits, synthetic or cifar10.")
@click.option("--run", "run_dir", type=click.Path(path_type=Path), default=None,
              help="Run folder to write [default: runs/MODEL-DATA].")
@click.option("--input-size", type=click.IntRange(min=8), default=None,
              help="Square input size [default: the weights' metadata, else 224; 32 for the built-in ResNets].")
@click.option("--mean", type=NumberList(float), default=None, help="Per-channel mean, e.g. 0.485,0.456,0.406.")
@click.option("--std", type=NumberList(float), default=None, help="Per-channel std, e.g. 0.229,0.224,0.225.")
@click.option("--device", type=DEVICE, default="cpu", show_default=True, help="Where the imported model is evaluated.")
@click.option("--seed", type=int, default=0, show_default=True, help="Fixes the train/val split of a single folder.")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None, help="Local copy of the data (cifar10).")
@click.option("--train-size", type=click.IntRange(min=1), default=None, help="Use this many training images.")
@click.option("--test-size", type=click.IntRange(min=1), default=None, help="Evaluate on this many validation images.")
@click.option("--force", is_flag=True, help="Replace an existing run folder.")
def import_model(model_spec: str, weights: str, data_spec: str, run_dir: Optional[Path], input_size, mean, std,
                 device: str, seed: int, data_dir, train_size, test_size, force: bool) -> None:
    """Import a trained model and its weights; evaluate it on the validation split."""
    from rich.table import Table

    from edgeprune.cli.console import console, progress_bars
    from edgeprune.cli.train import default_run_name
    from edgeprune.training.importer import ImportConfig, import_run

    config = ImportConfig(model=model_spec, weights=weights, data=data_spec,
                          run_dir=run_dir or Path("runs") / default_run_name(model_spec, data_spec),
                          input_size=input_size, mean=mean, std=std, device=device, seed=seed,
                          data_dir=data_dir, train_size=train_size, test_size=test_size, force=force)
    with progress_bars() as progress:
        result = import_run(config, progress)
    spec = result.run.spec
    table = Table(title=f"imported run {config.run_dir}", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("model / data", f"{spec.model} / {spec.data}")
    table.add_row("weights", f"{result.weights_source} ({spec.imported['format']}, {spec.imported['found_under']})")
    table.add_row("classes", f"{spec.num_classes}")
    table.add_row("input", f"{spec.input_shape}" + (f", resize {result.preprocess.resize_size}, crop "
                                                     f"{result.preprocess.input_size}, from "
                                                     f"{_ORIGIN[result.preprocess.source]}" if result.preprocess else ""))
    table.add_row("validation accuracy", f"{100 * result.accuracy.accuracy:.2f}% (n={result.accuracy.n})")
    table.add_row("params", f"{sum(p.numel() for p in result.run.model.parameters()):,}")
    console.print(table)
    console.print(f"next: edgeprune export --run {config.run_dir} --keep 0.5")
