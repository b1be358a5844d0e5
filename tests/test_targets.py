"""Target profiles: every built-in loads, and a bad file names the file and the key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from edgeprune.errors import TargetError
from edgeprune.targets import DEFAULT_TARGET, Target, builtin_target_names, list_targets, load_target

BUILTINS = {
    "cpu-x86",
    "cpu-x86-int8",
    "cpu-arm64",
    "gpu-trt-fp16",
    "gpu-trt-int8",
    "gpu-torch-fp16",
    "jetson-orin-nano",
    "jetson-orin-nx",
    "jetson-agx-orin",
    "mobile-executorch",
    "mobile-executorch-int8",
    "mobile-ort",
    "cpu-x86-openvino",
}

VALID = """\
name: my-board
description: a user's board
runtime: onnxruntime
precision: fp32
device: cpu
execution_providers: [CPUExecutionProvider]
batch_sizes: [1, 4]
intra_op_threads: 2
inter_op_threads: 1
round_to: 4
latency_budget_ms: 20
"""


def write(tmp_path: Path, text: str, name: str = "board.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_every_builtin_target_loads_and_is_listed():
    names = {t.name for t in list_targets()}
    assert names == BUILTINS
    assert set(builtin_target_names()) == BUILTINS
    for name in BUILTINS:
        assert load_target(name).name == name


def test_default_target_is_cpu_x86_onnxruntime_fp32():
    target = load_target(None)
    assert target.name == DEFAULT_TARGET == "cpu-x86"
    assert (target.runtime, target.precision, target.device) == ("onnxruntime", "fp32", "cpu")


def test_channel_rounding_follows_the_hardware():
    assert load_target("gpu-trt-fp16").round_to == 8
    assert load_target("gpu-trt-int8").round_to == 32
    assert load_target("cpu-x86").round_to == 8


def test_jetson_targets_are_tensorrt_fp16_and_orin_nano_has_no_dla():
    for name in ("jetson-orin-nano", "jetson-orin-nx", "jetson-agx-orin"):
        target = load_target(name)
        assert (target.runtime, target.precision, target.device) == ("tensorrt", "fp16", "jetson")
    assert load_target("jetson-orin-nano").dla_core is None


def test_a_users_target_loads_by_path(tmp_path):
    target = load_target(write(tmp_path, VALID))
    assert target.name == "my-board"
    assert target.batch_sizes == (1, 4)
    assert target.latency_budget_ms == 20


def test_batch_profile_is_min_first_max():
    target = dataclasses.replace(load_target("gpu-trt-fp16"), batch_sizes=(8, 1, 32))
    assert (target.min_batch, target.opt_batch, target.max_batch) == (1, 8, 32)


def test_to_dict_round_trips():
    for target in list_targets():
        assert Target.from_dict(target.to_dict()) == target


def test_target_is_immutable():
    with pytest.raises(dataclasses.FrozenInstanceError):
        load_target("cpu-x86").round_to = 4


@pytest.mark.parametrize(
    ("replace", "key"),
    [
        (("round_to: 4", "round_too: 4"), "round_too"),
        (("intra_op_threads: 2", "intra_op_threads: two"), "intra_op_threads"),
        (("intra_op_threads: 2", "intra_op_threads: -1"), "intra_op_threads"),
        (("precision: fp32", "precision: fp8"), "precision"),
        (("runtime: onnxruntime", "runtime: tflite"), "runtime"),
        (("batch_sizes: [1, 4]", "batch_sizes: [0, 4]"), "batch_sizes"),
        (("batch_sizes: [1, 4]", "batch_sizes: []"), "batch_sizes"),
        (("latency_budget_ms: 20", "latency_budget_ms: -5"), "latency_budget_ms"),
        (("intra_op_threads: 2", "intra_op_threads: true"), "intra_op_threads"),
        (
            ("execution_providers: [CPUExecutionProvider]", "execution_providers: [CUDAExecutionProvider]"),
            "execution_providers",
        ),
    ],
)
def test_bad_target_names_the_file_and_the_key(tmp_path, replace, key):
    old, new = replace
    path = write(tmp_path, VALID.replace(old, new))
    with pytest.raises(TargetError) as info:
        load_target(path)
    message = str(info.value)
    assert str(path) in message
    assert f"'{key}'" in message
    assert "\n" not in message


def test_dla_core_is_only_for_tensorrt_on_jetson(tmp_path):
    with pytest.raises(TargetError, match="dla_core"):
        load_target(write(tmp_path, VALID + "dla_core: 0\n"))


def test_fp16_on_onnxruntime_is_rejected_with_a_way_out(tmp_path):
    with pytest.raises(TargetError, match="tensorrt or torch"):
        load_target(write(tmp_path, VALID.replace("precision: fp32", "precision: fp16")))


def test_empty_and_malformed_files_are_target_errors(tmp_path):
    with pytest.raises(TargetError, match="empty"):
        load_target(write(tmp_path, "", "empty.yaml"))
    with pytest.raises(TargetError, match="not valid YAML"):
        load_target(write(tmp_path, "name: [unclosed\n", "broken.yaml"))
    with pytest.raises(TargetError, match="cannot read"):
        load_target(tmp_path / "missing.yaml")


def test_unknown_builtin_name_lists_the_builtins():
    with pytest.raises(TargetError, match="cpu-x86") as info:
        load_target("no-such-target")
    assert "no-such-target" in str(info.value)


def test_targets_command_lists_every_builtin_as_json():
    import json

    from click.testing import CliRunner

    from edgeprune.cli import main

    result = CliRunner().invoke(main, ["targets", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert {row["name"] for row in rows} == BUILTINS
    by_name = {row["name"]: row for row in rows}
    assert by_name["cpu-x86"]["available"] is True
    assert by_name["cpu-x86-int8"]["engines"] == ["onnxruntime-int8"]


def test_targets_command_prints_a_table_and_fails_cleanly_on_a_bad_file(tmp_path):
    from click.testing import CliRunner

    from edgeprune.cli import main

    result = CliRunner().invoke(main, ["targets"])
    assert result.exit_code == 0
    assert "cpu-x86" in result.output and "jetson-orin-nano" in result.output

    bad = write(tmp_path, VALID.replace("precision: fp32", "precision: fp64"))
    result = CliRunner().invoke(main, ["targets", "--target", str(bad)])
    assert result.exit_code == 1
    assert "precision" in result.output
