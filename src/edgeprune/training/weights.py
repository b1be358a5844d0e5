"""Weights a user trained elsewhere, read without running their code.

A `.pt`/`.pth` file is read with `torch.load(weights_only=True)`, so a pickle that needs
arbitrary classes is refused rather than executed; `.safetensors` is read with safetensors.
Training checkpoints are unwrapped from the keys the field uses (`state_dict`, `model`,
`model_state_dict`, `ema` and timm's `state_dict_ema`), and DistributedDataParallel's
`module.` prefix is stripped, so a checkpoint saved mid-training loads as it is.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch

from edgeprune.errors import InputError

WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")
#: Keys under which training scripts nest the model's state_dict, in the order they are tried:
#: an EMA copy is what the user evaluated, when the checkpoint has one.
CHECKPOINT_KEYS = ("state_dict_ema", "model_ema", "ema", "model_state_dict", "state_dict", "model")
_PREFIXES = ("module.", "_orig_mod.")


@dataclass(frozen=True)
class LoadedWeights:
    """A flat state_dict and where in the file it was found (for the run's record)."""

    state: dict[str, torch.Tensor]
    source: str  # "state_dict", or the checkpoint key it came from, e.g. "checkpoint['model']"
    format: str  # "torch" or "safetensors"


def read_weights(path: Path) -> LoadedWeights:
    """The state_dict in `path`; raises `InputError` with one line for a missing, truncated,
    unsafe or unrecognised file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"weights file {path} not found; pass the path of a .pt, .pth or .safetensors file")
    if path.suffix == ".safetensors":
        return LoadedWeights(_strip_prefixes(_read_safetensors(path), path), "state_dict", "safetensors")
    loaded = _read_torch(path)
    state, source = _unwrap(loaded, path)
    return LoadedWeights(_strip_prefixes(state, path), source, "torch")


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as error:
        raise InputError(f"{path} is not a readable safetensors file ({_first_line(error)}); "
                         "is it truncated? re-save it with safetensors.torch.save_file") from None


def _read_torch(path: Path):
    import pickle

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "weights_only" in str(error):
            raise InputError(
                f"{path} holds Python objects besides tensors, and edgeprune never unpickles code "
                "(weights_only=True); re-save it with torch.save(model.state_dict(), PATH)"
            ) from None
        raise InputError(f"{path} is not a readable torch file ({_first_line(error)}); is it truncated?") from None
    except Exception as error:  # torch raises many types for a bad file (zip, EOF, runtime)
        raise InputError(f"{path} is not a readable torch file ({_first_line(error)}); "
                         "is it truncated? re-save it with torch.save(model.state_dict(), PATH)") from None


def _unwrap(loaded, path: Path) -> tuple[dict[str, torch.Tensor], str]:
    if not isinstance(loaded, Mapping):
        raise InputError(f"{path} holds a {type(loaded).__name__}, not a state_dict; "
                         "save it with torch.save(model.state_dict(), PATH)")
    if loaded and all(isinstance(v, torch.Tensor) for v in loaded.values()):
        return dict(loaded), "state_dict"
    for key in CHECKPOINT_KEYS:
        inner = loaded.get(key)
        if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            return dict(inner), f"checkpoint[{key!r}]"
    keys = ", ".join(repr(k) for k in list(loaded)[:6])
    raise InputError(f"{path} is a dict without a state_dict under any of {', '.join(CHECKPOINT_KEYS)} "
                     f"(its keys: {keys}); save the model's state_dict itself")


def _strip_prefixes(state: Mapping[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """Drop DDP's `module.` and torch.compile's `_orig_mod.` when every key carries them."""
    if not state:
        raise InputError(f"{path} holds an empty state_dict")
    state = dict(state)
    for prefix in _PREFIXES:
        if all(key.startswith(prefix) for key in state):
            state = {key[len(prefix):]: value for key, value in state.items()}
    return state


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__
