"""`--device`: names resolve or fail in one line; on CUDA, training runs under autocast and the
exported model does not depend on the device (the CUDA tests skip where there is no GPU)."""
from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from edgeprune.cli import main
from edgeprune.devices import Precision, model_device, resolve_device
from edgeprune.errors import InputError

NO_GPU = "needs a CUDA GPU: torch.cuda.is_available() is False on this machine"
requires_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_GPU)


def test_cpu_and_auto_resolve_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(InputError, match="no CUDA GPU is visible.*--device cpu"):
        resolve_device("cuda:0")
    with pytest.raises(InputError, match="unknown device 'tpu'"):
        resolve_device("tpu")


def test_a_device_index_past_the_last_gpu_names_the_range(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(InputError, match="has 2 CUDA device.*cuda:0 to cuda:1"):
        resolve_device("cuda:2")


def test_cpu_training_is_left_in_full_precision():
    precision = Precision.for_device(torch.device("cpu"))
    assert precision.autocast_dtype is None and not precision.channels_last and precision.grad_scaler() is None
    assert model_device(nn.Linear(2, 2)) == torch.device("cpu")


def test_cli_device_is_validated_before_any_work(tmp_path):
    result = CliRunner().invoke(main, ["export", "--device", "gpu0", "-o", str(tmp_path)])
    assert result.exit_code == 2 and "is not a device" in result.output


@pytest.mark.gpu
@requires_gpu
def test_training_on_cuda_uses_autocast_and_leaves_the_model_contiguous():
    from edgeprune.training.data import load_dataset
    from edgeprune.training.models import build_model
    from edgeprune.training.train import TrainConfig, train_model

    splits = load_dataset("digits", image_size=16)
    model = build_model("resnet20", 10, (3, 16, 16)).cuda()
    result = train_model(model, splits, TrainConfig(epochs=2, batch_size=64, lr=0.1))
    assert Precision.for_device(torch.device("cuda")).autocast_dtype in (torch.bfloat16, torch.float16)
    assert result.test.accuracy > 0.5
    assert all(p.is_contiguous() for p in model.parameters())


@pytest.mark.gpu
@requires_gpu
@pytest.mark.slow
def test_export_on_cuda_still_exports_and_checks_on_cpu(tmp_path):
    from edgeprune.training.runs import train_run
    from edgeprune.training.train import TrainConfig
    from edgeprune.workflows.export import ExportConfig, export_pipeline

    run_dir = tmp_path / "runs" / "digits"
    train_run(run_dir, "resnet20", "digits", TrainConfig(epochs=2, batch_size=64, lr=0.1), image_size=16)
    result = export_pipeline(ExportConfig(keep=0.5, run_dir=run_dir, out_root=tmp_path / "dist", device="cuda",
                                          finetune_epochs=1))
    manifest = result.manifest
    assert manifest.finetune["device"].startswith("cuda")
    assert manifest.shrink_check.passed and manifest.onnx_parity.passed
