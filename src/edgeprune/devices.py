"""Where training and evaluation run: `--device auto|cpu|cuda[:N]`, and what CUDA turns on.

One rule for every stage that trains, scores or evaluates (gate learning, scoring, fine-tuning,
evaluation): the model sits on the device and every batch moves to the model's device. On CUDA
the training forward pass runs under autocast (bf16 where the GPU supports it, else fp16 with a
gradient scaler) in channels_last; on CPU nothing changes, so CPU results stay bit-reproducible.
The shrink check and the ONNX export always run on CPU copies.
"""
from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from edgeprune.errors import InputError

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"


def resolve_device(spec: str | torch.device | None) -> torch.device:
    """The torch device for `spec`; `--device cuda` without a visible GPU is a one-line error."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    spec = (spec or "cpu").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", spec)
    if match is None:
        raise InputError(f"unknown device {spec!r}; use {DEVICE_CHOICES}")
    if not torch.cuda.is_available():
        raise InputError(f"--device {spec}: no CUDA GPU is visible to torch here; use --device cpu "
                         "(or auto), or run on a machine with a GPU and a CUDA build of torch")
    index = int(match.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise InputError(f"--device {spec}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                         f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    return torch.device("cuda", index)


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); CPU for a model with neither."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


@dataclass(frozen=True)
class Precision:
    """What the training loop does on `device`: autocast dtype (None: full fp32) and memory format."""

    device: torch.device
    autocast_dtype: Optional[torch.dtype]
    channels_last: bool

    @classmethod
    def for_device(cls, device: torch.device) -> "Precision":
        if device.type != "cuda":
            return cls(device, None, False)
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return cls(device, dtype, True)

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def grad_scaler(self) -> Optional["torch.amp.GradScaler"]:
        """fp16 needs loss scaling to keep small gradients; bf16 and fp32 do not."""
        if self.autocast_dtype is torch.float16:
            return torch.amp.GradScaler(self.device.type)
        return None

    def batch(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, non_blocking=True)
        if self.channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    def prepare(self, model: nn.Module) -> nn.Module:
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        return model
