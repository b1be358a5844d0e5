"""The Python API behind `edgeprune.prune`, `edgeprune.export` and `edgeprune.load`.

The same chain as the CLI (same checks, manifest and report), taking an in-memory `nn.Module`
and DataLoaders (or map-style data sets of `(image, label)`). Nothing process-wide changes: the
user's model is copied, not modified; RNGs are seeded on private copies; nothing is printed or
logged unless the caller configures logging; no umask or stdout is touched.
"""
from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import nn

from edgeprune.errors import InputError
from edgeprune.progress import ProgressCallback
from edgeprune.targets import DEFAULT_TARGET
from edgeprune.workflows.export import DenseSource, ExportConfig, ExportResult, export_source
from edgeprune.workflows.prune import PruneResult
from edgeprune.workflows.recipe import FinetuneRecipe


def prune(model: nn.Module, example_input: torch.Tensor | Sequence[int], keep: float = 0.5, *,
          criterion: str = "magnitude", data: Any = None, budget: str = "params", round_to: int = 8,
          min_channels: int = 8, ignore: Sequence[str] = (), device: str = "cpu") -> PruneResult:
    """Plan to `keep` and physically shrink a copy of `model`; `result.model` is the smaller
    model, `result.plan` says what was kept (params and FLOPs before and after), and the shrink
    check (`result.shrink_max_diff <= result.shrink_tolerance`) has passed.

    `example_input` is a batch (or the shape of one image, without the batch axis). Criteria
    that learn or need gradients (`gate`, `taylor`) take training `data`; `magnitude`, `bn` and
    `random` need none. `device` is where the gates are learned.
    """
    from edgeprune.analysis.graph import analyze
    from edgeprune.devices import resolve_device
    from edgeprune.importance.gates import GateConfig
    from edgeprune.plan import PlanConfig
    from edgeprune.workflows.prune import example_input as make_example, prune_model
    from edgeprune.workflows.recipe import learned_importance

    model = _copy_of(model)
    if isinstance(example_input, torch.Tensor):
        if example_input.dim() < 2:
            raise InputError(f"example_input must be a batch (N, C, H, W), got shape {tuple(example_input.shape)}")
        input_shape, check_batch = tuple(example_input.shape[1:]), example_input.detach().cpu().float()
    else:
        input_shape, check_batch = tuple(int(d) for d in example_input), None
    config = PlanConfig(keep=keep, budget=budget, round_to=round_to, min_channels=min_channels)
    device = resolve_device(device)
    graph = analyze(model, make_example(input_shape), ignore=tuple(ignore))
    train_set = _dataset(data, "data") if data is not None else None
    if criterion in ("gate", "taylor") and train_set is None:
        raise InputError(f"criterion {criterion!r} needs training data: pass data=train_loader, "
                         "or use criterion='magnitude'")
    model.to(device)
    try:
        importance, _ = learned_importance(criterion, model, graph, train_set, gate_config=GateConfig(),
                                           gates_path=None)
    finally:
        model.cpu().eval()
    return prune_model(model, input_shape, importance.scores, config, criterion=criterion, gates=importance.fold,
                       graph=graph, ignore=tuple(ignore), check_batch=check_batch)


def export(model: nn.Module, train_loader: Any, val_loader: Any, *, keep: float = 0.5,
           target: str = DEFAULT_TARGET, out: str | Path = "dist/model", criterion: str = "gate",
           budget: str = "params", finetune_epochs: int = FinetuneRecipe.epochs, device: str = "cpu", force: bool = False,
           mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
           class_names: Optional[Sequence[str]] = None, config: Optional[ExportConfig] = None,
           progress: Optional[ProgressCallback] = None) -> ExportResult:
    """The whole chain on an in-memory model: gates, plan to `keep`, shrink, fine-tune on
    `train_loader`, evaluate on `val_loader`, ONNX with parity, engines for `target`, benchmark,
    manifest and report in `out`. `mean`/`std` are recorded for the app (what the loaders'
    normalisation was); `config` carries any other `ExportConfig` setting.
    """
    from edgeprune.training.data import DataSplits, DatasetInfo

    train_set, val_set = _dataset(train_loader, "train_loader"), _dataset(val_loader, "val_loader")
    model = _copy_of(model)
    image = _first_image(val_set, "val_loader")
    num_classes = _num_classes(model, image)
    names = tuple(class_names) if class_names is not None else _class_names(val_set, num_classes)
    if len(names) != num_classes:
        raise InputError(f"{len(names)} class names for a model with {num_classes} outputs; pass one name per class")
    info = DatasetInfo(name="in-memory", num_classes=num_classes, class_names=names,
                       input_shape=tuple(image.shape), mean=tuple(mean) if mean else (), std=tuple(std) if std else ())
    source = DenseSource(model, DataSplits(train_set, val_set, info), f"python:{type(model).__qualname__}",
                         "in-memory")
    config = replace(config or ExportConfig(), keep=keep, target=target, out=Path(out), criterion=criterion,
                     budget=budget, finetune_epochs=finetune_epochs, device=device, force=force)
    return export_source(source, config, progress)


def load(model: nn.Module | str | None, out_dir: str | Path, num_classes: Optional[int] = None) -> nn.Module:
    """The pruned model saved in `out_dir` (by `prune -o` or `export`), rebuilt from the original
    architecture: a model spec (`tv:resnet18`; None: the one recorded) or the dense `nn.Module`
    itself (only its architecture is used), shrunk with the saved plan and given the saved weights."""
    from edgeprune.workflows.checkpoint import load as load_checkpoint

    if isinstance(model, nn.Module):
        return load_checkpoint(_copy_of(model), out_dir, num_classes)
    return load_checkpoint(model, out_dir, num_classes)


def _copy_of(model: Any) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return copy.deepcopy(model).cpu()


def _dataset(data: Any, what: str):
    """The map-style data set of `(image, label)` behind a DataLoader (or the data set itself)."""
    from torch.utils.data import DataLoader, IterableDataset

    dataset = data.dataset if isinstance(data, DataLoader) else data
    if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
        raise InputError(f"{what} must be a DataLoader over (or a) map-style data set of (image, label); "
                         f"got {type(dataset).__name__}")
    if len(dataset) == 0:
        raise InputError(f"{what} is empty")
    return dataset


def _first_image(dataset: Any, what: str) -> torch.Tensor:
    item = dataset[0]
    if not isinstance(item, (tuple, list)) or len(item) < 2 or not isinstance(item[0], torch.Tensor):
        raise InputError(f"{what} items must be (image tensor, label) pairs, got {type(item).__name__}")
    if item[0].dim() != 3:
        raise InputError(f"{what} images must be (C, H, W) tensors, got shape {tuple(item[0].shape)}")
    return item[0]


def _num_classes(model: nn.Module, image: torch.Tensor) -> int:
    model.eval()
    try:
        with torch.no_grad():
            logits = model(image.unsqueeze(0).float())
    except Exception as error:  # the user's model cannot take the user's images
        raise InputError(f"the model cannot run on the loaders' images of shape {tuple(image.shape)}: "
                         f"{str(error).splitlines()[0] if str(error) else type(error).__name__}") from None
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        raise InputError("the model must return logits of shape (N, classes)")
    return int(logits.shape[1])


def _class_names(dataset: Any, num_classes: int) -> tuple[str, ...]:
    base = dataset
    while hasattr(base, "dataset") and not hasattr(base, "classes"):  # Subset of an ImageFolder
        base = base.dataset
    classes = getattr(base, "classes", None)
    if classes is not None and len(classes) == num_classes:
        return tuple(str(c) for c in classes)
    return tuple(str(i) for i in range(num_classes))
