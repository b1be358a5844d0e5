"""Where a measurement was taken: CPU, cores, threads, OS, GPU and driver, library versions.

Latency numbers are only comparable between runs on the same hardware with the same runtime
and thread count; `fingerprint` is that subset, and the gate refuses to compare results whose
fingerprints differ.
"""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from importlib import metadata
from typing import Any, Optional

from edgeprune.versions import library_versions

#: environment keys (and library versions) that must match for two results to be comparable.
FINGERPRINT_KEYS = ("cpu_model", "physical_cores", "logical_cores", "threads",
                    "gpu_name", "gpu_driver")
FINGERPRINT_RUNTIMES = ("onnxruntime", "torch", "tensorrt", "executorch", "openvino")


def environment(threads: Optional[int] = None) -> dict[str, Any]:
    """Everything that explains a latency figure; `threads` is the intra-op thread count used
    (None means the runtime's default)."""
    env: dict[str, Any] = {
        "cpu_model": _cpu_model(),
        "physical_cores": _physical_cores(),
        "logical_cores": os.cpu_count(),
        "available_cores": _available_cores(),
        "threads": threads,
        **machine_load(),
        "os": f"{platform.system()} {platform.release()}",
        "platform": platform.platform(),
        "machine": platform.machine(),
        "hostname": platform.node(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
    }
    env.update(_gpu_info())
    from edgeprune.measure.devicestats import jetson_environment

    env["jetson"] = jetson_environment()  # power mode, clocks, tegrastats; None off a Jetson
    env["versions"] = library_versions()
    return env


def machine_load() -> dict[str, Any]:
    """The load average (1/5/15 min) and this process's CPU affinity, recorded with every
    result: a latency figure measured while other jobs held the cores is another figure."""
    load = [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None
    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {"load_average": load, "cpu_affinity": affinity}


def load_warning(env: dict[str, Any]) -> Optional[str]:
    """A one-line warning when the 1-minute load average exceeded the cores this process may use."""
    load = env.get("load_average")
    cores = len(env.get("cpu_affinity") or ()) or env.get("logical_cores")
    if load and cores and load[0] > cores:
        return (f"load average {load[0]:.2f} exceeds the {cores} cores this process may use: "
                "other jobs shared the CPU during the measurement")
    return None


def fingerprint(env: dict[str, Any], target: Optional[str] = None) -> dict[str, Any]:
    """The part of `env` that must be equal for two results to be compared.

    The hostname is left out on purpose: identical CI runners have different names. `target`
    defaults to ``env["target"]`` when the benchmark recorded it there.
    """
    versions = env.get("versions") or {}
    fp: dict[str, Any] = {key: env.get(key) for key in FINGERPRINT_KEYS}
    for runtime in FINGERPRINT_RUNTIMES:
        fp[f"{runtime}_version"] = versions.get(runtime)
    fp["target"] = target if target is not None else env.get("target")
    jetson = env.get("jetson") or {}
    if jetson:  # a Jetson in another power mode, or with unlocked clocks, is another machine
        fp["jetson_power_mode"] = (jetson.get("power_mode") or {}).get("name")
        fp["jetson_clocks_locked"] = (jetson.get("clocks") or {}).get("locked")
    return fp


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Hardware", "Processor", "cpu model"):
                    if value.strip():
                        return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _physical_cores() -> Optional[int]:
    try:
        import psutil

        return psutil.cpu_count(logical=False)
    except ImportError:  # pragma: no cover - psutil is a dependency
        return None


def _available_cores() -> Optional[int]:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count()


def _gpu_info() -> dict[str, Any]:
    """GPU name, compute capability and driver, only when torch is installed and sees CUDA."""
    info: dict[str, Any] = {"gpu_name": None, "gpu_compute_capability": None,
                            "gpu_driver": None, "cuda_runtime": None}
    if "torch" not in sys.modules and not _nvidia_device_present():
        return info  # importing torch costs seconds in every bench and gate process
    if "torch" not in sys.modules:
        try:
            metadata.version("torch")
        except metadata.PackageNotFoundError:
            return info
    try:
        import torch
    except ImportError:  # pragma: no cover - broken install
        return info
    if not torch.cuda.is_available():
        return info
    index = torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    info["gpu_name"] = torch.cuda.get_device_name(index)
    info["gpu_compute_capability"] = f"{major}.{minor}"
    info["cuda_runtime"] = torch.version.cuda
    info["gpu_driver"] = _nvidia_driver()
    return info


def _nvidia_device_present() -> bool:
    """Whether an NVIDIA GPU can be here at all (driver files, device nodes or nvidia-smi)."""
    paths = ("/proc/driver/nvidia/version", "/dev/nvidia0", "/dev/nvhost-ctrl-gpu", "/dev/nvgpu")
    return any(os.path.exists(p) for p in paths) or shutil.which("nvidia-smi") is not None


def _nvidia_driver() -> Optional[str]:
    try:
        with open("/proc/driver/nvidia/version", encoding="utf-8") as f:
            for word in f.readline().split():
                if word[:1].isdigit() and "." in word:
                    return word
    except OSError:
        pass
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip().splitlines()
        return out[0].strip() if out else None
    except (OSError, subprocess.SubprocessError):
        return None
