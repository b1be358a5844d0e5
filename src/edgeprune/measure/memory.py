"""Peak memory attributed to one model, measured apart from the timing rounds.

Several models share one process during a benchmark, so the process high-water mark alone says
little about any one of them. We attribute honestly what can be attributed: the RSS a model adds
while it is loaded (when bench loads it), and the high-water growth while it alone runs a few
batches, after the kernel's high-water mark is reset (Linux ``/proc/self/clear_refs``). On CUDA,
torch's allocator peak and the device-wide used-memory growth are recorded too.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Optional

_MB = 1024.0 * 1024.0


@dataclass(frozen=True)
class RunMemory:
    """Memory seen while one model ran alone; `method` says how it was measured."""

    peak_rss_mb: float
    rss_before_mb: float
    run_growth_mb: float
    gpu_peak_mb: Optional[float]
    method: str


def current_rss_mb() -> float:
    import psutil

    return psutil.Process(os.getpid()).memory_info().rss / _MB


def _reset_high_water() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _high_water_mb() -> Optional[float]:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return float(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def measure_run(run_once: Callable[[], object], iterations: int, device: str = "cpu",
                rss_before_mb: Optional[float] = None) -> RunMemory:
    """Run `run_once` `iterations` times and report the memory high-water mark around it.

    Growth is counted from `rss_before_mb` (default: RSS now); pass the RSS taken before the
    model's first run so that arenas grown at a smaller batch still count at a larger one.
    """
    gpu = _GpuPeak() if device == "cuda" else None
    rss_before = current_rss_mb() if rss_before_mb is None else rss_before_mb
    exact = _reset_high_water()
    sampled_peak = rss_before
    for _ in range(max(1, iterations)):
        run_once()
        if not exact:
            sampled_peak = max(sampled_peak, current_rss_mb())
    high_water = _high_water_mb() if exact else None
    if high_water is not None:
        peak, method = high_water, "VmHWM reset before a solo run (Linux clear_refs)"
    else:
        peak, method = sampled_peak, "RSS sampled after each solo iteration"
    return RunMemory(
        peak_rss_mb=peak,
        rss_before_mb=rss_before,
        run_growth_mb=max(0.0, peak - rss_before),
        gpu_peak_mb=gpu.finish() if gpu else None,
        method=method,
    )


class _GpuPeak:
    """torch allocator peak plus device-wide used-memory growth (catches ORT / TensorRT arenas)."""

    def __init__(self) -> None:
        try:
            import torch
        except ImportError:
            self._torch = None
            return
        self._torch = torch if torch.cuda.is_available() else None
        if self._torch is not None:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            free, total = torch.cuda.mem_get_info()
            self._used_before = total - free

    def finish(self) -> Optional[float]:
        if self._torch is None:
            return None
        torch = self._torch
        torch.cuda.synchronize()
        free, total = torch.cuda.mem_get_info()
        device_growth = max(0, (total - free) - self._used_before)
        return max(torch.cuda.max_memory_allocated(), device_growth) / _MB
