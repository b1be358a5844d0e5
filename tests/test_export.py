"""ONNX export: one self-contained file, dynamic batch, checked, atomic; parity against PyTorch."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from edgeprune.errors import InputError, UnsupportedModelError
from edgeprune.onnx_export.exporter import ParityResult, check_parity, export_onnx


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def tiny_cifar_resnet(num_classes: int = 10) -> nn.Module:
    """A CIFAR-style ResNet small enough for a unit test (3 stages of one block)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, 1, 1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        BasicBlock(8, 8, 1),
        BasicBlock(8, 16, 2),
        BasicBlock(16, 32, 2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, num_classes),
    )
    model.train()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for _ in range(3):
            model(torch.randn(16, 3, 32, 32))
    return model.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = tiny_cifar_resnet()
    path = tmp_path_factory.mktemp("export") / "model.onnx"
    export_onnx(model, (3, 32, 32), path)
    return model, path


def test_export_writes_one_checked_file_with_named_dynamic_batch(exported):
    _, path = exported
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.onnx"]
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["logits"]
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.HasField("dim_value")
    assert proto.opset_import[0].version == 17
    assert {p.key: p.value for p in proto.metadata_props}["edgeprune.exporter"] == "torchscript"


@pytest.mark.parametrize("batch", [1, 4])
def test_exported_model_runs_any_batch_size(exported, batch):
    model, path = exported
    images = torch.randn(batch, 3, 32, 32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"input": images.numpy()})[0]
    with torch.no_grad():
        expected = model(images).numpy()
    assert logits.shape == (batch, 10)
    np.testing.assert_allclose(logits, expected, atol=1e-4)


def test_parity_passes_for_the_exported_model(exported):
    model, path = exported
    result = check_parity(model, path, torch.randn(20, 3, 32, 32), tolerance=1e-4)
    assert isinstance(result, ParityResult)
    assert result.passed and result.max_abs_err <= 1e-4
    assert result.top1_agreement == 1.0 and result.n_samples == 20
    assert set(result.to_dict()) == {"max_abs_err", "top1_agreement", "n_samples", "tolerance", "passed"}


def test_parity_fails_when_the_model_differs_from_the_file(exported):
    model, path = exported
    changed = tiny_cifar_resnet()
    with torch.no_grad():
        changed[-1].bias += 1.0
    result = check_parity(changed, path, np.random.RandomState(0).randn(8, 3, 32, 32).astype(np.float32))
    assert not result.passed
    assert result.max_abs_err > 0.5


def test_export_restores_training_mode(tmp_path):
    model = tiny_cifar_resnet().train()
    export_onnx(model, (3, 32, 32), tmp_path / "m.onnx")
    assert model.training


class RecordsProcessState(nn.Module):
    """Notes, while being traced, whether logging is switched off or stdout/stderr are redirected."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.seen: list[tuple] = []

    def forward(self, x):
        import logging
        import os
        import sys

        self.seen.append((logging.root.manager.disable, sys.stdout, sys.stderr,
                          os.fstat(1).st_ino, os.fstat(2).st_ino))
        return self.conv(x).mean((2, 3))


def test_export_leaves_logging_and_output_streams_alone(tmp_path):
    import logging
    import os
    import sys

    model = RecordsProcessState()
    outside = (logging.root.manager.disable, sys.stdout, sys.stderr, os.fstat(1).st_ino, os.fstat(2).st_ino)
    export_onnx(model, (3, 8, 8), tmp_path / "m.onnx")
    assert model.seen and all(state == outside for state in model.seen)


class Unexportable(nn.Module):
    def forward(self, x):
        raise RuntimeError("this model cannot be traced")


def test_failed_export_leaves_nothing_behind_and_keeps_an_existing_file(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"previous export")
    with pytest.raises(UnsupportedModelError) as info:
        export_onnx(Unexportable(), (3, 8, 8), path)
    assert "\n" not in str(info.value)
    assert path.read_bytes() == b"previous export"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_bad_input_shape_is_an_input_error(tmp_path):
    with pytest.raises(InputError):
        export_onnx(tiny_cifar_resnet(), (3, 0, 32), tmp_path / "m.onnx")
    with pytest.raises(InputError):
        export_onnx(tiny_cifar_resnet(), (3, 32, 32), tmp_path / "m.onnx", exporter="tflite")


def test_dynamo_exporter_gives_the_same_contract(tmp_path):
    """The fallback exporter (torch.export based) also yields input/logits with a dynamic batch."""
    model = tiny_cifar_resnet()
    path = tmp_path / "dynamo.onnx"
    export_onnx(model, (3, 32, 32), path, exporter="dynamo")
    proto = onnx.load(str(path))
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["logits"]
    assert not proto.graph.input[0].type.tensor_type.shape.dim[0].HasField("dim_value")
    assert {p.key: p.value for p in proto.metadata_props}["edgeprune.exporter"] == "dynamo"
    assert check_parity(model, path, torch.randn(3, 3, 32, 32)).passed


class _DictOutput(torch.nn.Module):
    """A segmentation-style model: a dict of a head and a feature map."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.head = torch.nn.Conv2d(8, 4, 1)

    def forward(self, x):
        features = torch.relu(self.a(x))
        return {"out": self.head(features), "aux": features}


def test_dict_output_model_exports_every_output_with_a_dynamic_batch_and_parity(tmp_path):
    model = _DictOutput().eval()
    path = tmp_path / "seg.onnx"
    export_onnx(model, (3, 8, 8), path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["output_0", "output_1"]
    outputs = session.run(None, {"input": np.zeros((3, 3, 8, 8), dtype=np.float32)})
    assert [o.shape for o in outputs] == [(3, 4, 8, 8), (3, 8, 8, 8)]
    parity = check_parity(model, path, torch.randn(3, 3, 8, 8))
    assert parity.passed and parity.max_abs_err <= 1e-4
