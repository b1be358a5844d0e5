"""Option types shared by the commands: validation lives here, not in each command body."""
from __future__ import annotations

import math

import click


class KeepRatio(click.ParamType):
    """A keep ratio in (0, 1]: the fraction of parameters (or FLOPs) that remains."""

    name = "ratio"

    def convert(self, value, param, ctx):
        try:
            ratio = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number; e.g. --keep 0.5", param, ctx)
        if math.isnan(ratio) or not 0.0 < ratio <= 1.0:
            self.fail(f"must be in (0, 1], got {value}; e.g. --keep 0.5 keeps half the parameters", param, ctx)
        return ratio


class NumberList(click.ParamType):
    """A comma-separated list such as `0.9,0.8,0.7` or `1,8,32`."""

    name = "list"

    def __init__(self, kind: type = float) -> None:
        self.kind = kind

    def convert(self, value, param, ctx):
        if isinstance(value, (list, tuple)):
            return tuple(value)
        try:
            return tuple(self.kind(item) for item in str(value).split(",") if item.strip())
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of {self.kind.__name__}s", param, ctx)


KEEP = KeepRatio()


def _criteria() -> click.Choice:
    from edgeprune.importance import CRITERIA

    return click.Choice(CRITERIA)


CRITERION = _criteria()


class Device(click.ParamType):
    """`auto`, `cpu`, `cuda` or `cuda:N`; whether a GPU is there is checked when it is used."""

    name = "device"

    def convert(self, value, param, ctx):
        import re

        text = str(value).strip().lower()
        if text in ("auto", "cpu") or re.fullmatch(r"cuda(:\d+)?", text):
            return text
        self.fail(f"{value!r} is not a device; use auto, cpu, cuda or cuda:N", param, ctx)


DEVICE = Device()
DEVICE_HELP = "Where gate learning, scoring, fine-tuning and evaluation run (ONNX export and checks stay on CPU)."
