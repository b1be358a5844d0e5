"""The one reader of manifest.json: typed access to a document, every error naming the file and
the key, accuracies refused unless they are fractions, version 1 files upgraded."""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Optional

from edgeprune.onnx_export.exporter import ParityResult
from edgeprune.report.manifest import (
    READABLE_SCHEMA_VERSIONS,
    EngineRecord,
    InputSpec,
    LatencyRecord,
    LayerChange,
    Manifest,
    ManifestError,
    ShrinkCheck,
    SpeedupRecord,
)


def manifest_from_dict(data: Mapping[str, Any], source: str) -> Manifest:
    """`Manifest.from_dict`: a document of any readable version as the typed record."""
    version = data.get("schema_version")
    if version not in READABLE_SCHEMA_VERSIONS:
        raise ManifestError(f"{source} has schema_version {version!r}; this edgeprune reads "
                            f"{', '.join(map(str, READABLE_SCHEMA_VERSIONS))}. Upgrade edgeprune or re-export.")
    reader = _Reader(data, source)
    if version == 1:
        latency, speedups = reader.v1_latency()
    else:
        latency = tuple(reader.record(LatencyRecord, r, f"latency[{i}]")
                        for i, r in enumerate(reader.list("latency")))
        speedups = tuple(reader.speedup(s, i) for i, s in enumerate(reader.list("speedups")))
    return Manifest(
        name=str(data.get("name") or "export"),
        created=reader.text("created"),
        model=reader.mapping("model"),
        input=reader.input_spec(),
        num_classes=reader.integer("num_classes"),
        keep_requested=reader.fraction("keep_requested"),
        keep_achieved=reader.fraction("keep_achieved"),
        budget=str(data.get("budget") or "params"),
        keep_note=reader.text("keep_note"),
        params_before=reader.integer("params_before"),
        params_after=reader.integer("params_after"),
        flops_before=reader.integer("flops_before"),
        flops_after=reader.integer("flops_after"),
        accuracy_before=reader.fraction("accuracy_before"),
        accuracy_after=reader.fraction("accuracy_after"),
        plan=reader.mapping("plan"),
        layers=tuple(reader.record(LayerChange, r, f"layers[{i}]") for i, r in enumerate(reader.list("layers"))),
        finetune=reader.mapping("finetune"),
        shrink_check=reader.optional_record(ShrinkCheck, "shrink_check"),
        onnx_parity=reader.parity(data.get("onnx_parity"), "onnx_parity"),
        engines=tuple(reader.engine(e, i) for i, e in enumerate(reader.list("engines"))),
        latency=latency,
        speedups=speedups,
        size_bytes={k: int(v) for k, v in reader.mapping("size_bytes").items() if _is_number(v)},
        target=reader.mapping("target"),
        skipped=tuple(str(s) for s in reader.list("skipped")),
        trained_demo_now=bool(data.get("trained_demo_now", False)),
        seconds=reader.number("seconds"),
        environment=reader.mapping("environment"),
        versions=reader.mapping("versions"),
        files={str(k): str(v) for k, v in reader.mapping("files").items()},
        latency_budget=reader.mapping("latency_budget"),
    )



def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class _Reader:
    """Typed access to one manifest document; every error names the file and the key."""

    def __init__(self, data: Mapping[str, Any], source: str) -> None:
        self.data, self.source = data, source

    def fail(self, key: str, why: str) -> ManifestError:
        return ManifestError(f"{self.source}: {key} {why}; re-run `edgeprune export` to rewrite it")

    def number(self, key: str, node: Optional[Mapping[str, Any]] = None, label: Optional[str] = None) -> Optional[float]:
        value = (self.data if node is None else node).get(key)
        if value is None:
            return None
        if not _is_number(value):
            raise self.fail(label or key, f"must be a finite number, got {value!r}")
        return float(value)

    def integer(self, key: str) -> Optional[int]:
        value = self.number(key)
        return None if value is None else int(value)

    def fraction(self, key: str, node: Optional[Mapping[str, Any]] = None, label: Optional[str] = None) -> Optional[float]:
        value = self.number(key, node, label)
        if value is not None and not 0.0 <= value <= 1.0:
            raise self.fail(label or key, f"must be a fraction in [0, 1] (accuracies are not percentages), got {value}")
        return value

    def text(self, key: str) -> Optional[str]:
        value = self.data.get(key)
        return None if value is None else str(value)

    def mapping(self, key: str) -> dict[str, Any]:
        value = self.data.get(key)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise self.fail(key, "must be an object")
        return dict(value)

    def list(self, key: str) -> list:
        value = self.data.get(key)
        if value is None:
            return []
        if not isinstance(value, (list, tuple)):
            raise self.fail(key, "must be a list")
        return list(value)

    def record(self, kind: type, value: Any, label: str):
        if not isinstance(value, Mapping):
            raise self.fail(label, "must be an object")
        names = {f.name for f in dataclasses.fields(kind)}
        try:
            return kind(**{k: v for k, v in value.items() if k in names})
        except TypeError as error:
            raise self.fail(label, f"is incomplete ({error})") from None

    def optional_record(self, kind: type, key: str):
        value = self.data.get(key)
        return None if value is None else self.record(kind, value, key)

    def parity(self, value: Any, label: str) -> Optional[ParityResult]:
        if value is None:
            return None
        if not isinstance(value, Mapping):
            raise self.fail(label, "must be an object")
        return ParityResult(
            max_abs_err=self.number("max_abs_err", value, f"{label}.max_abs_err"),
            top1_agreement=self.fraction("top1_agreement", value, f"{label}.top1_agreement"),
            n_samples=int(value.get("n_samples") or 0),
            tolerance=self.number("tolerance", value, f"{label}.tolerance"),
            passed=value.get("passed"),
        )

    def engine(self, value: Any, index: int) -> EngineRecord:
        label = f"engines[{index}]"
        if not isinstance(value, Mapping):
            raise self.fail(label, "must be an object")
        return EngineRecord(
            name=str(value.get("name", "engine")), path=str(value.get("path", "")),
            precision=str(value.get("precision", "?")), target=value.get("target"),
            build_info=dict(value.get("build_info") or {}),
            accuracy=self.fraction("accuracy", value, f"{label}.accuracy"),
            parity=self.parity(value.get("parity"), f"{label}.parity"),
            reference_accuracy=self.fraction("reference_accuracy", value, f"{label}.reference_accuracy"),
            accuracy_samples=None if value.get("accuracy_samples") is None else int(value["accuracy_samples"]),
        )

    def speedup(self, value: Any, index: int) -> SpeedupRecord:
        record = self.record(SpeedupRecord, value, f"speedups[{index}]")
        ci = tuple(float(x) for x in record.ci95) if record.ci95 else None
        return dataclasses.replace(record, ci95=ci)

    def input_spec(self) -> Optional[InputSpec]:
        spec = self.data.get("input")
        if not isinstance(spec, Mapping) or spec.get("shape") is None:
            return None
        names = spec.get("class_names")
        return InputSpec(
            shape=tuple(int(d) for d in spec["shape"]), dtype=str(spec.get("dtype") or "float32"),
            layout=str(spec.get("layout") or "NCHW"),
            mean=None if spec.get("mean") is None else tuple(float(x) for x in spec["mean"]),
            std=None if spec.get("std") is None else tuple(float(x) for x in spec["std"]),
            class_names=None if names is None else tuple(str(n) for n in names),
            name=str(spec.get("name") or "input"), output=str(spec.get("output") or "logits"),
        )

    def v1_latency(self) -> tuple[tuple[LatencyRecord, ...], tuple[SpeedupRecord, ...]]:
        """Version 1 kept dense and pruned at one batch under latency_ms, speedup and memory_mb."""
        latency_ms, memory = self.mapping("latency_ms"), self.mapping("memory_mb")
        records = []
        for model in ("dense", "pruned"):
            figures = latency_ms.get(model)
            if not isinstance(figures, Mapping):
                continue
            label = f"latency_ms.{model}"
            n = self.number("n", figures, f"{label}.n")
            records.append(LatencyRecord(
                model=model, batch=int(figures.get("batch") or 1),
                p50_ms=self.number("p50", figures, f"{label}.p50"),
                p90_ms=self.number("p90", figures, f"{label}.p90"),
                p99_ms=self.number("p99", figures, f"{label}.p99"),
                mean_ms=self.number("mean", figures, f"{label}.mean"),
                cv=self.number("cv", figures, f"{label}.cv"),
                round_median_cv=self.number("round_median_cv", figures, f"{label}.round_median_cv"),
                n=None if n is None else int(n),
                throughput_items_per_s=self.number("throughput_items_per_s", figures),
                memory_mb=self.number(model, memory, f"memory_mb.{model}"),
            ))
        speedups = []
        value = self.number("speedup")
        if value is not None:
            ci = self.data.get("speedup_ci95")
            ci = tuple(float(x) for x in ci) if isinstance(ci, list) and len(ci) == 2 and all(map(_is_number, ci)) else None
            batch = records[0].batch if records else 1
            speedups.append(SpeedupRecord(candidate="pruned", batch=batch, speedup=value, ci95=ci))
        return tuple(records), tuple(speedups)
