"""Suite-wide settings: deterministic, quiet, and light on a 2-core machine."""
from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)  # small ops on a shared 2-core box: one thread is fastest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped where absent)")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
