"""Reading an export's figures: tolerant of absent fields, never filling them in.

manifest.json and bench.json come from other stages (and older versions); every reader here
returns None or an empty collection for a figure that is absent, null or not a finite number.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional

#: Targets whose kernels want channel counts in multiples of 8 (tensor cores, FP16/INT8).
GPU_DEVICES = ("cuda", "gpu", "jetson")
GPU_RUNTIMES = ("tensorrt", "trt", "cuda")


def number(mapping: Any, *path: str) -> Optional[float]:
    """The finite number at `path`, or None when any step is absent, null or not a number."""
    node = mapping
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    if isinstance(node, bool) or not isinstance(node, (int, float)):
        return None
    return float(node) if math.isfinite(node) else None


def accuracy_scale(manifest: Mapping[str, Any]) -> float:
    """1.0 when accuracies are fractions (the manifest contract), 100.0 when written in percent.

    Decided once per manifest: chance_accuracy x num_classes is 1 for fractions and 100 for
    percent; without both, any accuracy over 1 means percent.
    """
    chance, classes = number(manifest, "chance_accuracy"), number(manifest, "num_classes")
    if chance and classes:
        return 100.0 if chance * classes > 10.0 else 1.0
    keys = ("accuracy_before", "accuracy_after", "chance_accuracy")
    return 100.0 if any((number(manifest, k) or 0.0) > 1.0 for k in keys) else 1.0


def accuracy(manifest: Mapping[str, Any], key: str) -> Optional[float]:
    """An accuracy-like manifest figure as a fraction in [0, 1], or None when absent."""
    value = number(manifest, key)
    return None if value is None else value / accuracy_scale(manifest)


def chance_accuracy(manifest: Mapping[str, Any]) -> Optional[float]:
    """chance_accuracy as recorded, else 1/num_classes, else 1/len(class_names)."""
    chance = accuracy(manifest, "chance_accuracy")
    if chance is not None:
        return chance
    classes = number(manifest, "num_classes")
    if classes is None:
        names = (manifest.get("input") or {}).get("class_names")
        classes = float(len(names)) if isinstance(names, list) and names else None
    return 1.0 / classes if classes and classes >= 1 else None


def measured_speedup(manifest: Mapping[str, Any]) -> Optional[float]:
    """The recorded speedup (dense time / pruned time), else the ratio of the p50 latencies."""
    recorded = number(manifest, "speedup")
    if recorded is not None:
        return recorded
    dense = number(manifest, "latency_ms", "dense", "p50")
    pruned = number(manifest, "latency_ms", "pruned", "p50")
    return dense / pruned if dense and pruned else None


_SAMPLE_KEYS = ("samples_ms", "raw_ms", "rounds_ms", "latencies_ms", "times_ms", "samples", "rounds")
_LABEL_KEYS = ("name", "model", "label")
_GENERIC_KEYS = ("results", "entries", "models", "runs", "latency", "latency_ms", "raw", "data")


def latency_samples_ms(bench: Optional[Mapping[str, Any]]) -> dict[str, list[float]]:
    """Raw latency samples in bench.json by model label, flattened over rounds.

    Looks for lists of numbers under keys named like samples_ms / rounds_ms / samples / rounds
    anywhere in the file, labelled by the enclosing entry's name (or its key) and batch size.
    """
    series: dict[str, list[float]] = {}

    def walk(node: Any, label: str) -> None:
        if isinstance(node, list):
            for item in node:
                walk(item, label)
            return
        if not isinstance(node, Mapping):
            return
        named = next((str(node[k]) for k in _LABEL_KEYS if isinstance(node.get(k), str)), None)
        own = named or label
        batch = node.get("batch_size", node.get("batch"))
        if isinstance(batch, int) and not isinstance(batch, bool):
            own = f"{own} (batch {batch})"
        for key, value in node.items():
            if key in _SAMPLE_KEYS and isinstance(value, list):
                samples = _flatten_numbers(value)
                if samples:
                    series.setdefault(own or "samples", []).extend(samples)
            elif isinstance(value, (Mapping, list)):
                generic = named is not None or str(key) in _GENERIC_KEYS
                walk(value, own if generic else str(key))

    walk(bench or {}, "")
    return series


def _flatten_numbers(values: list) -> list[float]:
    flat: list[float] = []
    for value in values:
        if isinstance(value, list):
            flat.extend(_flatten_numbers(value))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            flat.append(float(value))
        else:
            return []
    return flat


def is_interval(value: Any) -> bool:
    return (isinstance(value, (list, tuple)) and len(value) == 2
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
                    for x in value))


def is_gpu_target(target: Any) -> bool:
    if not isinstance(target, Mapping):
        return False
    device = str(target.get("device") or "").lower()
    runtime = str(target.get("runtime") or "").lower()
    return any(d in device for d in GPU_DEVICES) or any(r in runtime for r in GPU_RUNTIMES)


def pruned_channel_counts(manifest: Mapping[str, Any]) -> list[tuple[str, int, int]]:
    """(name, channels before, channels after) per layer, else per plan group."""
    rows = []
    for layer in manifest.get("layers") or []:
        before = number(layer, "out_channels_before")
        after = number(layer, "out_channels_after")
        if before is not None and after is not None:
            rows.append((str(layer.get("module", "?")), int(before), int(after)))
    if rows:
        return rows
    for group in (manifest.get("plan") or {}).get("groups") or []:
        before, after = number(group, "channels_before"), number(group, "channels_after")
        if before is not None and after is not None:
            rows.append((str(group.get("name", group.get("id", "?"))), int(before), int(after)))
    return rows
