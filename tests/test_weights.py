"""Reading weights trained elsewhere: every format the field saves, and every bad file, one line."""
from __future__ import annotations

import collections

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from edgeprune.errors import InputError
from edgeprune.training.weights import read_weights


def _state() -> dict[str, torch.Tensor]:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).state_dict()


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("suffix", [".pt", ".pth"])
def test_a_plain_state_dict_is_read_as_saved(tmp_path, suffix):
    state = _state()
    torch.save(state, tmp_path / f"w{suffix}")
    loaded = read_weights(tmp_path / f"w{suffix}")
    assert _same(loaded.state, state) and (loaded.source, loaded.format) == ("state_dict", "torch")


def test_safetensors_are_read(tmp_path):
    state = {k: v.contiguous() for k, v in _state().items()}
    save_file(state, str(tmp_path / "w.safetensors"))
    loaded = read_weights(tmp_path / "w.safetensors")
    assert _same(loaded.state, state) and loaded.format == "safetensors"


@pytest.mark.parametrize("key", ["state_dict", "model", "model_state_dict", "ema"])
def test_training_checkpoints_are_unwrapped_and_ddp_prefixes_stripped(tmp_path, key):
    state = _state()
    checkpoint = {"epoch": 90, "optimizer": {"lr": 0.1}, key: collections.OrderedDict(
        (f"module.{name}", tensor) for name, tensor in state.items())}
    torch.save(checkpoint, tmp_path / "ckpt.pth")
    loaded = read_weights(tmp_path / "ckpt.pth")
    assert _same(loaded.state, state)
    assert loaded.source == f"checkpoint[{key!r}]"


def test_an_ema_copy_is_preferred_to_the_raw_weights(tmp_path):
    raw, ema = _state(), {k: v + 1 for k, v in _state().items()}
    torch.save({"state_dict": raw, "state_dict_ema": ema}, tmp_path / "ckpt.pth")
    assert _same(read_weights(tmp_path / "ckpt.pth").state, ema)


class Pickled:  # a class torch.load(weights_only=True) must refuse to rebuild
    def __init__(self):
        self.weight = torch.ones(2)


def test_a_pickle_that_needs_code_is_refused_not_unpickled(tmp_path):
    torch.save({"model": Pickled()}, tmp_path / "unsafe.pt")
    with pytest.raises(InputError, match="never unpickles code"):
        read_weights(tmp_path / "unsafe.pt")


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_a_truncated_file_is_one_line_naming_it(tmp_path, suffix):
    path = tmp_path / f"w{suffix}"
    if suffix == ".pt":
        torch.save(_state(), path)
    else:
        save_file({k: v.contiguous() for k, v in _state().items()}, str(path))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(InputError, match=r"is not a readable .*truncated") as error:
        read_weights(path)
    assert "\n" not in str(error.value) and str(path) in str(error.value)


def test_a_missing_file_and_a_dict_without_weights_say_what_to_pass(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_weights(tmp_path / "nope.pt")
    torch.save({"epoch": 3, "config": {"lr": 0.1}}, tmp_path / "meta.pt")
    with pytest.raises(InputError, match="without a state_dict.*'epoch'"):
        read_weights(tmp_path / "meta.pt")
