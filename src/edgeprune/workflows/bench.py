"""`edgeprune bench PATH`: benchmark an ONNX file, an export folder or a bundle on a target.

An export folder is read through its `Manifest` (input shape, accuracies); a bundle is verified
and extracted to a temporary folder first. The timing itself is `measure.bench`.
"""
from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Any, Optional

from edgeprune.errors import InputError
from edgeprune.measure.bench import benchmark_files, onnx_input_dims
from edgeprune.measure.results import BenchConfig, BenchResult
from edgeprune.progress import ProgressCallback
from edgeprune.report.manifest import MANIFEST_FILE, read_manifest

EXPORT_MODELS = (("dense", "dense.onnx"), ("pruned", "model.onnx"))


def benchmark_path(path: Path, target: Any = None, config: Optional[BenchConfig] = None,
                   progress: Optional[ProgressCallback] = None) -> BenchResult:
    """Benchmark an .onnx file, an export folder (dense vs pruned, interleaved) or a bundle
    (.tar.gz) with random-normal inputs of the model's input shape. `target` is a Target, a
    target name or path, or None for the default target."""
    path = Path(path)
    config = config or BenchConfig()
    if not path.exists():
        raise InputError(f"{path}: no such file or folder; pass an .onnx file, an export folder "
                         "or a bundle (.tar.gz)")
    if path.is_file() and path.name.endswith((".tar.gz", ".tgz")):
        from edgeprune.workflows.bundle import extract

        with tempfile.TemporaryDirectory(prefix="edgeprune-bench-") as tmp:
            folder = extract(path, Path(tmp))
            return _benchmark_folder(Path(folder), target, config, progress, source=path)
    if path.is_dir():
        return _benchmark_folder(path, target, config, progress, source=path)
    if path.suffix == ".onnx":
        shape = onnx_input_dims(path)[1:]
        return benchmark_files({path.stem: path}, shape, target, config, progress, {}, path)
    raise InputError(f"{path}: not an .onnx file, export folder or .tar.gz bundle")


def _benchmark_folder(folder: Path, target: Any, config: BenchConfig,
                      progress: Optional[ProgressCallback], source: Path) -> BenchResult:
    files = {name: folder / file for name, file in EXPORT_MODELS if (folder / file).is_file()}
    if not files:
        raise InputError(f"{folder}: no model.onnx or dense.onnx; is this an export folder?")
    manifest = read_manifest(folder) if (folder / MANIFEST_FILE).is_file() else None
    shape = manifest.input.shape if manifest is not None and manifest.input is not None else None
    if shape is None:
        shape = onnx_input_dims(next(iter(files.values())))[1:]
    accuracy = {}
    if manifest is not None:  # the gate speaks accuracy points; the manifest holds fractions
        for name, value in (("dense", manifest.accuracy_before), ("pruned", manifest.accuracy_after)):
            if name in files and value is not None:
                accuracy[name] = value * 100.0
    return benchmark_files(files, shape, target, config, progress, accuracy, source)


def benchmark_pair(baseline: Path, current: Path, target: Any, config: BenchConfig,
                   progress: Optional[ProgressCallback] = None) -> BenchResult:
    """The gate's paired mode: the deployable model of `baseline` and of `current` (each an
    .onnx file, an export folder or a bundle) measured interleaved in this one process, as the
    models "baseline" and "current"."""
    with contextlib.ExitStack() as stack:
        files, shapes = {}, {}
        for label, path in (("baseline", Path(baseline)), ("current", Path(current))):
            files[label], shapes[label] = _deployable(path, stack, label)
        if tuple(shapes["baseline"]) != tuple(shapes["current"]):
            raise InputError(f"the models take different inputs ({list(shapes['baseline'])} vs "
                             f"{list(shapes['current'])}); a paired gate compares one model's builds")
        return benchmark_files(files, shapes["current"], target, config, progress, {}, Path(current))


def _deployable(path: Path, stack: contextlib.ExitStack, label: str) -> tuple[Path, Any]:
    """(ONNX file, input shape without batch) of an .onnx file, export folder or bundle."""
    if not path.exists():
        raise InputError(f"{path}: no such file or folder for the {label} model; pass an .onnx "
                         "file, an export folder or a bundle (.tar.gz)")
    if path.is_file() and path.name.endswith((".tar.gz", ".tgz")):
        from edgeprune.workflows.bundle import extract

        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix=f"edgeprune-gate-{label}-"))
        path = Path(extract(path, Path(tmp)))
    if path.is_dir():
        onnx_file = path / "model.onnx"
        if not onnx_file.is_file():
            raise InputError(f"{path}: no model.onnx; is this an export folder?")
        manifest = read_manifest(path) if (path / MANIFEST_FILE).is_file() else None
        if manifest is not None and manifest.input is not None:
            return onnx_file, tuple(manifest.input.shape)
        return onnx_file, tuple(onnx_input_dims(onnx_file)[1:])
    if path.suffix == ".onnx":
        return path, tuple(onnx_input_dims(path)[1:])
    raise InputError(f"{path}: not an .onnx file, export folder or .tar.gz bundle")
