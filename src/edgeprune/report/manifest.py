"""manifest.json of an export: every figure the report, the gate and a bundle rely on.

Figures are copied from what the stages measured; nothing here computes a verdict (that is
`report.rules`). The `files` section holds the sha256 of every file in the folder.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from edgeprune.measure.environment import environment, library_versions
from edgeprune.fileio import sha256_file, write_json_atomic

MANIFEST_SCHEMA_VERSION = 1
LATENCY_KEYS = ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "cv", "round_median_cv", "n", "throughput_items_per_s")


def _latency(bench: Optional[dict], model: str, batch: int) -> Optional[dict]:
    if not bench:
        return None
    for entry in bench.get("entries", []):
        if entry["model"] == model and entry["batch"] == batch:
            figures = {key.removesuffix("_ms"): entry.get(key) for key in LATENCY_KEYS}
            figures["batch"] = batch
            return figures
    return None


def _memory(bench: Optional[dict], model: str) -> Optional[float]:
    for entry in (bench or {}).get("entries", []):
        if entry["model"] == model:
            return entry.get("model_memory_mb") if entry.get("model_memory_mb") is not None else entry.get("peak_rss_mb")
    return None


def _speedup(bench: Optional[dict], batch: int, candidate: str = "pruned") -> tuple[Optional[float], Optional[list]]:
    for comparison in (bench or {}).get("comparisons", []):
        if comparison["batch"] == batch and comparison["baseline"] == "dense" and comparison["candidate"] == candidate:
            return comparison["speedup"], list(comparison["speedup_ci95"])
    return None, None


def build_manifest(*, name, run, config, target, graph, pruned, accuracy_dense, accuracy_pruned, parity,
                   engines, bench, finetune, work_dir: Path, skipped, learned_gates, trained_demo,
                   seconds) -> dict[str, Any]:
    """Assemble the manifest from the stages' results (see docs/architecture.md for the layout)."""
    plan = pruned.plan
    spec = run.spec
    batch = min(config.bench.batch_sizes)
    speedup, speedup_ci = _speedup(bench, batch)
    layers = []
    modules = dict(pruned.model.named_modules())
    for module_name, module in run.model.named_modules():
        out_before = getattr(module, "out_channels", getattr(module, "out_features", None))
        if out_before is None or module_name not in modules:
            continue
        shrunk = modules[module_name]
        layers.append({
            "module": module_name,
            "out_channels_before": int(out_before),
            "out_channels_after": int(getattr(shrunk, "out_channels", getattr(shrunk, "out_features", 0))),
        })
    return {
        "schema_version": MANIFEST_SCHEMA_VERSION,
        "name": name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": {"spec": spec.model, "data": spec.data, "run": str(run.path)},
        "input": {
            "shape": list(spec.input_shape), "dtype": "float32", "layout": "NCHW",
            "mean": list(spec.mean), "std": list(spec.std), "class_names": list(spec.class_names),
            "name": "input", "output": "logits",
        },
        "num_classes": spec.num_classes,
        "chance_accuracy": 1.0 / spec.num_classes,
        "keep_requested": plan.keep_requested,
        "keep_achieved": plan.keep_achieved,
        "budget": plan.budget,
        "keep_note": plan.note,
        "params_before": plan.params_before,
        "params_after": plan.params_after,
        "flops_before": plan.flops_before,
        "flops_after": plan.flops_after,
        "accuracy_before": accuracy_dense,
        "accuracy_after": accuracy_pruned,
        "accuracy_drop": accuracy_dense - accuracy_pruned,
        "plan": {
            "criterion": plan.criterion, "round_to": plan.round_to, "min_channels": plan.min_channels,
            "ignore": list(plan.ignore), "learned_gates_now": learned_gates,
            "gate_config": config.gate.to_dict() if plan.criterion == "gate" else None,
            "groups": [
                {"id": g.id, "name": g.name, "channels_before": g.channels_before, "channels_after": g.channels_after}
                for g in plan.groups
            ],
            "frozen": [f.to_dict() for f in graph.frozen],
        },
        "layers": layers,
        "finetune": finetune,
        "shrink_check": {
            "max_abs_diff": pruned.shrink_max_diff, "tolerance": pruned.shrink_tolerance,
            "passed": pruned.shrink_max_diff <= pruned.shrink_tolerance,
        },
        "onnx_parity": parity,
        "engines": engines,
        "latency_ms": {
            "dense": _latency(bench, "dense", batch),
            "pruned": _latency(bench, "pruned", batch),
        },
        "speedup": speedup,
        "speedup_ci95": speedup_ci,
        "memory_mb": {"dense": _memory(bench, "dense"), "pruned": _memory(bench, "pruned")},
        "size_bytes": {
            "dense_onnx": (work_dir / "dense.onnx").stat().st_size,
            "pruned_onnx": (work_dir / "model.onnx").stat().st_size,
        },
        "target": target.to_dict(),
        "skipped": list(skipped),
        "trained_demo_now": trained_demo,
        "seconds": seconds,
        "environment": environment(threads=target.intra_op_threads or None),
        "versions": library_versions(),
    }


def record_files(export_dir: Path) -> dict[str, Any]:
    """Add the sha256 of every file (except manifest.json itself) to the manifest and rewrite it."""
    export_dir = Path(export_dir)
    manifest_path = export_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"] = {
        str(path.relative_to(export_dir)): sha256_file(path)
        for path in sorted(export_dir.rglob("*"))
        if path.is_file() and path.name != "manifest.json" and not path.name.startswith(".")
    }
    write_json_atomic(manifest_path, manifest)
    return manifest
