"""The field's model zoos by name: torchvision (`tv:NAME`) and timm (`timm:NAME`, an optional extra).

Both build without weights (edgeprune loads the user's own); each also says how its
pretrained weights expect images to be prepared, so an imported model is evaluated the way it
was trained. Unknown names get the nearest names as a suggestion, not a list of hundreds.
"""
from __future__ import annotations

import difflib
from typing import Optional

from torch import nn

from edgeprune.errors import InputError
from edgeprune.training.data.preprocess import Preprocess


def nearest_names(name: str, names: list[str], count: int = 3) -> str:
    close = difflib.get_close_matches(name, names, n=count, cutoff=0.5)
    return f"did you mean {', '.join(close)}?" if close else f"see the {len(names)} names it knows"


def torchvision_model_names() -> list[str]:
    """Classification models torchvision can build (the names `tv:NAME` accepts)."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def check_torchvision_name(name: str) -> None:
    names = torchvision_model_names()
    if name not in names:
        raise InputError(f"unknown torchvision classification model {name!r}; {nearest_names(name, names)} "
                         "(torchvision.models.list_models())")


def torchvision_model(name: str, num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    import torchvision

    check_torchvision_name(name)
    if input_shape[0] != 3:
        raise InputError(f"tv:{name} expects 3-channel images, but the data has {input_shape[0]} channel(s)")
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes)


def torchvision_weights(name: str, weights_name: str):
    """The torchvision weight enum `weights_name` (e.g. IMAGENET1K_V1 or DEFAULT) of model `name`."""
    import torchvision

    check_torchvision_name(name)
    try:
        enum = torchvision.models.get_model_weights(name)
    except (ValueError, KeyError):
        raise InputError(f"torchvision has no pretrained weights for {name}; pass a weights file") from None
    members = [member.name for member in enum] + ["DEFAULT"]
    if weights_name not in members:
        raise InputError(f"tv:{name} has no weights {weights_name!r}; choose one of {', '.join(members)}")
    return enum.DEFAULT if weights_name == "DEFAULT" else enum[weights_name]


def torchvision_preprocess(weights) -> Preprocess:
    """Resize, crop and normalisation from a torchvision weight enum's own transforms."""
    transform = weights.transforms()
    crop, resize = int(transform.crop_size[0]), int(transform.resize_size[0])
    mode = getattr(transform.interpolation, "value", "bilinear")
    return Preprocess(crop, resize, tuple(transform.mean), tuple(transform.std), mode, source="weights")


def _timm():
    try:
        import timm
    except ImportError:
        raise InputError("timm:NAME needs timm; install it with pip install 'edgeprune[timm]'") from None
    return timm


def timm_model(name: str, num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    timm = _timm()
    if not timm.is_model(name):
        raise InputError(f"unknown timm model {name!r}; {nearest_names(name, timm.list_models())} (timm.list_models())")
    return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=input_shape[0])


def timm_preprocess(name: str) -> Optional[Preprocess]:
    """Input size, crop and normalisation from timm's pretrained config of `name` (no download)."""
    timm = _timm()
    if not timm.is_model(name):
        return None
    import math

    from timm.data import resolve_data_config

    model = timm.create_model(name, pretrained=False, num_classes=1)
    config = resolve_data_config({}, model=model)
    size = int(config["input_size"][-1])
    resize = max(size, int(math.floor(size / float(config.get("crop_pct", 0.875)))))
    mode = config.get("interpolation", "bilinear")
    return Preprocess(size, resize, tuple(config["mean"]), tuple(config["std"]),
                      mode if mode in ("bilinear", "bicubic", "nearest") else "bilinear", source="timm")
