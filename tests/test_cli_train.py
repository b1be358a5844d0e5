"""`edgeprune train` end to end at a tiny size."""
from __future__ import annotations

import json

from click.testing import CliRunner

from edgeprune.cli import main

TINY = ["--epochs", "1", "--batch-size", "32", "--train-size", "64", "--test-size", "32", "--image-size", "16"]


def _output(result) -> str:
    return result.output + (result.stderr if result.stderr_bytes is not None else "")


def test_train_writes_a_run_and_ends_with_a_table(tmp_path):
    run_dir = tmp_path / "runs" / "tiny"
    result = CliRunner().invoke(main, ["train", "--run", str(run_dir), "--seed", "3", *TINY])
    assert result.exit_code == 0, _output(result)
    assert "test accuracy" in result.output and "272,474" in result.output
    spec = json.loads((run_dir / "run.json").read_text())
    assert (spec["model"], spec["data"], spec["seed"], spec["train"]["epochs"]) == ("resnet20", "synthetic", 3, 1)


def test_train_refuses_an_existing_run_without_force(tmp_path):
    run_dir = tmp_path / "tiny"
    assert CliRunner().invoke(main, ["train", "--run", str(run_dir), *TINY]).exit_code == 0
    again = CliRunner().invoke(main, ["train", "--run", str(run_dir), *TINY])
    assert again.exit_code == 1
    assert "already exists" in _output(again) and "--force" in _output(again)
    forced = CliRunner().invoke(main, ["train", "--run", str(run_dir), "--force", *TINY])
    assert forced.exit_code == 0, _output(forced)


def test_train_reports_a_bad_data_spec_in_one_line(tmp_path):
    result = CliRunner().invoke(main, ["train", "--run", str(tmp_path / "x"), "--data", "imagenet", *TINY])
    assert result.exit_code == 1
    assert "unknown data set 'imagenet'" in _output(result)
    assert "Traceback" not in _output(result)


def test_train_rejects_zero_epochs_as_a_usage_error(tmp_path):
    result = CliRunner().invoke(main, ["train", "--run", str(tmp_path / "x"), "--epochs", "0"])
    assert result.exit_code == 2
