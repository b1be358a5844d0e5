"""The one family of user-facing errors.

The library raises these and never prints or exits; `cli.py` turns them into one line and a
non-zero exit. Every message says what went wrong and what to do about it.
"""
from __future__ import annotations


class EdgepruneError(Exception):
    """Base class: a problem the user can fix (bad input, missing file, unsupported model)."""

    exit_code = 1


class InputError(EdgepruneError):
    """A value, file or option given by the user is wrong (keep ratio out of range, bad path)."""


class RunError(EdgepruneError):
    """A run folder is missing, incomplete, corrupt, or does not match its model."""


class UnsupportedModelError(EdgepruneError):
    """The model cannot be traced or contains an op the channel analysis cannot prune safely."""


class OutputExistsError(EdgepruneError):
    """Refusing to overwrite an existing output without --force."""


class BackendUnavailableError(EdgepruneError):
    """An optional runtime (tensorrt, CUDA, OpenVINO) is not installed or has no device."""


class TargetError(EdgepruneError):
    """A target profile is missing or invalid (names the file and the key)."""


class BundleError(EdgepruneError):
    """A bundle is tampered, truncated, unsafe to extract, or has a bad manifest."""


class CheckFailedError(EdgepruneError):
    """A correctness check failed (shrink != gated, ONNX parity out of tolerance)."""


class StorageError(EdgepruneError):
    """Writing failed for the machine's state: a full disk, no permission, a read-only file system."""


class IncomparableError(EdgepruneError):
    """Two benchmark results cannot be compared (different machine, target or schema)."""

    exit_code = 2
