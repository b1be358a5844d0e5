"""Fabricates realistic export folders (tiny real ONNX model, manifest.json, bench.json) for tests.

`healthy_manifest()` is an export every rule passes; `changed(manifest, {...})` deep-merges a
change into a copy, with `DROP` deleting a key, so each test states only what it breaks.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

DROP = object()

NUM_CLASSES = 10
INPUT_SHAPE = [3, 8, 8]
CLASS_NAMES = [f"class{i}" for i in range(NUM_CLASSES)]

LAYERS = [
    ("conv1", 16, 8),
    ("layer1.0.conv1", 16, 8),
    ("layer1.0.conv2", 16, 8),
    ("layer2.0.conv1", 32, 16),
    ("layer2.0.conv2", 32, 16),
    ("layer3.0.conv1", 64, 32),
    ("layer3.0.conv2", 64, 32),
    ("fc", 10, 10),
]


def healthy_manifest() -> dict:
    """A manifest of an export that passes every rule: trained, on budget, faster, in parity."""
    return {
        "schema_version": 1,
        "name": "resnet20-keep0.50",
        "created": "2026-05-09T07:35:25+00:00",
        "model": {"spec": "resnet20", "data": "synthetic"},
        "input": {
            "shape": list(INPUT_SHAPE),
            "dtype": "float32",
            "layout": "NCHW",
            "mean": [0.5, 0.5, 0.5],
            "std": [0.25, 0.25, 0.25],
            "class_names": list(CLASS_NAMES),
        },
        "num_classes": NUM_CLASSES,
        "chance_accuracy": 1.0 / NUM_CLASSES,
        "keep_requested": 0.5,
        "keep_achieved": 0.498,
        "budget": "params",
        "keep_note": None,
        "params_before": 272474,
        "params_after": 135692,
        "flops_before": 40_810_000,
        "flops_after": 20_950_000,
        "accuracy_before": 0.912,
        "accuracy_after": 0.905,
        "accuracy_drop": 0.007,
        "plan": {
            "criterion": "gates",
            "round_to": 8,
            "min_channels": 8,
            "groups": [
                {"id": i, "name": name, "channels_before": b, "channels_after": a}
                for i, (name, b, a) in enumerate(LAYERS[:-1])
            ],
        },
        "layers": [
            {"module": name, "out_channels_before": b, "out_channels_after": a}
            for name, b, a in LAYERS
        ],
        "shrink_check": {"max_abs_diff": 3.1e-7, "tolerance": 1e-5, "passed": True},
        "onnx_parity": {
            "max_abs_err": 2.4e-6, "top1_agreement": 1.0, "n_samples": 256,
            "tolerance": 1e-4, "passed": True,
        },
        "engines": [{
            "name": "onnxruntime-cpu", "path": "model.onnx", "precision": "fp32",
            "build_info": {"provider": "CPUExecutionProvider"},
            "parity": {"max_abs_err": 0.0, "top1_agreement": 1.0, "n_samples": 256,
                       "tolerance": 1e-4, "passed": True},
            "accuracy": 0.905,
        }],
        "latency_ms": {
            "dense": {"p50": 2.01, "p90": 2.10, "p99": 2.31, "mean": 2.03, "cv": 0.03, "n": 700},
            "pruned": {"p50": 1.20, "p90": 1.26, "p99": 1.40, "mean": 1.21, "cv": 0.035, "n": 700},
        },
        "speedup": 1.675,
        "speedup_ci95": [1.61, 1.73],
        "memory_mb": {"dense": 41.2, "pruned": 33.9},
        "size_bytes": {"dense_onnx": 1_093_000, "pruned_onnx": 548_000},
        "target": {"name": "cpu-ort", "runtime": "onnxruntime", "device": "cpu",
                   "precision": "fp32", "threads": 1, "round_to": 8},
        "environment": {"cpu": "test CPU", "cores": 2, "threads": 1, "os": "Linux"},
        "versions": {"edgeprune": "0.1.0", "torch": "2.15.0", "onnxruntime": "1.32.0"},
        "files": {},
    }


def changed(manifest: Mapping[str, Any], changes: Mapping[str, Any]) -> dict:
    """A deep copy of `manifest` with `changes` merged in; a value of DROP removes the key."""
    result = copy.deepcopy(dict(manifest))
    for key, value in changes.items():
        if value is DROP:
            result.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
            result[key] = changed(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def bench_doc(seed: int = 0, dense_ms: float = 2.0, pruned_ms: float = 1.2, cv: float = 0.03,
              rounds: int = 7, per_round: int = 100) -> dict:
    """A bench.json shaped like `BenchResult.to_dict()`: raw samples grouped by round."""
    rng = np.random.default_rng(seed)

    def entry(name: str, center: float) -> dict:
        samples = rng.normal(center, center * cv, size=(rounds, per_round)).clip(min=center * 0.5)
        flat = samples.ravel()
        return {"model": name, "batch": 1, "runner": "onnxruntime", "device": "cpu",
                "n": int(flat.size), "rounds": rounds, "iterations_per_round": per_round,
                "p50_ms": float(np.median(flat)), "p99_ms": float(np.percentile(flat, 99)),
                "cv": float(flat.std() / flat.mean()),
                "samples_ms": [[round(float(x), 5) for x in r] for r in samples]}

    return {"schema_version": 1, "target": "cpu-x86",
            "config": {"warmup_s": 0.2, "min_iterations": 700, "min_seconds": 1.0,
                       "rounds": rounds, "batch_sizes": [1]},
            "accuracy_pct": {"dense": 91.2, "pruned": 90.5},
            "entries": [entry("dense", dense_ms), entry("pruned", pruned_ms)],
            "comparisons": [{"batch": 1, "baseline": "dense", "candidate": "pruned",
                             "speedup": dense_ms / pruned_ms,
                             "speedup_ci95": [dense_ms / pruned_ms * 0.97,
                                              dense_ms / pruned_ms * 1.03], "rounds": rounds}]}


def write_onnx_classifier(path: Path, num_classes: int = NUM_CLASSES,
                          input_shape: list[int] = INPUT_SHAPE, seed: int = 0) -> Path:
    """A real, tiny ONNX classifier: global average pool, flatten, linear layer."""
    rng = np.random.default_rng(seed)
    channels = input_shape[0]
    weight = numpy_helper.from_array(rng.normal(size=(num_classes, channels)).astype(np.float32), "W")
    bias = numpy_helper.from_array(rng.normal(size=(num_classes,)).astype(np.float32), "B")
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
            helper.make_node("Gemm", ["flat", "W", "B"], ["logits"], transB=1),
        ],
        "tiny_classifier",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", *input_shape])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", num_classes])],
        initializer=[weight, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    return path


def make_export(root: Path, changes: Optional[Mapping[str, Any]] = None, *,
                bench: Optional[dict] = "default", name: str = "resnet20-keep0.50") -> Path:
    """Write an export folder under `root`: model.onnx, dense.onnx, plan.json, manifest, bench."""
    export_dir = Path(root) / name
    export_dir.mkdir(parents=True, exist_ok=True)
    write_onnx_classifier(export_dir / "model.onnx", seed=1)
    write_onnx_classifier(export_dir / "dense.onnx", seed=2)
    manifest = changed(healthy_manifest(), changes or {})
    (export_dir / "plan.json").write_text(json.dumps(manifest.get("plan", {}), indent=2))
    (export_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    if bench == "default":
        bench = bench_doc()
    if bench is not None:
        (export_dir / "bench.json").write_text(json.dumps(bench))
    return export_dir
