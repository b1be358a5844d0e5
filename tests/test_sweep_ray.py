"""Sweep executors: local and Ray give the same figures; resume, bounded retry and failed points."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from edgeprune.errors import BackendUnavailableError, InputError, RunError
from edgeprune.importance.gates import GateConfig
from edgeprune.measure.results import BenchConfig
from edgeprune.targets import load_target
from edgeprune.workflows import sweep_executors
from edgeprune.workflows.sweep import DenseModel, SweepConfig, sweep_dense
from edgeprune.workflows.sweep_executors import LocalExecutor, RayExecutor, make_executor, point_resources, run_point

INPUT_SHAPE = (1, 8, 8)
TINY_BENCH = BenchConfig(warmup_s=0.01, min_iterations=6, min_seconds=0.02, rounds=3, memory_iterations=0,
                         bootstrap_resamples=100)
#: Everything a record holds that the seeds decide (timings and dates are measured, not decided).
DECIDED = ("criterion", "seed", "keep", "keep_achieved", "params_after", "flops_after", "channels_after",
           "dense_accuracy_pct", "accuracy_before_finetune_pct", "accuracy_pct", "shrink_max_diff", "num_classes")

@pytest.fixture(scope="module")
def tiny_dense():
    """Which third of an 8x8 image holds a bright bar (3 classes), on a 2-conv net; a second to learn."""
    from edgeprune.training.train import TrainConfig, train_model

    g = torch.Generator().manual_seed(0)
    labels = torch.arange(240) % 3
    images = torch.randn(240, *INPUT_SHAPE, generator=g) * 0.5
    for i, y in enumerate(labels.tolist()):
        images[i, 0, :, 3 * y: 3 * y + 2] += 1.5
    splits = SimpleNamespace(train=TensorDataset(images[:180], labels[:180]),
                             test=TensorDataset(images[180:], labels[180:]))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 3))
    train_model(model, splits, TrainConfig(epochs=6, batch_size=32, lr=0.05, schedule="cosine"))
    return model.eval(), splits


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray (2 CPUs) for the module; the executor uses it and leaves it running."""
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'edgeprune[ray]'")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def _config(**changes):
    base = SweepConfig(keeps=(0.7, 0.4), seeds=2, criteria=("gate", "magnitude"), finetune_epochs=1,
                       gate=GateConfig(max_epochs=1, batch_size=64), round_to=1, min_channels=1, bench=None)
    return SweepConfig.from_dict({**base.to_dict(), **changes}) if changes else base


def _sweep(tiny_dense, out, config, **kwargs):
    model, splits = tiny_dense
    dense = DenseModel("tiny", model, splits, INPUT_SHAPE, Path(out) / "gates.pt")
    return sweep_dense(lambda seed: dense, out, config, source={"fingerprint": "tiny-v1"}, **kwargs)


def _decided(records):
    return [{name: getattr(r, name) for name in DECIDED} for r in records]


def _failing_at(key, marker=None):
    """A point function that raises at `key` (every time, or only while `marker` does not exist).

    Built in a closure so that Ray ships it by value to its workers."""
    def point_fn(context, importance, point, settings):
        if point.key == key and (marker is None or not marker.exists()):
            if marker is not None:
                marker.write_text("failed once")
            raise RuntimeError(f"injected failure at {point.key}")
        return sweep_executors.run_point(context, importance, point, settings)
    return point_fn


# --- the local executor --------------------------------------------------------------------------------


def test_local_executor_records_a_failing_point_and_keeps_the_others(tiny_dense, tmp_path):
    config = _config(seeds=[0], criteria=["magnitude"])
    bad = "magnitude-s0-k0.400"
    result = _sweep(tiny_dense, tmp_path, config, executor=LocalExecutor(retries=2, point_fn=_failing_at(bad)))
    assert [r.key for r in result.records] == ["magnitude-s0-k0.700"]
    assert [(f["key"], f["attempts"]) for f in result.failed] == [(bad, 3)]
    assert result.failed[0]["error"] == f"RuntimeError: injected failure at {bad}"
    saved = json.loads((tmp_path / "failed" / f"{bad}.json").read_text())
    assert saved["error"] == result.failed[0]["error"] and "Traceback" in saved["traceback"]
    assert json.loads((tmp_path / "sweep.json").read_text())["failed"][0]["key"] == bad

    again = _sweep(tiny_dense, tmp_path, config)  # the next run retries only the failed point
    assert (again.runs_reused, again.runs_done, again.failed) == (1, 1, ())
    assert not (tmp_path / "failed" / f"{bad}.json").exists()


def test_local_executor_retries_a_point_that_fails_once(tiny_dense, tmp_path):
    config = _config(seeds=[0], criteria=["magnitude"], keeps=[0.5])
    point_fn = _failing_at("magnitude-s0-k0.500", marker=tmp_path / "marker")
    result = _sweep(tiny_dense, tmp_path / "out", config, executor=LocalExecutor(retries=1, point_fn=point_fn))
    assert (tmp_path / "marker").exists() and result.failed == () and len(result.records) == 1
    with pytest.raises(RunError, match="all 1 sweep points failed.*injected failure"):
        _sweep(tiny_dense, tmp_path / "none", config,
               executor=LocalExecutor(retries=0, point_fn=_failing_at("magnitude-s0-k0.500")))


def test_point_resources_follow_the_target():
    cpu = load_target("cpu-x86")  # intra_op_threads 0: the runtime's default, so one CPU is asked for
    assert point_resources(_config(), cpu) == {"num_cpus": 1.0, "num_gpus": 0.0}
    assert point_resources(_config(bench=TINY_BENCH.to_dict()), load_target("cpu-arm64"))["num_cpus"] == 4.0
    threaded = _config(bench={**TINY_BENCH.to_dict(), "threads": 2})
    assert point_resources(threaded, cpu)["num_cpus"] == 2.0
    assert point_resources(_config(), load_target("gpu-trt-fp16"))["num_gpus"] == 1.0


def test_executor_options_are_checked_before_any_work(monkeypatch):
    with pytest.raises(InputError, match="--ray-address needs --executor ray"):
        make_executor("local", address="auto")
    with pytest.raises(InputError, match="--retries"):
        LocalExecutor(retries=-1)
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    with pytest.raises(BackendUnavailableError, match=r"pip install 'edgeprune\[ray\]'"):
        make_executor("ray")


def test_cli_executor_ray_without_ray_says_what_to_install(monkeypatch, tmp_path):
    from click.testing import CliRunner

    from edgeprune.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)
    result = CliRunner().invoke(main, ["sweep", "--run", str(tmp_path / "missing"), "--executor", "ray",
                                       "-o", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "pip install 'edgeprune[ray]'" in result.output and not (tmp_path / "out").exists()


# --- Ray -------------------------------------------------------------------------------------------------


@pytest.mark.slow  # a local Ray takes ~6 s to start; `make test` (CI) runs these
def test_ray_sweep_gives_the_same_figures_as_the_local_executor(tiny_dense, tmp_path, ray_local):
    config = _config(bench=TINY_BENCH.to_dict())
    local = _sweep(tiny_dense, tmp_path / "local", config)
    remote = _sweep(tiny_dense, tmp_path / "ray", config, executor=RayExecutor())
    assert remote.runs_done == local.runs_done == 8 and remote.failed == ()
    assert _decided(remote.records) == _decided(local.records)
    for record in remote.records:  # the dense ONNX travelled with the context: parity and timing ran
        assert record.onnx_parity["passed"] and record.latency["speedup"] > 0
    documents = [json.loads((tmp_path / name / "sweep.json").read_text()) for name in ("local", "ray")]
    accuracies = [[(a["criterion"], a["keep"], a["accuracy_pct"]) for a in d["aggregates"]] for d in documents]
    assert accuracies[0] == accuracies[1]
    assert documents[0]["dense_accuracy_pct"] == documents[1]["dense_accuracy_pct"]


class _Stop(Exception):
    pass


@pytest.mark.slow
def test_ray_sweep_stopped_half_way_resumes_without_redoing_finished_points(tiny_dense, tmp_path, ray_local,
                                                                           monkeypatch):
    config = _config()

    def stop_after_three(task, completed, total):
        if task == "sweep runs" and completed >= 3:
            raise _Stop

    with pytest.raises(_Stop):
        _sweep(tiny_dense, tmp_path, config, progress=stop_after_three, executor=RayExecutor())
    finished = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "runs").glob("*.json")}
    assert 3 <= len(finished) < 8  # what had finished is kept; the rest was cancelled

    submitted = []
    real_put = ray_local.put
    monkeypatch.setattr(ray_local, "put", lambda value, **k: submitted.append(type(value).__name__)
                        or real_put(value, **k))
    result = _sweep(tiny_dense, tmp_path, config, executor=RayExecutor())
    assert (result.runs_reused, result.runs_done) == (len(finished), 8 - len(finished))
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "runs").glob("*.json")
            if p.name in finished} == finished
    assert submitted.count("_Shipped") == 1  # one dense model: shipped once for all its points


@pytest.mark.slow
def test_ray_sweep_records_a_point_that_raises_without_losing_the_others(tiny_dense, tmp_path, ray_local):
    config = _config()
    bad = "gate-s1-k0.400"
    result = _sweep(tiny_dense, tmp_path, config, executor=RayExecutor(retries=1, point_fn=_failing_at(bad)))
    assert len(result.records) == 7 and bad not in {r.key for r in result.records}
    assert [f["key"] for f in result.failed] == [bad]
    assert result.failed[0]["error"] == f"RuntimeError: injected failure at {bad}"
    assert len(list((tmp_path / "runs").glob("*.json"))) == 7


@pytest.mark.slow
def test_ray_retries_a_point_that_fails_once(tiny_dense, tmp_path, ray_local):
    config = _config(seeds=[0], criteria=["magnitude"], keeps=[0.5])
    point_fn = _failing_at("magnitude-s0-k0.500", marker=tmp_path / "marker")
    result = _sweep(tiny_dense, tmp_path / "out", config, executor=RayExecutor(retries=1, point_fn=point_fn))
    assert (tmp_path / "marker").exists() and result.failed == () and len(result.records) == 1


#: A driver that builds the same tiny task and sweep as `tiny_dense` and `_config()`, runs it on a
#: local Ray, and SIGKILLs itself once three points are on disk: a kill, not an exception.
KILLED_DRIVER = '''
import os, signal, sys
from pathlib import Path
from types import SimpleNamespace
import torch
from torch import nn
from torch.utils.data import TensorDataset
from edgeprune.importance.gates import GateConfig
from edgeprune.training.train import TrainConfig, train_model
from edgeprune.workflows.sweep import DenseModel, SweepConfig, sweep_dense
from edgeprune.workflows.sweep_executors import RayExecutor

torch.set_num_threads(1)
g = torch.Generator().manual_seed(0)
labels = torch.arange(240) % 3
images = torch.randn(240, 1, 8, 8, generator=g) * 0.5
for i, y in enumerate(labels.tolist()):
    images[i, 0, :, 3 * y: 3 * y + 2] += 1.5
splits = SimpleNamespace(train=TensorDataset(images[:180], labels[:180]), test=TensorDataset(images[180:], labels[180:]))
torch.manual_seed(0)
model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1),
                      nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 3))
train_model(model, splits, TrainConfig(epochs=6, batch_size=32, lr=0.05, schedule="cosine"))
config = SweepConfig(keeps=(0.7, 0.4), seeds=2, criteria=("gate", "magnitude"), finetune_epochs=1,
                     gate=GateConfig(max_epochs=1, batch_size=64), round_to=1, min_channels=1, bench=None)
def kill_after_three(task, done, total):
    if task == "sweep runs" and done >= 3:
        os.kill(os.getpid(), signal.SIGKILL)
out = Path(sys.argv[1])
dense = DenseModel("tiny", model.eval(), splits, (1, 8, 8), out / "gates.pt")
sweep_dense(lambda s: dense, out, config, source={"fingerprint": "tiny-v1"}, progress=kill_after_three,
            executor=RayExecutor(num_cpus=2))
'''


@pytest.mark.slow
def test_ray_sweep_killed_half_way_resumes_without_redoing_finished_points(tiny_dense, tmp_path, ray_local):
    import os
    import signal
    import subprocess

    script = tmp_path / "driver.py"
    script.write_text(KILLED_DRIVER)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "RAY_ADDRESS": ""}
    # Its own session, so that the Ray processes it started (orphaned by the kill) can be ended by group.
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "out")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        output = proc.communicate(timeout=300)[0].decode(errors="replace")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert proc.returncode == -signal.SIGKILL, output[-2000:]
    finished = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out" / "runs").glob("*.json")}
    assert 3 <= len(finished) < 8
    assert not (tmp_path / "out" / "sweep.json").exists()  # killed before the summary

    result = _sweep(tiny_dense, tmp_path / "out", _config(), executor=RayExecutor())
    assert (result.runs_reused, result.runs_done) == (len(finished), 8 - len(finished))
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out" / "runs").glob("*.json")
            if p.name in finished} == finished
    assert len(result.records) == 8
