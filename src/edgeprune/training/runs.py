"""Run folders: a trained dense model and everything needed to rebuild it and its data.

`runs/NAME/` holds `run.json` (`RunSpec`), `dense.pt` (a state_dict, loaded with
`weights_only=True`) and `metrics.json`. Later stages start from `load_run` and rebuild the
same splits with `load_splits`, so they see exactly the test images the dense model was
measured on. Every failure to load says which file is wrong and what to run.
"""
from __future__ import annotations

import io
from dataclasses import MISSING, asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from torch import nn

from edgeprune.training.data import DataSplits, load_dataset
from edgeprune.errors import EdgepruneError, OutputExistsError, RunError
from edgeprune.fileio import read_json_object, write_bytes_atomic, write_json_atomic
from edgeprune.training.models import build_model
from edgeprune.progress import ProgressCallback
from edgeprune.training.train import TrainConfig, train_model
from edgeprune.versions import library_versions

SCHEMA_VERSION = 1
RUN_JSON = "run.json"
DENSE_WEIGHTS = "dense.pt"
METRICS_JSON = "metrics.json"
GATES_WEIGHTS = "gates.pt"
#: Files a run folder may hold; `--force` removes them all so no stale stage survives a retrain.
RUN_FILES = (RUN_JSON, DENSE_WEIGHTS, METRICS_JSON, GATES_WEIGHTS)
_RETRAIN_HINT = "retrain the run with `edgeprune train --force`"


@dataclass(frozen=True)
class RunSpec:
    """What was trained on what: enough to rebuild the model and the exact data splits."""

    name: str
    model: str
    data: str
    num_classes: int
    class_names: tuple[str, ...]
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    seed: int
    train: dict[str, Any]
    versions: dict[str, str]
    created: str
    data_dir: Optional[str] = None
    train_size: Optional[int] = None
    test_size: Optional[int] = None
    #: `Preprocess.to_dict()` for image folders (resize, crop, normalisation); None: the data's own.
    preprocess: Optional[dict[str, Any]] = None
    #: For a model trained elsewhere (`edgeprune import`): its weights file, format and checksum.
    imported: Optional[dict[str, Any]] = None
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RunSpec":
        """Raises `RunError` naming the problem when `data` is not a run spec this version reads."""
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise RunError(f"run.json has schema_version {version!r}, this edgeprune reads {SCHEMA_VERSION}")
        names = {f.name for f in fields(cls)}
        required = {f.name for f in fields(cls) if f.default is MISSING}
        missing = sorted(required - set(data))
        if missing:
            raise RunError(f"run.json lacks {', '.join(missing)}")
        values = {key: value for key, value in data.items() if key in names}
        for key in ("class_names", "input_shape", "mean", "std"):
            values[key] = tuple(values[key])
        return cls(**values)


@dataclass
class LoadedRun:
    """A run's spec, its dense model (eval mode, weights loaded) and its metrics."""

    spec: RunSpec
    model: nn.Module
    metrics: dict[str, Any]
    path: Path


def train_run(
    run_dir: Path,
    model_spec: str,
    data_spec: str,
    config: TrainConfig,
    *,
    data_dir: Optional[Path] = None,
    train_size: Optional[int] = None,
    test_size: Optional[int] = None,
    image_size: Optional[int] = None,
    force: bool = False,
    progress: Optional[ProgressCallback] = None,
) -> LoadedRun:
    """Train `model_spec` on `data_spec` and write the run folder; `config.seed` fixes the data
    split, the initial weights and the batch order. Refuses an existing run unless `force`."""
    run_dir = Path(run_dir)
    if not force and any((run_dir / name).exists() for name in RUN_FILES):
        raise OutputExistsError(f"run folder {run_dir} already exists; pass --force to retrain and overwrite it")
    splits = load_dataset(
        data_spec,
        seed=config.seed,
        data_dir=data_dir,
        image_size=image_size,
        train_size=train_size,
        test_size=test_size,
    )
    info = splits.info
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = build_model(model_spec, info.num_classes, info.input_shape)
    result = train_model(model, splits, config, progress=progress, label=f"train {run_dir.name}")
    spec = RunSpec(
        name=run_dir.name,
        model=model_spec,
        data=data_spec,
        num_classes=info.num_classes,
        class_names=tuple(info.class_names),
        input_shape=tuple(info.input_shape),
        mean=tuple(info.mean),
        std=tuple(info.std),
        seed=config.seed,
        train=config.to_dict(),
        versions=library_versions(),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        data_dir=str(Path(data_dir).resolve()) if data_dir is not None else None,
        train_size=train_size,
        test_size=test_size,
    )
    metrics = {
        "schema_version": SCHEMA_VERSION,
        "dense": {
            "test_accuracy": result.test.accuracy,
            "test_loss": result.test.loss,
            "test_n": result.test.n,
            "train_n": len(splits.train),
            "params": sum(p.numel() for p in model.parameters()),
            "train_seconds": result.train_seconds,
            "history": [epoch.to_dict() for epoch in result.history],
        },
    }
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    write_bytes_atomic(run_dir / DENSE_WEIGHTS, buffer.getvalue())
    write_json_atomic(run_dir / METRICS_JSON, metrics)
    write_json_atomic(run_dir / RUN_JSON, spec.to_dict())
    model.eval()
    return LoadedRun(spec=spec, model=model, metrics=metrics, path=run_dir)


def load_run(run_dir: Path) -> LoadedRun:
    """Read a run folder back; raises `RunError` with one line saying what is wrong and what to do."""
    run_dir = Path(run_dir)
    retrain = f"retrain with `edgeprune train --run {run_dir} --force`"
    if not run_dir.is_dir():
        raise RunError(f"run folder {run_dir} not found; run `edgeprune train --run {run_dir}` first")
    spec = _read_spec(run_dir / RUN_JSON, retrain)
    try:
        model = build_model(spec.model, spec.num_classes, spec.input_shape)
    except EdgepruneError as error:
        raise RunError(f"{run_dir / RUN_JSON}: cannot rebuild model {spec.model!r}: {error}") from None
    state = _read_state_dict(run_dir / DENSE_WEIGHTS, retrain)
    check_state_dict(model, state, f"{run_dir / DENSE_WEIGHTS}", spec.model)
    model.load_state_dict(state)
    model.eval()
    return LoadedRun(spec=spec, model=model, metrics=_read_metrics(run_dir / METRICS_JSON, retrain), path=run_dir)


def load_splits(spec: RunSpec) -> DataSplits:
    """The run's train and test splits, exactly as it was trained and measured on."""
    from edgeprune.training.data.preprocess import Preprocess

    splits = load_dataset(
        spec.data,
        seed=spec.seed,
        data_dir=Path(spec.data_dir) if spec.data_dir else None,
        image_size=spec.input_shape[-1],
        train_size=spec.train_size,
        test_size=spec.test_size,
        preprocess=Preprocess.from_dict(spec.preprocess) if spec.preprocess else None,
    )
    if tuple(splits.info.class_names) != tuple(spec.class_names):
        raise RunError(
            f"data {spec.data!r} now has classes {', '.join(splits.info.class_names)}, but run {spec.name!r} "
            f"was trained on {', '.join(spec.class_names)}; restore the data or retrain"
        )
    return splits


def check_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str, model_name: str,
                     hint: str = _RETRAIN_HINT) -> None:
    """Raise `RunError` naming the first missing and the first unexpected key, or the first key
    of the wrong shape, so a checkpoint of another architecture is recognisable at a glance."""
    expected = model.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s), first {missing[0]!r}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), first {unexpected[0]!r}")
        raise RunError(f"{source} does not match model {model_name}: {'; '.join(parts)}; {hint}")
    for key, tensor in expected.items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise RunError(
                f"{source} does not match model {model_name}: {key!r} has shape {tuple(state[key].shape)} "
                f"in the checkpoint but {tuple(tensor.shape)} in the model; {hint}"
            )


def _read_spec(path: Path, retrain: str) -> RunSpec:
    if not path.is_file():
        raise RunError(f"{path} is missing, so the run is incomplete; {retrain}")
    data = read_json_object(path, RunError, retrain)
    try:
        return RunSpec.from_dict(data)
    except RunError as error:
        raise RunError(f"{path}: {error}; {retrain}") from None
    except (TypeError, ValueError) as error:
        raise RunError(f"{path} has a malformed field ({error}); {retrain}") from None


def _read_state_dict(path: Path, retrain: str) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise RunError(f"{path} is missing; {retrain}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a bad file (pickle, zip, EOF)
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise RunError(f"{path} is not a readable torch checkpoint ({reason}); {retrain}") from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RunError(f"{path} does not hold a state_dict (a mapping of names to tensors); {retrain}")
    return dict(state)


def _read_metrics(path: Path, retrain: str) -> dict[str, Any]:
    return read_json_object(path, RunError, retrain)
