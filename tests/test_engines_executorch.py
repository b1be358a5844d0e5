"""ExecuTorch back end: .pte through torch.export + XNNPACK, parity, INT8 by PT2E, clear refusals."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from torch import nn

from edgeprune.engines import ModelSource, backends_for, build_engines, compare_with_onnxruntime, load_runner
from edgeprune.engines import executorch as et
from edgeprune.engines.base import run_batched
from edgeprune.errors import BackendUnavailableError, InputError, UnsupportedModelError
from edgeprune.onnx_export.exporter import export_onnx
from edgeprune.targets import load_target
from test_engines_int8 import batches, cifar_convnet

REASON = et.unavailable_reason()
needs_executorch = pytest.mark.skipif(REASON is not None, reason=str(REASON))


@pytest.fixture(scope="module")
def fp32_model(tmp_path_factory):
    model = cifar_convnet()
    path = tmp_path_factory.mktemp("executorch") / "model.onnx"
    export_onnx(model, (3, 32, 32), path)
    return model, path


@pytest.fixture(scope="module")
def fp32_artifact(fp32_model):
    model, path = fp32_model
    if REASON is not None:
        pytest.skip(REASON)
    (artifact,) = build_engines(path, path.parent, "mobile-executorch", module=model)
    return artifact


def test_executorch_targets_select_the_executorch_back_end():
    assert backends_for(load_target("mobile-executorch")) == ["executorch"]
    assert backends_for(load_target("mobile-executorch-int8")) == ["executorch"]


@needs_executorch
def test_build_writes_a_pte_lowered_to_xnnpack(fp32_artifact):
    assert fp32_artifact.path.name == "model.pte" and fp32_artifact.path.is_file()
    assert (fp32_artifact.name, fp32_artifact.precision) == ("executorch", "fp32")
    assert fp32_artifact.build_info["xnnpack_delegates"] >= 1
    # The convolutions run in XNNPACK; nothing but a reshape may stay on the portable kernels.
    assert not [op for op in fp32_artifact.build_info["portable_ops"] if "conv" in op or "linear" in op]


@needs_executorch
def test_pte_matches_onnx_runtime_fp32(fp32_model, fp32_artifact):
    _, onnx_path = fp32_model
    with load_runner(fp32_artifact.path, "mobile-executorch") as runner:
        assert (runner.name, runner.device, runner.precision) == ("executorch", "cpu", "fp32")
        parity = compare_with_onnxruntime(runner, onnx_path, np.concatenate(batches(2, size=8, seed=3)))
    assert parity.passed and parity.top1_agreement == 1.0, parity


@needs_executorch
@pytest.mark.parametrize("batch", [1, 3, 4])
def test_pte_runs_every_batch_up_to_the_targets_largest(fp32_model, fp32_artifact, batch):
    model, _ = fp32_model
    x = np.random.RandomState(batch).randn(batch, 3, 32, 32).astype(np.float32)
    with load_runner(fp32_artifact.path) as runner:
        assert runner.max_batch_size == load_target("mobile-executorch").max_batch
        out = runner.run(x)
    np.testing.assert_allclose(out, model(torch.from_numpy(x)).detach().numpy(), atol=1e-4)


@needs_executorch
def test_a_batch_over_the_planned_maximum_is_an_input_error(fp32_artifact):
    with load_runner(fp32_artifact.path) as runner:
        with pytest.raises(InputError, match="up to 4"):
            runner.run(np.zeros((5, 3, 32, 32), np.float32))


@needs_executorch
def test_int8_by_pt2e_keeps_fp32_decisions(fp32_model, tmp_path):
    model, onnx_path = fp32_model
    (artifact,) = build_engines(onnx_path, tmp_path, "mobile-executorch-int8", batches(20, size=8), module=model)
    assert artifact.path.name == "model.int8.pte"
    assert (artifact.name, artifact.precision) == ("executorch-int8", "int8")
    assert artifact.build_info["calibration_batches"] == 16  # capped at the target's count
    x = np.concatenate(batches(4, size=16, seed=123))
    with load_runner(artifact.path, "mobile-executorch-int8") as int8:
        assert int8.precision == "int8"
        quantised = run_batched(int8, x)  # in batches of the planned maximum
    reference = model(torch.from_numpy(x)).detach().numpy()
    assert float(np.mean(reference.argmax(1) == quantised.argmax(1))) >= 0.9
    assert not np.allclose(reference, quantised, atol=1e-5)  # it really ran quantised kernels


@needs_executorch
def test_int8_without_calibration_is_an_input_error(fp32_model, tmp_path):
    model, onnx_path = fp32_model
    with pytest.raises(InputError, match="calibration"):
        build_engines(onnx_path, tmp_path, "mobile-executorch-int8", module=model)


class DataDependentBranch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        y = self.conv(x)
        if y.mean() > 0:  # torch.export cannot capture a branch on a tensor's value
            return y.relu()
        return y


@needs_executorch
def test_a_model_torch_export_cannot_capture_is_refused_in_one_line_naming_the_line(tmp_path):
    with pytest.raises(UnsupportedModelError) as caught:
        et.build_pte(DataDependentBranch(), (3, 8, 8), tmp_path / "m.pte", load_target("mobile-executorch"))
    message = str(caught.value)
    assert "\n" not in message
    assert "torch.export cannot capture" in message and "data-dependent" in message
    assert "if y.mean() > 0:" in message and "test_engines_executorch.py" in message
    assert "--target mobile-ort" in message  # the stated other path
    assert not (tmp_path / "m.pte").exists()


def test_export_failure_names_the_op_from_the_traceback_when_torch_does_not_quote_it():
    def user_code():
        raise RuntimeError(".numpy() is not supported for tensor subclasses.")

    try:
        user_code()
    except RuntimeError as error:
        text = et.export_failure(error)
    assert text.startswith(".numpy() is not supported")
    assert "test_engines_executorch.py" in text and "raise RuntimeError" in text


def test_without_the_package_the_back_end_names_the_extra(monkeypatch, fp32_model, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("executorch") else real(name, *a))
    assert "pip install 'edgeprune[executorch]'" in et.ExecuTorchBackend.unavailable_reason()
    model, onnx_path = fp32_model
    with pytest.raises(BackendUnavailableError, match=r"edgeprune\[executorch\]") as caught:
        et.ExecuTorchBackend().build(ModelSource("model", onnx_path, model), tmp_path, load_target("mobile-executorch"))
    assert "\n" not in str(caught.value)
    with pytest.raises(BackendUnavailableError, match=r"edgeprune\[executorch\]"):
        et.ExecuTorchRunner(tmp_path / "model.pte")


def test_a_folder_without_the_pte_is_refused_with_the_export_command(fp32_model, tmp_path):
    _, onnx_path = fp32_model
    source = ModelSource("pruned", tmp_path / "model.onnx")
    (tmp_path / "model.onnx").write_bytes(onnx_path.read_bytes())
    with pytest.raises(InputError, match="edgeprune export --target mobile-executorch"):
        et.ExecuTorchBackend().bench_loaders(source, load_target("mobile-executorch"), tmp_path)
