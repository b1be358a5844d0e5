"""The notebook path: `edgeprune.prune`, `edgeprune.export` and `edgeprune.load` on an in-memory
model and DataLoaders, with the same checks as the CLI and no process-wide side effects."""
from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import edgeprune
from edgeprune.errors import InputError
from edgeprune.importance.gates import GateConfig
from edgeprune.measure.results import BenchConfig
from wide_model import wide_cnn


def _digits_loaders() -> tuple[DataLoader, DataLoader]:
    """The user's own data pipeline: digits as 3x8x8 tensors, normalised, in DataLoaders."""
    bunch = load_digits()
    images = torch.from_numpy(bunch.images).float().div(16).unsqueeze(1).repeat(1, 3, 1, 1)
    images = (images - 0.3) / 0.4
    labels = torch.from_numpy(bunch.target).long()
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    train, val = order[:1400], order[1400:]
    return (DataLoader(TensorDataset(images[train], labels[train]), batch_size=64, shuffle=True),
            DataLoader(TensorDataset(images[val], labels[val]), batch_size=128))


@pytest.fixture(scope="module")
def trained():
    """A model the user trained in plain PyTorch, before edgeprune is involved."""
    torch.manual_seed(0)
    model = wide_cnn(10)
    train_loader, val_loader = _digits_loaders()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.train()
    for _ in range(3):
        for images, labels in train_loader:
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(images), labels).backward()
            optimizer.step()
    return model.eval(), train_loader, val_loader


def test_prune_shrinks_a_copy_to_the_budget_and_leaves_the_users_model_alone(trained):
    model, _, val_loader = trained
    before = {k: v.clone() for k, v in model.state_dict().items()}
    example = next(iter(val_loader))[0][:4]
    result = edgeprune.prune(model, example, keep=0.5)
    assert abs(result.plan.params_after / result.plan.params_before - 0.5) <= 0.02
    assert result.shrink_max_diff <= result.shrink_tolerance
    assert sum(p.numel() for p in result.model.parameters()) == result.plan.params_after
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_prune_with_gates_needs_data_and_says_so(trained):
    model, train_loader, _ = trained
    with pytest.raises(InputError, match="needs training data"):
        edgeprune.prune(model, (3, 8, 8), keep=0.5, criterion="gate")


def test_export_runs_the_whole_chain_on_in_memory_loaders_without_side_effects(trained, tmp_path):
    model, train_loader, val_loader = trained
    rng_state, numpy_state = torch.get_rng_state(), np.random.get_state()[1].copy()
    handlers, level = list(logging.getLogger().handlers), logging.getLogger().level
    umask = os.umask(0o022)
    os.umask(umask)
    config = edgeprune.ExportConfig(round_to=1, gate=GateConfig(max_epochs=2), parity_samples=128,
                                    bench=BenchConfig(warmup_s=0.05, min_iterations=20, min_seconds=0.2,
                                                      rounds=4, batch_sizes=(1,), memory_iterations=1,
                                                      bootstrap_resamples=100))
    result = edgeprune.export(model, train_loader, val_loader, keep=0.5, out=tmp_path / "dist" / "mine",
                              finetune_epochs=1, config=config, mean=(0.3,) * 3, std=(0.4,) * 3)
    manifest = result.manifest
    assert result.out_dir == tmp_path / "dist" / "mine"
    assert abs(manifest.params_after / manifest.params_before - 0.5) <= 0.02
    assert manifest.shrink_check.passed
    assert manifest.onnx_parity.passed
    assert manifest.accuracy_before > 0.8  # the user's model, measured on val_loader
    assert manifest.model["spec"] == "python:Sequential" and manifest.input.mean == (0.3, 0.3, 0.3)
    for name in ("model.onnx", "report.md", "manifest.json", "plan.json", "model.safetensors"):
        assert (result.out_dir / name).is_file(), name
    assert torch.equal(torch.get_rng_state(), rng_state)
    assert np.array_equal(np.random.get_state()[1], numpy_state)
    assert logging.getLogger().handlers == handlers and logging.getLogger().level == level
    assert os.umask(umask) == umask

    reloaded = edgeprune.load(model, result.out_dir)
    images = next(iter(val_loader))[0][:8]
    import onnxruntime as ort

    session = ort.InferenceSession(str(result.out_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx_logits = session.run(None, {session.get_inputs()[0].name: images.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(reloaded(images).numpy(), onnx_logits, atol=1e-4, rtol=1e-3)


def test_export_refuses_data_it_cannot_use(trained, tmp_path):
    model, train_loader, _ = trained
    with pytest.raises(InputError, match=r"\(image tensor, label\) pairs"):
        edgeprune.export(model, train_loader, [1, 2, 3], out=tmp_path / "x")
    with pytest.raises(InputError, match="map-style"):
        edgeprune.export(model, train_loader, iter([1, 2]), out=tmp_path / "x")
    bad = DataLoader(TensorDataset(torch.randn(4, 3, 5, 5, 5), torch.zeros(4).long()))
    with pytest.raises(InputError, match=r"\(C, H, W\)"):
        edgeprune.export(model, train_loader, bad, out=tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_the_public_api_is_declared_and_importing_it_does_not_import_torch():
    import subprocess
    import sys

    assert set(edgeprune.__all__) >= {"prune", "export", "load", "ExportConfig"}
    code = "import sys, edgeprune; assert 'torch' not in sys.modules; print(edgeprune.__all__)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0
