"""ONNX Runtime Mobile back end: the ``.ort`` format and the operator config of a reduced build.

A phone app ships a minimal ONNX Runtime built with ``--include_ops_by_config``; `build` runs
ONNX Runtime's own converter (``onnxruntime.tools.convert_onnx_models_to_ort``, the tool behind
``python -m onnxruntime.tools.convert_onnx_models_to_ort``) with fixed optimisations for ARM (no
x86-only NCHWc layout), which writes ``<model>.ort`` and ``<model>.required_operators.config``.
When the target names the config of a build the app already ships (`Target.operator_config`),
a model that needs an operator outside it is refused before anything is written. The ``.ort``
file runs here on the full onnxruntime (it loads ORT format), which gives its parity and latency.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from edgeprune.engines.base import Backend, EngineArtifact, ModelSource, Runner, RunnerLoader
from edgeprune.engines.onnxruntime import OnnxRuntimeRunner, _ort
from edgeprune.errors import BackendUnavailableError, InputError, UnsupportedModelError
from edgeprune.targets import Target

CONFIG_SUFFIX = ".required_operators.config"
#: The platform the .ort file is optimised for: phones are ARM.
TARGET_PLATFORM = "arm"

#: {domain: {opset: {op type}}}, as ONNX Runtime's reduced-build config parser returns it.
OperatorSet = dict[str, dict[int, set[str]]]


def _tools():
    try:
        from onnxruntime.tools import convert_onnx_models_to_ort, reduced_build_config_parser
    except ImportError as error:
        raise BackendUnavailableError(
            "onnxruntime's mobile tools (onnxruntime.tools) are missing: pip install onnxruntime"
        ) from error
    return convert_onnx_models_to_ort, reduced_build_config_parser


def read_operator_config(path: Path) -> OperatorSet:
    """The operators a required_operators.config lists, parsed by ONNX Runtime's own parser."""
    _, parser = _tools()
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no operator config at {path}: give the required_operators.config of the reduced build")
    try:
        required, _ = parser.parse_config(str(path))
    except (ValueError, RuntimeError) as error:
        raise InputError(f"{path} is not an ONNX Runtime operator config: {error}") from None
    return {domain: {int(opset): set(ops) for opset, ops in opsets.items()} for domain, opsets in required.items()}


def missing_operators(needed: OperatorSet, available: OperatorSet) -> list[str]:
    """``domain;opset;op`` for every operator `needed` lists that `available` does not (pure)."""
    return [
        f"{domain};{opset};{op}"
        for domain, opsets in sorted(needed.items())
        for opset, ops in sorted(opsets.items())
        for op in sorted(ops)
        if op not in available.get(domain, {}).get(opset, set())
    ]


def ort_path(source: ModelSource, out_dir: Optional[Path] = None) -> Path:
    name = f"{source.stem}.ort"
    return Path(out_dir) / name if out_dir is not None else source.beside(".ort")


def convert_to_ort(onnx_path: Path, out_dir: Path, operator_config: Optional[str] = None) -> dict:
    """``<model>.ort`` and ``<model>.required_operators.config`` in `out_dir`, written only when the
    conversion succeeded and (with `operator_config`) every operator is in the reduced build."""
    convert, _ = _tools()
    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    stem = onnx_path.name.removesuffix(".onnx")
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=f".{stem}.ort.") as tmp:
        staged = Path(tmp) / onnx_path.name
        shutil.copyfile(onnx_path, staged)  # the converter names its outputs after its input
        quiet = logging.getLogger("ort_format_model.utils")
        level, quiet.level = quiet.level, logging.WARNING
        try:  # the converter prints its progress; the library must not
            with contextlib.redirect_stdout(io.StringIO()):
                convert.convert_onnx_models_to_ort(
                    staged, output_dir=Path(tmp) / "out",
                    optimization_styles=[convert.OptimizationStyle.Fixed], target_platform=TARGET_PLATFORM)
        except Exception as error:  # the converter raises whatever ONNX Runtime raised
            raise UnsupportedModelError(
                f"ONNX Runtime cannot convert {onnx_path.name} to ORT format: {str(error).splitlines()[0]}"
            ) from None
        finally:
            quiet.level = level
        ort_file, config = Path(tmp) / "out" / f"{stem}.ort", Path(tmp) / "out" / f"{stem}{CONFIG_SUFFIX}"
        needed = read_operator_config(config)
        if operator_config is not None:
            missing = missing_operators(needed, read_operator_config(Path(operator_config)))
            if missing:
                raise UnsupportedModelError(
                    f"{onnx_path.name} needs {len(missing)} operator(s) the reduced ONNX Runtime build of "
                    f"{operator_config} lacks ({', '.join(missing)}); rebuild ONNX Runtime with this export's "
                    f"{stem}{CONFIG_SUFFIX}, or prune with --ignore on the layers that use them"
                )
        os.replace(ort_file, out_dir / ort_file.name)
        os.replace(config, out_dir / config.name)
    return {
        "runtime": "ort-mobile",
        "onnxruntime_version": _ort().__version__,
        "format": "ORT (flatbuffers), fixed optimisations, level all",
        "target_platform": TARGET_PLATFORM,
        "operator_config": f"{stem}{CONFIG_SUFFIX}",
        "operators": sorted(f"{d};{o};{op}" for d, opsets in needed.items() for o, ops in opsets.items() for op in ops),
        "reduced_build_checked_against": operator_config,
    }


class OrtMobileBackend(Backend):
    """ONNX -> ``.ort`` + operator config with ONNX Runtime's tools; run by ONNX Runtime on the CPU."""

    name = "ort-mobile"
    suffixes = (".ort",)

    @classmethod
    def serves(cls, target: Target) -> bool:
        return target.runtime == "ort-mobile"

    @classmethod
    def unavailable_reason(cls, target: Optional[Target] = None) -> Optional[str]:
        try:
            _tools()
        except BackendUnavailableError as error:
            return str(error)
        return None

    def build(
        self,
        source: ModelSource,
        out_dir: Path,
        target: Target,
        calibration: Optional[Iterable[np.ndarray]] = None,
        *,
        cache_dir: Optional[Path] = None,
    ) -> EngineArtifact:
        info = convert_to_ort(Path(source.onnx_path), Path(out_dir), target.operator_config)
        info.update({"intra_op_threads": target.intra_op_threads, "inter_op_threads": target.inter_op_threads})
        return EngineArtifact(name=self.name, path=ort_path(source, out_dir), precision="fp32",
                              target=target.name, build_info=info)

    def load(self, path: Path, target: Optional[Target] = None) -> Runner:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"no ORT format model at {path}")
        return OnnxRuntimeRunner(path, target, precision="fp32", name=self.name)

    def bench_loaders(
        self,
        source: ModelSource,
        target: Target,
        out_dir: Path,
        *,
        calibration: Optional[list[np.ndarray]] = None,
        cache_dir: Optional[Path] = None,
    ) -> dict[str, RunnerLoader]:
        """The ``.ort`` file beside the ONNX model, or one converted into `out_dir` now."""
        path = ort_path(source)
        if not path.is_file():
            path = self.build(source, Path(out_dir), target).path
        return {source.name: lambda: self.load(path, target)}
