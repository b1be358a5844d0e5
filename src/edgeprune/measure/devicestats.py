"""Jetson telemetry: parse ``tegrastats``, ``nvpmodel -q`` and ``jetson_clocks --show``.

A Jetson latency number means little without its power mode and whether clocks were locked
(``jetson_clocks``); a benchmark records both beside the timings. The parsers are pure functions
over the tools' text so they are tested on recorded output; the ``read_*`` functions run the tools
only where they exist and return None elsewhere (a laptop, a CI runner, an x86 server).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

_RAM = re.compile(r"\bRAM (\d+)/(\d+)MB")
_SWAP = re.compile(r"\bSWAP (\d+)/(\d+)MB")
_CPU = re.compile(r"\bCPU \[([^\]]*)\]")
_GR3D = re.compile(r"\bGR3D_FREQ (\d+)%(?:@\[?([\d,]+)\]?)?")
_EMC = re.compile(r"\bEMC_FREQ (\d+)%(?:@(\d+))?")
_TEMP = re.compile(r"\b([A-Za-z][A-Za-z0-9_]*)@(-?\d+(?:\.\d+)?)C\b")
_RAIL = re.compile(r"\b([A-Z][A-Z0-9_]*) (\d+)mW/(\d+)mW")
#: Sensors that report -256C when their engine is powered off (CV0..CV2 on AGX Orin, GPU when idle).
_SENSOR_OFF = -256.0


@dataclass(frozen=True)
class TegrastatsSample:
    """One ``tegrastats`` line. Loads in percent, frequencies in MHz, temperatures in C, power in mW."""

    ram_used_mb: int
    ram_total_mb: int
    swap_used_mb: Optional[int] = None
    swap_total_mb: Optional[int] = None
    cpu_load_percent: tuple[Optional[int], ...] = ()  # None for a core that is off
    cpu_freq_mhz: tuple[Optional[int], ...] = ()
    gpu_load_percent: Optional[int] = None
    gpu_freq_mhz: tuple[int, ...] = ()
    emc_load_percent: Optional[int] = None
    temperatures_c: dict[str, float] = field(default_factory=dict)
    power_mw: dict[str, int] = field(default_factory=dict)  # instantaneous, per rail
    power_avg_mw: dict[str, int] = field(default_factory=dict)  # tegrastats' running average
    power_in_mw: Optional[int] = None  # VDD_IN, the module's input, where the board reports it

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_tegrastats_line(line: str) -> Optional[TegrastatsSample]:
    """Parse one line (with or without the leading timestamp); None if it is not tegrastats output."""
    ram = _RAM.search(line)
    if ram is None:
        return None
    swap = _SWAP.search(line)
    loads: list[Optional[int]] = []
    freqs: list[Optional[int]] = []
    cpu = _CPU.search(line)
    if cpu is not None:
        for core in cpu.group(1).split(","):
            core = core.strip()
            match = re.fullmatch(r"(\d+)%(?:@(\d+))?", core)
            loads.append(int(match.group(1)) if match else None)
            freqs.append(int(match.group(2)) if match and match.group(2) else None)
    gr3d = _GR3D.search(line)
    emc = _EMC.search(line)
    temperatures = {name: float(value) for name, value in _TEMP.findall(line) if float(value) != _SENSOR_OFF}
    rails = _RAIL.findall(line)
    power = {name: int(now) for name, now, _ in rails if name != "NC"}
    power_avg = {name: int(avg) for name, _, avg in rails if name != "NC"}
    return TegrastatsSample(
        ram_used_mb=int(ram.group(1)),
        ram_total_mb=int(ram.group(2)),
        swap_used_mb=int(swap.group(1)) if swap else None,
        swap_total_mb=int(swap.group(2)) if swap else None,
        cpu_load_percent=tuple(loads),
        cpu_freq_mhz=tuple(freqs),
        gpu_load_percent=int(gr3d.group(1)) if gr3d else None,
        gpu_freq_mhz=tuple(int(f) for f in gr3d.group(2).split(",")) if gr3d and gr3d.group(2) else (),
        emc_load_percent=int(emc.group(1)) if emc else None,
        temperatures_c=temperatures,
        power_mw=power,
        power_avg_mw=power_avg,
        power_in_mw=power.get("VDD_IN"),
    )


def parse_tegrastats(text: str) -> list[TegrastatsSample]:
    """Every tegrastats line in `text` (a log written with ``tegrastats --logfile``, say)."""
    samples = (parse_tegrastats_line(line) for line in text.splitlines())
    return [s for s in samples if s is not None]


@dataclass(frozen=True)
class PowerMode:
    """``nvpmodel -q``: the power mode's name (``15W``, ``MAXN``, ``MAXN_SUPER``) and its id."""

    name: str
    mode_id: Optional[int]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_nvpmodel(text: str) -> Optional[PowerMode]:
    """Parse ``nvpmodel -q`` ("NV Power Mode: 15W" then the id on its own line); warnings are skipped."""
    name_match = re.search(r"NV Power Mode:\s*(\S+)", text)
    if name_match is None:
        return None
    after = text[name_match.end() :]
    id_match = re.search(r"^\s*(\d+)\s*$", after, re.MULTILINE)
    return PowerMode(name=name_match.group(1), mode_id=int(id_match.group(1)) if id_match else None)


@dataclass(frozen=True)
class ClockState:
    """``jetson_clocks --show``: whether CPU, GPU and EMC clocks are pinned at their maximum."""

    soc_family: Optional[str]
    machine: Optional[str]
    cpu_locked: bool
    gpu_locked: Optional[bool]
    emc_locked: Optional[bool]
    cpu_max_freq_khz: tuple[int, ...] = ()
    gpu_freq_hz: Optional[tuple[int, int, int]] = None  # min, max, current
    power_mode: Optional[str] = None

    @property
    def locked(self) -> bool:
        """True when every clock the tool reports is fixed (what ``sudo jetson_clocks`` does)."""
        return self.cpu_locked and self.gpu_locked is not False and self.emc_locked is not False

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "locked": self.locked}


def parse_jetson_clocks(text: str) -> Optional[ClockState]:
    """Parse ``jetson_clocks --show``; None when the text is not that output (e.g. "run as root")."""
    cpu_lines = re.findall(r"^\s*cpu\d+:.*?MinFreq=(\d+) MaxFreq=(\d+) CurrentFreq=(\d+)", text, re.MULTILINE)
    if not cpu_lines:
        return None
    soc = re.search(r"SOC family:\s*(\S+)", text)
    machine = re.search(r"Machine:\s*(.+?)\s*$", text, re.MULTILINE)
    gpu = re.search(r"^\s*GPU MinFreq=(\d+) MaxFreq=(\d+) CurrentFreq=(\d+)", text, re.MULTILINE)
    emc = re.search(
        r"^\s*EMC MinFreq=(\d+) MaxFreq=(\d+) CurrentFreq=(\d+)(?: FreqOverride=(\d))?", text, re.MULTILINE
    )
    mode = re.search(r"NV Power Mode:\s*(\S+)", text)
    emc_locked: Optional[bool] = None
    if emc is not None:
        low, high, now = (int(emc.group(i)) for i in (1, 2, 3))
        # jetson_clocks pins EMC through the override rather than by raising MinFreq.
        emc_locked = (emc.group(4) == "1" and now == high) or low == high
    return ClockState(
        soc_family=soc.group(1) if soc else None,
        machine=machine.group(1) if machine else None,
        cpu_locked=all(low == high for low, high, _ in cpu_lines),
        gpu_locked=(gpu.group(1) == gpu.group(2)) if gpu else None,
        emc_locked=emc_locked,
        cpu_max_freq_khz=tuple(int(high) for _, high, _ in cpu_lines),
        gpu_freq_hz=tuple(int(gpu.group(i)) for i in (1, 2, 3)) if gpu else None,
        power_mode=mode.group(1) if mode else None,
    )


def _run(command: list[str], timeout_s: float) -> Optional[str]:
    """Run a tool if it is on PATH; None when it is absent, fails or hangs."""
    if shutil.which(command[0]) is None:
        return None
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout + result.stderr


def read_power_mode(timeout_s: float = 5.0) -> Optional[PowerMode]:
    text = _run(["nvpmodel", "-q"], timeout_s)
    return parse_nvpmodel(text) if text else None


def read_clock_state(timeout_s: float = 5.0) -> Optional[ClockState]:
    """Needs root on the device (jetson_clocks refuses otherwise); None when it cannot tell."""
    text = _run(["jetson_clocks", "--show"], timeout_s)
    return parse_jetson_clocks(text) if text else None


def read_tegrastats_sample(interval_ms: int = 500, timeout_s: float = 5.0) -> Optional[TegrastatsSample]:
    """One sample: start tegrastats, take its first line, stop it."""
    if shutil.which("tegrastats") is None:
        return None
    try:
        process = subprocess.Popen(
            ["tegrastats", "--interval", str(interval_ms)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
    except OSError:
        return None
    try:
        line = _first_line(process, timeout_s)
    finally:
        process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
    return parse_tegrastats_line(line) if line else None


def _first_line(process: subprocess.Popen, timeout_s: float) -> Optional[str]:
    import selectors

    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout_s):
            return None
        return process.stdout.readline()


def jetson_environment() -> Optional[dict[str, Any]]:
    """Power mode, clock state and one telemetry sample for the benchmark's environment block; None off Jetson."""
    mode, clocks, sample = read_power_mode(), read_clock_state(), read_tegrastats_sample()
    if mode is None and clocks is None and sample is None:
        return None
    return {
        "power_mode": mode.to_dict() if mode else None,
        "clocks": clocks.to_dict() if clocks else None,
        "tegrastats": sample.to_dict() if sample else None,
    }


__all__ = [
    "ClockState",
    "PowerMode",
    "TegrastatsSample",
    "jetson_environment",
    "parse_jetson_clocks",
    "parse_nvpmodel",
    "parse_tegrastats",
    "parse_tegrastats_line",
    "read_clock_state",
    "read_power_mode",
    "read_tegrastats_sample",
]
