"""Installed versions of edgeprune and the libraries its figures depend on.

Read from package metadata, so asking costs no import (and no CUDA initialisation).
"""
from __future__ import annotations

from importlib import metadata
from typing import Optional

#: name shown -> distributions that provide it (the first installed one wins).
DISTRIBUTIONS: dict[str, tuple[str, ...]] = {
    "edgeprune": ("edgeprune",),
    "torch": ("torch",),
    "torchvision": ("torchvision",),
    "onnx": ("onnx",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "ort-nightly"),
    "tensorrt": ("tensorrt", "tensorrt-cu12", "tensorrt-cu11", "tensorrt_libs"),
    "executorch": ("executorch",),
    "openvino": ("openvino",),
    "numpy": ("numpy",),
}


def library_versions() -> dict[str, Optional[str]]:
    """{name: version or None when not installed} for every entry of `DISTRIBUTIONS`."""
    versions: dict[str, Optional[str]] = {}
    for name, candidates in DISTRIBUTIONS.items():
        versions[name] = None
        for dist in candidates:
            try:
                versions[name] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    return versions
