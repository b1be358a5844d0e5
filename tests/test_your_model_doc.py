"""docs/your-model.md, run as written: every bash and python block, on images and weights
written here, so the walk-through cannot drift from the tool."""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from edgeprune.cli import main
from edgeprune.training.models import build_model
from image_folder import write_train_val

pytestmark = pytest.mark.slow

DOC = Path(__file__).resolve().parents[1] / "docs" / "your-model.md"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), flags=re.S)


@pytest.fixture
def user_files(tmp_path, monkeypatch):
    """What the user brings: an image folder and a model trained elsewhere, saved two ways."""
    write_train_val(tmp_path / "images", train=6, val=4)
    torch.manual_seed(3)
    state = build_model("tv:mobilenet_v3_small", num_classes=3, input_shape=(3, 64, 64)).state_dict()
    torch.save(state, tmp_path / "ckpt.pth")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "model.safetensors"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_walkthrough_runs_as_written_and_reports_the_imported_accuracy(user_files):
    commands = [line for block in _blocks("bash") for line in block.splitlines() if line.strip()]
    assert len(commands) == 3 and all(line.startswith("edgeprune ") for line in commands)
    for line in commands:
        result = CliRunner().invoke(main, shlex.split(line)[1:])
        assert result.exit_code == 0, f"{line}\n{result.output}"
    imported = json.loads(Path("runs/mine/metrics.json").read_text())["dense"]["test_accuracy"]
    from_safetensors = json.loads(Path("runs/mine-st/metrics.json").read_text())["dense"]["test_accuracy"]
    manifest = json.loads(Path("dist/mine-keep0.50/manifest.json").read_text())
    assert manifest["accuracy_before"] == imported == from_safetensors
    assert manifest["shrink_check"]["passed"] and manifest["onnx_parity"]["passed"]

    (python,) = _blocks("python")
    namespace: dict = {}
    exec(compile(python, str(DOC), "exec"), namespace)
    result, small = namespace["result"], namespace["small"]
    assert result.out_dir == Path("dist/mine-py")
    assert abs(result.manifest.params_after / result.manifest.params_before - 0.5) <= 0.05
    assert sum(p.numel() for p in small.parameters()) == result.manifest.params_after
