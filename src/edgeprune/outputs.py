"""A model's output as a flat list of tensors: classifiers return one, detectors and feature
pyramids return dicts, lists or tuples. Shrink checks and ONNX parity compare these lists."""
from __future__ import annotations

from typing import Any


def output_tensors(output: Any) -> list:
    """The tensors of a model output (a tensor, or dicts, lists and tuples of them), in order."""
    import torch

    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        return [t for key in output for t in output_tensors(output[key])]
    if isinstance(output, (list, tuple)):
        return [t for item in output for t in output_tensors(item)]
    return []
