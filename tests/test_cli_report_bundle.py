"""`edgeprune report`, `edgeprune bundle DIR -o NAME` and `edgeprune bundle verify NAME`."""
from __future__ import annotations

import io
import tarfile

import pytest
from click.testing import CliRunner

from edgeprune.cli import main
from export_fixture import make_export


@pytest.fixture()
def runner() -> CliRunner:
    return CliRunner()


def test_report_rerenders_and_prints_the_verdict(runner, tmp_path):
    export_dir = make_export(tmp_path, {"accuracy_before": 0.1, "accuracy_after": 0.1})
    result = runner.invoke(main, ["report", str(export_dir)])
    assert result.exit_code == 0, result.output
    assert (export_dir / "report.md").is_file() and (export_dir / "report.html").is_file()
    assert "wrote 3 plots" in result.output
    assert "FAIL: the model looks untrained" in result.output


def test_report_on_missing_folder_or_manifest_is_one_line_exit_1(runner, tmp_path):
    result = runner.invoke(main, ["report", str(tmp_path / "absent")])
    assert result.exit_code == 1
    assert "no export folder" in result.output and "Traceback" not in result.output
    result = runner.invoke(main, ["report", str(tmp_path)])
    assert result.exit_code == 1
    assert "manifest.json is missing" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_bundle_packs_then_verify_passes(runner, tmp_path):
    export_dir = make_export(tmp_path)
    out = tmp_path / "resnet.tar.gz"
    result = runner.invoke(main, ["bundle", str(export_dir), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.is_file() and "model.onnx" in result.output and "10 classes" in result.output

    result = runner.invoke(main, ["bundle", str(export_dir), "-o", str(out)])
    assert result.exit_code == 1 and "--force" in result.output
    result = runner.invoke(main, ["bundle", "-o", str(out), "--force", str(export_dir)])
    assert result.exit_code == 0, result.output

    result = runner.invoke(main, ["bundle", "verify", str(out)])
    assert result.exit_code == 0, result.output
    for word in ("checksums", "manifest", "model runs", "pass", "bundle verified"):
        assert word in result.output


def test_bundle_verify_shows_a_failing_export_verdict_and_fails_only_when_strict(runner, tmp_path):
    export_dir = make_export(tmp_path, {"accuracy_before": 0.1, "accuracy_after": 0.1})
    out = tmp_path / "untrained.tar.gz"
    assert runner.invoke(main, ["bundle", str(export_dir), "-o", str(out)]).exit_code == 0
    result = runner.invoke(main, ["bundle", "verify", str(out)])
    assert result.exit_code == 0, result.output
    assert "export verdict" in result.output and "looks untrained" in result.output
    assert "--strict" in result.output and "bundle verified" not in result.output
    strict = runner.invoke(main, ["bundle", "verify", "--strict", str(out)])
    assert strict.exit_code == 1 and "Traceback" not in strict.output


def test_bundle_pack_subcommand_and_default_output(runner, tmp_path):
    export_dir = make_export(tmp_path)
    result = runner.invoke(main, ["bundle", "pack", str(export_dir)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / f"{export_dir.name}.tar.gz").is_file()


def test_bundle_verify_fails_on_a_tampered_bundle(runner, tmp_path):
    export_dir = make_export(tmp_path)
    out = tmp_path / "b.tar.gz"
    assert runner.invoke(main, ["bundle", str(export_dir), "-o", str(out)]).exit_code == 0
    with tarfile.open(out, "r:gz") as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar]
    with tarfile.open(out, "w:gz") as tar:
        for info, data in members:
            if info.name == "model.onnx":
                data = data[:-1] + bytes([data[-1] ^ 1])
            tar.addfile(info, io.BytesIO(data))
    result = runner.invoke(main, ["bundle", "verify", str(out)])
    assert result.exit_code == 1
    assert "FAIL" in result.output and "model.onnx" in result.output
    assert "not run" in result.output and "failed verification" in result.output


def test_bundle_verify_missing_file_is_one_line_exit_1(runner, tmp_path):
    result = runner.invoke(main, ["bundle", "verify", str(tmp_path / "none.tar.gz")])
    assert result.exit_code == 1
    assert "no bundle at" in result.output and "Traceback" not in result.output


def test_bundle_help_lists_both_forms(runner):
    result = runner.invoke(main, ["bundle", "--help"])
    assert result.exit_code == 0
    assert "pack" in result.output and "verify" in result.output
