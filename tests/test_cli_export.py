"""`edgeprune export` from the command line: a summary table, one-line errors, exit codes."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from edgeprune.cli import main
from pipeline_fixture import make_tiny_run

FAST = ["--finetune-epochs", "1", "--gate-epochs", "1", "--bench-seconds", "0.1"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_tiny_run(tmp_path_factory.mktemp("cli"))


@pytest.mark.slow  # trains a tiny run and exports it
def test_export_prints_summary_and_verdict(run_dir, tmp_path):
    result = CliRunner().invoke(main, ["export", "--keep", "0.5", "--run", str(run_dir), "-o", str(tmp_path), *FAST])
    assert result.exit_code == 0, result.output
    assert "keep requested 0.500" in result.output
    assert "verdict" in result.output
    manifest = json.loads((tmp_path / "tiny-keep0.50" / "manifest.json").read_text())
    assert manifest["keep_requested"] == 0.5


@pytest.mark.slow  # trains a tiny run and exports it
def test_existing_export_is_refused_in_one_line(run_dir, tmp_path):
    (tmp_path / "tiny-keep0.50").mkdir()
    result = CliRunner().invoke(main, ["export", "--run", str(run_dir), "-o", str(tmp_path), *FAST])
    assert result.exit_code == 1
    assert "already exists" in result.output and "--force" in result.output
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize("keep", ["0", "1.01", "-0.5", "half"])
def test_bad_keep_is_a_one_line_usage_error(keep, tmp_path):
    result = CliRunner().invoke(main, ["export", "--keep", keep, "-o", str(tmp_path)])
    assert result.exit_code == 2
    assert "--keep" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_missing_run_is_a_one_line_error(tmp_path):
    result = CliRunner().invoke(main, ["export", "--run", str(tmp_path / "nope"), "-o", str(tmp_path / "dist")])
    assert result.exit_code == 1
    assert "edgeprune train" in result.output
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.slow  # trains a tiny run and exports it
def test_unknown_target_is_a_one_line_error(run_dir, tmp_path):
    result = CliRunner().invoke(main, ["export", "--run", str(run_dir), "--target", "toaster", "-o", str(tmp_path)])
    assert result.exit_code == 1
    assert "toaster" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_help_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys; from edgeprune.cli import main; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _oserror(code: int, path) -> OSError:
    import os

    return OSError(code, os.strerror(code), str(path))


@pytest.mark.parametrize("code, words", [
    (28, ["no space left on device", "free some space"]),      # ENOSPC
    (30, ["read-only file system", "write somewhere else"]),   # EROFS
    (13, ["permission denied", "fix its permissions"]),        # EACCES
])
@pytest.mark.slow  # trains a tiny run and exports it
def test_storage_failure_during_export_is_one_line_and_leaves_nothing(run_dir, tmp_path, monkeypatch, code, words):
    def failing_export(model, input_shape, path, *args, **kwargs):
        raise _oserror(code, path)

    monkeypatch.setattr("edgeprune.onnx_export.exporter.export_onnx", failing_export)
    out = tmp_path / "dist"
    result = CliRunner().invoke(main, ["export", "--run", str(run_dir), "-o", str(out), *FAST])
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.output
    assert f"cannot write {out / 'tiny-keep0.50'}:" in errors[0]
    for word in words:
        assert word in errors[0]
    assert list(out.iterdir()) == []


@pytest.mark.slow  # trains a tiny run and exports it
def test_an_unwritable_output_root_is_one_line(run_dir, tmp_path, monkeypatch):
    def read_only(*args, **kwargs):
        raise _oserror(30, tmp_path / "dist")

    monkeypatch.setattr("edgeprune.workflows.export.tempfile.mkdtemp", read_only)
    result = CliRunner().invoke(main, ["export", "--run", str(run_dir), "-o", str(tmp_path / "dist"), *FAST])
    assert result.exit_code == 1 and "read-only file system" in result.output
    assert "Traceback" not in result.output


@pytest.mark.slow  # trains a tiny run and exports it
def test_force_says_it_replaced_the_previous_export(run_dir, tmp_path):
    args = ["export", "--run", str(run_dir), "-o", str(tmp_path), *FAST]
    assert CliRunner().invoke(main, args).exit_code == 0
    again = CliRunner().invoke(main, [*args, "--force"])
    assert again.exit_code == 0, again.output
    assert "replaced the previous export" in again.output


def test_the_clis_defaults_are_the_librarys():
    """`--help` must not import torch, so the CLI names the defaults as numbers; they must stay
    the recipe's and the gate phase's own."""
    from edgeprune.cli.export import FINETUNE_EPOCHS, GATE_EPOCHS
    from edgeprune.importance.gates import GateConfig
    from edgeprune.workflows.export import ExportConfig
    from edgeprune.workflows.recipe import FinetuneRecipe, SlimmingConfig
    from edgeprune.workflows.sweep import SweepConfig

    assert FINETUNE_EPOCHS == FinetuneRecipe().epochs == ExportConfig().finetune_epochs == SweepConfig().finetune_epochs
    assert GATE_EPOCHS == GateConfig().max_epochs == SlimmingConfig().epochs
