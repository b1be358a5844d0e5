"""Jetson telemetry parsers, on recorded tegrastats / nvpmodel / jetson_clocks output from Orin boards."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from edgeprune.measure import devicestats
from edgeprune.measure.devicestats import (
    parse_jetson_clocks,
    parse_nvpmodel,
    parse_tegrastats,
    parse_tegrastats_line,
)

DATA = Path(__file__).parent / "data" / "jetson"


def read(name: str) -> str:
    return (DATA / name).read_text()


def test_orin_nano_tegrastats_idle_line():
    first = parse_tegrastats(read("tegrastats_orin_nano.txt"))[0]
    assert (first.ram_used_mb, first.ram_total_mb) == (2418, 7620)
    assert (first.swap_used_mb, first.swap_total_mb) == (0, 3810)
    assert first.cpu_load_percent == (3, 1, 0, 2, 0, 1)
    assert first.cpu_freq_mhz == (729,) * 6
    assert first.gpu_load_percent == 0 and first.gpu_freq_mhz == ()
    assert first.temperatures_c["tj"] == pytest.approx(47.312)
    assert set(first.temperatures_c) == {"cpu", "soc0", "soc1", "soc2", "gpu", "tj"}
    assert first.power_in_mw == 4791
    assert first.power_mw == {"VDD_IN": 4791, "VDD_CPU_GPU_CV": 553, "VDD_SOC": 1383}


def test_orin_nano_tegrastats_under_load_reports_gpu_and_average_power():
    samples = parse_tegrastats(read("tegrastats_orin_nano.txt"))
    assert len(samples) == 3
    busy = samples[2]
    assert busy.gpu_load_percent == 99
    assert busy.power_mw["VDD_IN"] == 10216 and busy.power_avg_mw["VDD_IN"] == 8294
    assert max(s.power_in_mw for s in samples) == 10216


def test_root_tegrastats_adds_gpu_and_emc_frequency():
    sample = parse_tegrastats_line(read("tegrastats_orin_nano_root.txt"))
    assert sample.gpu_load_percent == 98 and sample.gpu_freq_mhz == (624,)
    assert sample.emc_load_percent == 34


def test_agx_orin_line_with_offline_cores_powered_off_sensors_and_no_vdd_in():
    sample = parse_tegrastats_line(read("tegrastats_agx_orin.txt"))
    assert len(sample.cpu_load_percent) == 12
    assert sample.cpu_load_percent[-4:] == (None,) * 4
    assert sample.gpu_freq_mhz == (1300, 1300)
    assert "CV0" not in sample.temperatures_c  # -256C means the sensor's engine is off
    assert sample.temperatures_c["GPU"] == pytest.approx(53.687)
    assert "NC" not in sample.power_mw
    assert sample.power_mw["VDD_GPU_SOC"] == 9847
    assert sample.power_in_mw is None  # AGX Orin reports rails, not VDD_IN


def test_non_tegrastats_text_is_ignored():
    assert parse_tegrastats_line("tegrastats: command not found") is None
    assert parse_tegrastats("") == []


@pytest.mark.parametrize(
    ("name", "mode", "mode_id"),
    [
        ("nvpmodel_orin_nano.txt", "15W", 0),
        ("nvpmodel_orin_nano_super.txt", "MAXN_SUPER", 2),
        ("nvpmodel_agx_orin.txt", "MAXN", 0),
    ],
)
def test_nvpmodel_power_mode_name_and_id(name, mode, mode_id):
    power_mode = parse_nvpmodel(read(name))
    assert (power_mode.name, power_mode.mode_id) == (mode, mode_id)
    assert power_mode.to_dict() == {"name": mode, "mode_id": mode_id}


def test_nvpmodel_garbage_is_none():
    assert parse_nvpmodel("nvpmodel: command not found") is None


def test_jetson_clocks_default_is_not_locked():
    state = parse_jetson_clocks(read("jetson_clocks_orin_nano_default.txt"))
    assert state.soc_family == "tegra234"
    assert state.machine.startswith("NVIDIA Jetson Orin Nano")
    assert not state.cpu_locked and state.gpu_locked is False and state.emc_locked is False
    assert not state.locked
    assert state.cpu_max_freq_khz == (1510400,) * 6
    assert state.power_mode == "15W"


def test_jetson_clocks_after_jetson_clocks_is_locked():
    state = parse_jetson_clocks(read("jetson_clocks_orin_nano_locked.txt"))
    assert state.cpu_locked and state.gpu_locked and state.emc_locked
    assert state.locked and state.to_dict()["locked"] is True
    assert state.gpu_freq_hz == (624750000, 624750000, 624750000)


def test_jetson_clocks_without_root_is_none():
    assert parse_jetson_clocks(read("jetson_clocks_not_root.txt")) is None


@pytest.mark.skipif(shutil.which("tegrastats") is not None, reason="this is a Jetson; the tools exist")
def test_readers_return_none_off_jetson():
    assert devicestats.read_power_mode() is None
    assert devicestats.read_clock_state() is None
    assert devicestats.read_tegrastats_sample() is None
    assert devicestats.jetson_environment() is None


def test_readers_use_the_tool_output_when_present(monkeypatch):
    outputs = {
        "nvpmodel": read("nvpmodel_orin_nano.txt"),
        "jetson_clocks": read("jetson_clocks_orin_nano_locked.txt"),
    }
    monkeypatch.setattr(devicestats, "_run", lambda command, timeout_s: outputs.get(command[0]))
    assert devicestats.read_power_mode().name == "15W"
    assert devicestats.read_clock_state().locked
