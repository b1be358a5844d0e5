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


#: In-process RSS attribution moves by a few MB between identical runs (allocator arenas: the
#: same 1 MB model measured 0.6 and 2.6 MB in an A/A pair), so it resolves nothing finer than
#: this; a smaller attributed figure is shown as "< 8 MB", never as a measured 0.
ATTRIBUTION_RESOLUTION_MB = 8.0


def mb_text(value: Optional[float], resolution_mb: Optional[float] = None, digits: int = 1) -> str:
    """'12.3' for a figure, '< 8' below the method's resolution, '–' when not measured."""
    if value is None:
        return "–"
    if resolution_mb is not None and value < resolution_mb:
        return f"< {resolution_mb:g}"
    return f"{value:.{digits}f}"


@dataclass(frozen=True)
class FreshRss:
    """Peak RSS of a new process that imported the runtime, loaded one model and ran it."""

    batch: int
    peak_rss_mb: float      # the whole process's high-water mark (VmHWM) after this batch
    runtime_rss_mb: float   # the same process before the model was loaded (interpreter + runtime)
    method: str = "fresh process, VmHWM (Linux /proc/self/status)"

    @property
    def model_rss_mb(self) -> float:
        return max(0.0, self.peak_rss_mb - self.runtime_rss_mb)


def fresh_process_peak_rss(onnx_path: str, shape: tuple[int, ...], batches: tuple[int, ...],
                           threads: Optional[int], iterations: int = 3,
                           timeout_s: float = 300.0) -> dict[int, FreshRss]:
    """Peak RSS per batch (ascending, so each high-water mark is that batch's) of ONNX Runtime on
    the CPU in a new interpreter: nothing else the parent loaded is in the figure. A subprocess of
    `sys.executable`, not multiprocessing's spawn, so it works from a notebook, a REPL or stdin."""
    import json
    import subprocess
    import sys

    from edgeprune.errors import InputError

    request = json.dumps({"path": str(onnx_path), "shape": list(shape), "batches": sorted(batches),
                          "threads": threads, "iterations": iterations})
    code = "import sys; from edgeprune.measure.memory import _child_main; _child_main(sys.argv[1])"
    try:
        done = subprocess.run([sys.executable, "-c", code, request], capture_output=True, text=True,
                              timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise InputError(f"{onnx_path}: the fresh-process memory run did not answer in {timeout_s:g} s") from None
    lines = done.stdout.strip().splitlines()
    try:
        answer = json.loads(lines[-1]) if lines else {}
    except ValueError:
        answer = {}
    if not answer:
        tail = done.stderr.strip().splitlines()[-1:] or [f"exit {done.returncode}"]
        answer = {"error": f"the child process died ({tail[0][:200]})"}
    if "error" in answer:
        raise InputError(f"{onnx_path}: fresh-process memory run failed: {answer['error']}")
    return {int(b): FreshRss(int(b), peak, answer["runtime"]) for b, peak in answer["peaks"].items()}


def _child_main(request: str) -> None:
    """The child's side: one JSON line on stdout, the answer or the error."""
    import json

    args = json.loads(request)
    answer = _child_peak_rss(args["path"], tuple(args["shape"]), tuple(args["batches"]), args["threads"],
                             args["iterations"])
    print(json.dumps(answer), flush=True)


def _child_peak_rss(path: str, shape: tuple, batches: tuple, threads: Optional[int],
                    iterations: int) -> dict:
    # VmHWM, not getrusage: Linux carries ru_maxrss across fork and exec, so a child's ru_maxrss
    # starts at its parent's RSS (a 1.6 GB pytest parent made a tiny model "use" 1.6 GB).
    try:
        import numpy as np
        import onnxruntime as ort

        def peak_mb() -> float:
            value = _high_water_mb()
            if value is None:
                raise OSError("no /proc/self/status VmHWM on this system")
            return value

        runtime = peak_mb()
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        rng = np.random.default_rng(0)
        peaks = {}
        for batch in batches:
            x = rng.standard_normal((batch, *shape)).astype(np.float32)
            for _ in range(max(1, iterations)):
                session.run(None, {name: x})
            peaks[batch] = peak_mb()
        return {"runtime": runtime, "peaks": peaks}
    except Exception as error:  # reported to the parent as one line
        return {"error": f"{type(error).__name__}: {error}"}
