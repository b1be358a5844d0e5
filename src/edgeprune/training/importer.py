"""`edgeprune import`: a model trained elsewhere becomes a run folder, measured on the user's data.

The run folder has the format `edgeprune train` writes (run.json, dense.pt, metrics.json), so
every later stage treats an imported model like a trained one, and `accuracy_before` in every
report is the user's model evaluated here on the user's validation split. The head size is read
from the weights; everything is checked before anything is written, and the folder is written
under a temporary name and renamed into place, so a failure leaves no run folder behind.
"""
from __future__ import annotations

import io
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from edgeprune.devices import resolve_device
from edgeprune.errors import InputError, OutputExistsError
from edgeprune.fileio import move_into_place, sha256_file, write_bytes_atomic, write_json_atomic
from edgeprune.progress import ProgressCallback, report
from edgeprune.training.data import DataSplits, load_dataset
from edgeprune.training.data.preprocess import Preprocess
from edgeprune.training.models import BUILTIN_MODELS, build_model
from edgeprune.training.runs import (DENSE_WEIGHTS, METRICS_JSON, RUN_FILES, RUN_JSON, SCHEMA_VERSION, LoadedRun,
                                     RunSpec, check_state_dict, load_run)
from edgeprune.training.train import EvalResult, evaluate
from edgeprune.training.weights import read_weights
from edgeprune.versions import library_versions

#: A class count no real head has: the keys whose first dimension is this are the head's.
_PROBE_CLASSES = 997


@dataclass(frozen=True)
class ImportConfig:
    """What `edgeprune import` is told: an architecture, its weights and the user's images."""

    model: str
    weights: str  # a weights file, or a torchvision weight enum name (IMAGENET1K_V1, DEFAULT)
    data: str
    run_dir: Path
    input_size: Optional[int] = None
    mean: Optional[tuple[float, ...]] = None
    std: Optional[tuple[float, ...]] = None
    device: str = "cpu"
    seed: int = 0
    data_dir: Optional[Path] = None
    train_size: Optional[int] = None
    test_size: Optional[int] = None
    force: bool = False


@dataclass(frozen=True)
class ImportResult:
    run: LoadedRun
    accuracy: EvalResult
    preprocess: Optional[Preprocess]
    weights_source: str


def import_run(config: ImportConfig, progress: Optional[ProgressCallback] = None) -> ImportResult:
    """Check, evaluate and write the run folder for `config` (see the module docstring)."""
    run_dir = Path(config.run_dir)
    if not config.force and any((run_dir / name).exists() for name in RUN_FILES):
        raise OutputExistsError(f"run folder {run_dir} already exists; pass --force to replace it")
    device = resolve_device(config.device)
    report(progress, "reading weights", 0, 1)
    state, record, metadata = _weights(config)
    report(progress, "reading weights", 1, 1)
    preprocess = _preprocess(config, metadata)
    splits = load_dataset(config.data, seed=config.seed, data_dir=config.data_dir,
                          image_size=preprocess.input_size if preprocess else config.input_size,
                          train_size=config.train_size, test_size=config.test_size, preprocess=preprocess)
    info = splits.info
    head = head_classes(config.model, state, info.input_shape)
    if head is not None and head != info.num_classes:
        raise InputError(f"the weights' head has {head} classes but {config.data} has {info.num_classes} "
                         f"({', '.join(info.class_names[:5])}{', ...' if info.num_classes > 5 else ''}); "
                         "give data with the classes the model was trained on")
    model = build_model(config.model, info.num_classes, info.input_shape)
    check_state_dict(model, state, config.weights, config.model,
                     hint="check that --model names the architecture these weights were trained with")
    model.load_state_dict(state)
    model.to(device).eval()
    report(progress, "evaluating the imported model", 0, 1)
    accuracy = evaluate(model, splits.test)
    report(progress, "evaluating the imported model", 1, 1)
    model.cpu()
    spec = _spec(config, run_dir, splits, preprocess, record)
    _write_run(run_dir, spec, model, accuracy, len(splits.train), config.force)
    return ImportResult(load_run(run_dir), accuracy, preprocess, record["source"])


def head_classes(model_spec: str, state: dict[str, torch.Tensor], input_shape) -> Optional[int]:
    """The classifier's output size in `state`, found by building the architecture with a probe
    class count and reading the weights at the keys that carry it; None when it cannot tell."""
    try:
        probe = build_model(model_spec, _PROBE_CLASSES, input_shape)
    except InputError:
        raise
    except Exception:  # a factory that cannot take the probe size: the key check will speak
        return None
    keys = [key for key, tensor in probe.state_dict().items() if tensor.dim() and tensor.shape[0] == _PROBE_CLASSES]
    sizes = {int(state[key].shape[0]) for key in keys if key in state and state[key].dim()}
    return sizes.pop() if len(sizes) == 1 else None


def _weights(config: ImportConfig) -> tuple[dict[str, torch.Tensor], dict[str, Any], Optional[Preprocess]]:
    """The state_dict, its record for run.json, and the preprocessing its source documents."""
    path = Path(config.weights).expanduser()
    if path.exists() or path.suffix or "/" in config.weights:
        loaded = read_weights(path)
        record = {"weights": str(path.resolve()), "format": loaded.format, "found_under": loaded.source,
                  "sha256": sha256_file(path), "source": str(path)}
        return loaded.state, record, None
    if not config.model.startswith("tv:"):
        raise InputError(f"weights file {config.weights} not found; named weights ({config.weights}) exist "
                         "only for torchvision models (tv:NAME); pass a .pt, .pth or .safetensors file")
    from edgeprune.training.models.zoo import torchvision_preprocess, torchvision_weights

    weights = torchvision_weights(config.model[len("tv:"):], config.weights)
    try:
        state = weights.get_state_dict(progress=False)
    except Exception as error:  # urllib, SSL, hash and disk errors all mean the same to a user
        raise InputError(f"cannot download torchvision weights {weights} ({type(error).__name__}: "
                         f"{str(error)[:120]}); on a machine without internet, download {weights.url} "
                         "elsewhere and pass the file with --weights") from None
    record = {"weights": str(weights), "format": "torchvision", "found_under": "state_dict",
              "url": weights.url, "source": str(weights)}
    return dict(state), record, torchvision_preprocess(weights)


def _preprocess(config: ImportConfig, metadata: Optional[Preprocess]) -> Optional[Preprocess]:
    """Flags over the weights' metadata over the architecture's; None for the built-in data sets,
    which normalise by their own statistics."""
    if not config.data.startswith("folder:"):
        if config.mean is not None or config.std is not None:
            raise InputError(f"--mean/--std apply to image folders; {config.data} normalises by its own statistics")
        return None
    base = metadata or _architecture_preprocess(config.model)
    if base is None:
        base = Preprocess.for_size(config.input_size or (32 if config.model in BUILTIN_MODELS else 224))
    return base.with_overrides(config.input_size, config.mean, config.std)


def _architecture_preprocess(model_spec: str) -> Optional[Preprocess]:
    """What the architecture's published weights expect (torchvision's DEFAULT, timm's
    pretrained config): the usual choice for a model fine-tuned from them."""
    from edgeprune.training.models import zoo

    if model_spec.startswith("timm:"):
        return zoo.timm_preprocess(model_spec[len("timm:"):])
    if model_spec.startswith("tv:"):
        try:
            weights = zoo.torchvision_weights(model_spec[len("tv:"):], "DEFAULT")
        except InputError:
            return None
        return zoo.torchvision_preprocess(weights)
    return None


def _spec(config: ImportConfig, run_dir: Path, splits: DataSplits, preprocess: Optional[Preprocess],
          record: dict[str, Any]) -> RunSpec:
    info = splits.info
    return RunSpec(
        name=run_dir.name, model=config.model, data=config.data, num_classes=info.num_classes,
        class_names=tuple(info.class_names), input_shape=tuple(info.input_shape), mean=tuple(info.mean),
        std=tuple(info.std), seed=config.seed, train={}, versions=library_versions(),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        data_dir=str(Path(config.data_dir).resolve()) if config.data_dir is not None else None,
        train_size=config.train_size, test_size=config.test_size,
        preprocess=preprocess.to_dict() if preprocess else None,
        imported={key: value for key, value in record.items() if key != "source"},
    )


def _write_run(run_dir: Path, spec: RunSpec, model: nn.Module, accuracy: EvalResult, train_n: int,
               force: bool) -> None:
    """Write the three files into a temporary sibling folder, then rename it over `run_dir`."""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{run_dir.name}.", dir=run_dir.parent))
    try:
        buffer = io.BytesIO()
        torch.save(model.state_dict(), buffer)
        write_bytes_atomic(work / DENSE_WEIGHTS, buffer.getvalue())
        write_json_atomic(work / METRICS_JSON, {
            "schema_version": SCHEMA_VERSION,
            "dense": {"test_accuracy": accuracy.accuracy, "test_loss": accuracy.loss, "test_n": accuracy.n,
                      "train_n": train_n, "params": sum(p.numel() for p in model.parameters()),
                      "train_seconds": None, "history": [], "imported": True},
        })
        write_json_atomic(work / RUN_JSON, spec.to_dict())
        move_into_place(work, run_dir, force)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
