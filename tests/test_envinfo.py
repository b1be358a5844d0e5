"""envinfo: what a result records about its machine, and what makes two results comparable."""
from __future__ import annotations

from edgeprune.measure.environment import environment, fingerprint, library_versions


def test_environment_names_cpu_cores_threads_and_versions():
    env = environment(threads=3)
    assert env["cpu_model"] and env["cpu_model"] != "unknown"
    assert env["logical_cores"] >= 1
    assert env["threads"] == 3
    assert env["python"].count(".") == 2
    assert env["versions"]["numpy"] is not None
    assert env["versions"]["onnxruntime"] is not None
    assert "gpu_name" in env and "gpu_driver" in env


def test_library_versions_reports_missing_packages_as_none():
    versions = library_versions()
    assert set(versions) >= {"torch", "onnx", "onnxruntime", "numpy", "edgeprune", "tensorrt"}
    for value in versions.values():
        assert value is None or isinstance(value, str)


def test_fingerprint_ignores_hostname_but_not_threads_or_runtime():
    env = environment(threads=1)
    other_host = dict(env, hostname="another-runner")
    assert fingerprint(env, "cpu-x86") == fingerprint(other_host, "cpu-x86")
    assert fingerprint(env, "cpu-x86") != fingerprint(dict(env, threads=2), "cpu-x86")
    newer = dict(env, versions=dict(env["versions"], onnxruntime="99.0"))
    assert fingerprint(env, "cpu-x86") != fingerprint(newer, "cpu-x86")
    assert fingerprint(env, "cpu-x86") != fingerprint(env, "cpu-arm64")


def test_fingerprint_reads_target_recorded_in_environment():
    env = dict(environment(), target="cpu-x86")
    assert fingerprint(env)["target"] == "cpu-x86"


def test_environment_records_jetson_power_mode_and_fingerprint_tells_modes_apart(monkeypatch):
    from edgeprune.measure import devicestats
    from edgeprune.measure.environment import environment, fingerprint

    def on_jetson(mode: str):
        return lambda: {"power_mode": {"name": mode, "mode_id": 0}, "clocks": {"locked": True}, "tegrastats": None}

    monkeypatch.setattr(devicestats, "jetson_environment", on_jetson("MAXN"))
    maxn = environment()
    assert maxn["jetson"]["power_mode"]["name"] == "MAXN"
    monkeypatch.setattr(devicestats, "jetson_environment", on_jetson("15W"))
    low = environment()
    assert fingerprint(maxn)["jetson_power_mode"] == "MAXN"
    assert fingerprint(maxn) != fingerprint(low)


def test_environment_off_a_jetson_has_no_jetson_block_and_same_fingerprint_keys():
    from edgeprune.measure.environment import environment, fingerprint

    env = environment()
    assert env["jetson"] is None  # this machine has neither nvpmodel nor tegrastats
    assert "jetson_power_mode" not in fingerprint(env)
