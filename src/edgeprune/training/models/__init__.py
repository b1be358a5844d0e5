"""Models by spec: our CIFAR ResNets, any torchvision or timm classifier, or a user's factory.

`build_model` checks the new model once on a zero batch of `input_shape`, so a model that
cannot take the data's images or gives the wrong number of logits fails here, not mid-training.
"""
from __future__ import annotations

import importlib
from typing import Callable, Sequence

import torch
from torch import nn

from edgeprune.errors import InputError
from edgeprune.training.models.cifar_resnet import CifarResNet, resnet18, resnet20, resnet56
from edgeprune.training.models.zoo import timm_model, torchvision_model, torchvision_model_names

#: Built-in architectures: name -> factory(num_classes, in_channels).
BUILTIN_MODELS: dict[str, Callable[..., nn.Module]] = {
    "resnet20": resnet20,
    "resnet56": resnet56,
    "resnet18": resnet18,
}
MODEL_SPECS = (*BUILTIN_MODELS, "tv:NAME", "timm:NAME", "module:function")

__all__ = ["BUILTIN_MODELS", "MODEL_SPECS", "CifarResNet", "build_model", "torchvision_model_names"]


def build_model(spec: str, num_classes: int, input_shape: Sequence[int] = (3, 32, 32)) -> nn.Module:
    """A freshly initialised model for `spec` with `num_classes` outputs, in train mode."""
    if num_classes < 1:
        raise InputError(f"num_classes must be at least 1, got {num_classes}")
    input_shape = tuple(int(d) for d in input_shape)
    if spec in BUILTIN_MODELS:
        model = BUILTIN_MODELS[spec](num_classes=num_classes, in_channels=input_shape[0])
    elif spec.startswith("tv:"):
        model = torchvision_model(spec[len("tv:") :], num_classes, input_shape)
    elif spec.startswith("timm:"):
        model = timm_model(spec[len("timm:") :], num_classes, input_shape)
    elif ":" in spec:
        model = _user_model(spec, num_classes)
    else:
        raise InputError(f"unknown model {spec!r}; choose one of: {', '.join(MODEL_SPECS)}")
    _check_output(model, spec, num_classes, input_shape)
    return model


def _user_model(spec: str, num_classes: int) -> nn.Module:
    module_name, _, function_name = spec.rpartition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise InputError(f"cannot import {module_name!r} for model {spec!r} ({error}); is it on PYTHONPATH?") from None
    factory = getattr(module, function_name, None)
    if not callable(factory):
        raise InputError(f"{module_name!r} has no function {function_name!r}; give the model as module:function")
    model = factory(num_classes=num_classes)
    if not isinstance(model, nn.Module):
        raise InputError(f"{spec} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _check_output(model: nn.Module, spec: str, num_classes: int, input_shape: tuple[int, ...]) -> None:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(torch.zeros(1, *input_shape))
    except Exception as error:  # any failure here means the model cannot take this input
        raise InputError(f"model {spec} cannot run on input shape {input_shape}: {error}") from None
    finally:
        model.train(was_training)
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != (1, num_classes):
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise InputError(f"model {spec} returns {shape} for one image; expected logits of shape (1, {num_classes})")
