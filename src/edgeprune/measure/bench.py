"""Latency, throughput and memory of one or more models, measured so the numbers can be trusted.

Per batch size: a time-based warm-up per model (discarded), then rounds in which every model runs
one short burst, in alternating (or random) order, until every model has both `min_seconds` of
timed runs and `min_iterations` samples. Interleaving makes slow drift on a shared machine hit
all models alike; the raw samples are kept by round. Memory is measured first, one model at a
time (see `edgeprune.measure.memory`). `Runner.run` is synchronous with outputs on the host, so the
host clock brackets the device work on a GPU too. See docs/measuring.md for the reasoning.
"""
from __future__ import annotations

import math
import tempfile
from dataclasses import is_dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from time import perf_counter_ns
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from edgeprune.engines.base import ModelSource, Runner
from edgeprune.measure import stats
from edgeprune.measure.results import (SCHEMA_VERSION, BenchConfig, BenchEntry, BenchResult,
                                    Comparison, load_result_dict)
from edgeprune.measure.environment import environment, machine_load
from edgeprune.errors import InputError
from edgeprune.measure.memory import current_rss_mb, measure_run
from edgeprune.progress import ProgressCallback, report

__all__ = ["SCHEMA_VERSION", "BenchConfig", "BenchEntry", "BenchResult", "Comparison", "Runner",
           "benchmark", "benchmark_files", "with_model_memory", "load_result_dict", "onnx_input_dims", "open_runners", "DEFAULT_TARGET"]

DEFAULT_TARGET = "cpu-x86"


def benchmark(models: Mapping[str, Runner], inputs_by_batch: Mapping[int, np.ndarray],
              config: BenchConfig, *, target_name: str = DEFAULT_TARGET,
              progress: Optional[ProgressCallback] = None,
              load_rss_mb: Optional[Mapping[str, float]] = None) -> BenchResult:
    """Measure every model at every batch in `config.batch_sizes`, interleaved.

    The first model is the reference of the comparisons (speedup = its p50 / the other's p50).
    `load_rss_mb` is the RSS each model added when it was loaded, when the caller measured it.
    """
    if not models:
        raise InputError("nothing to benchmark: no models given")
    missing = [b for b in config.batch_sizes if b not in inputs_by_batch]
    if missing:
        raise InputError(f"no input array for batch size(s) {missing}")
    load_rss_mb = dict(load_rss_mb or {})
    names = list(models)
    rng = np.random.default_rng(config.seed)
    load_at_start = machine_load()["load_average"]

    memory, memory_method = _measure_memory(models, inputs_by_batch, config, progress)
    entries: list[BenchEntry] = []
    comparisons: list[Comparison] = []
    for batch in config.batch_sizes:
        timing = _time_batch(models, inputs_by_batch[batch], config, rng, progress,
                             task=f"bench batch {batch}")
        for name in names:
            entries.append(_make_entry(name, models[name], batch, timing[name], config,
                                       memory.get((name, batch)), load_rss_mb.get(name)))
        for other in names[1:]:
            comparisons.append(_compare(names[0], other, batch, timing, config))

    env = environment(threads=config.threads)
    env["target"] = target_name
    env["load_average_at_start"] = load_at_start
    return BenchResult(
        target=target_name, environment=env, config=config, entries=tuple(entries),
        comparisons=tuple(comparisons), memory_method=memory_method,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


class _Timing:
    def __init__(self) -> None:
        self.warmup_iterations = 0
        self.iterations_per_round = 1
        self.rounds: list[list[float]] = []
        self.timed_ns = 0


def _run_timed(runner: Runner, x: np.ndarray) -> int:
    t0 = perf_counter_ns()
    runner.run(x)
    return perf_counter_ns() - t0


def _time_batch(models: Mapping[str, Runner], x: np.ndarray, config: BenchConfig,
                rng: np.random.Generator, progress: Optional[ProgressCallback],
                task: str) -> dict[str, _Timing]:
    names = list(models)
    timing = {name: _Timing() for name in names}
    for name in names:
        warm: list[int] = []
        deadline = perf_counter_ns() + int(config.warmup_s * 1e9)
        while True:
            warm.append(_run_timed(models[name], x))
            if perf_counter_ns() >= deadline:
                break
        timing[name].warmup_iterations = len(warm)
        estimate_s = float(np.median(warm[len(warm) // 2:])) / 1e9
        per_round_s = config.min_seconds / config.rounds
        timing[name].iterations_per_round = max(
            1, math.ceil(config.min_iterations / config.rounds),
            math.ceil(per_round_s / max(estimate_s, 1e-9)))

    done_rounds = 0
    while True:
        if config.order == "random":
            order = [names[i] for i in rng.permutation(len(names))]
        else:
            order = names if done_rounds % 2 == 0 else names[::-1]
        for name in order:
            t = timing[name]
            burst = [_run_timed(models[name], x) for _ in range(t.iterations_per_round)]
            t.timed_ns += sum(burst)
            t.rounds.append([ns / 1e6 for ns in burst])
        done_rounds += 1
        finished = done_rounds >= config.rounds and all(
            sum(len(r) for r in t.rounds) >= config.min_iterations
            and t.timed_ns >= config.min_seconds * 1e9 for t in timing.values())
        report(progress, task, done_rounds, max(config.rounds, done_rounds + (not finished)))
        if finished:
            return timing


def _make_entry(name: str, runner: Runner, batch: int, timing: _Timing, config: BenchConfig,
                memory: Any, load_mb: Optional[float]) -> BenchEntry:
    flat = np.concatenate([np.asarray(r) for r in timing.rounds])
    pct, notes = stats.percentiles(flat)
    mean = float(flat.mean())
    std = float(flat.std(ddof=1)) if flat.size > 1 else 0.0
    medians = stats.round_medians(timing.rounds)
    round_cv = float(medians.std(ddof=1) / medians.mean()) if medians.size > 1 else 0.0
    cv = std / mean if mean > 0 else 0.0
    run_growth = memory.run_growth_mb if memory else None
    return BenchEntry(
        model=name, batch=batch, runner=str(getattr(runner, "name", type(runner).__name__)),
        device=str(getattr(runner, "device", "cpu")), precision=getattr(runner, "precision", None),
        n=int(flat.size), rounds=len(timing.rounds),
        iterations_per_round=timing.iterations_per_round, warmup_s=config.warmup_s,
        warmup_iterations=timing.warmup_iterations, timed_s=timing.timed_ns / 1e9,
        p50_ms=float(np.percentile(flat, 50)), p90_ms=pct["p90"], p95_ms=pct["p95"],
        p99_ms=pct["p99"], percentile_notes=notes, mean_ms=mean, std_ms=std,
        min_ms=float(flat.min()), max_ms=float(flat.max()), cv=cv, round_median_cv=round_cv,
        throughput_items_per_s=batch * 1000.0 / mean if mean > 0 else 0.0,
        peak_rss_mb=memory.peak_rss_mb if memory else None, load_rss_mb=load_mb,
        run_rss_growth_mb=run_growth,
        model_memory_mb=(load_mb + run_growth) if (load_mb is not None and run_growth is not None)
        else None,
        gpu_peak_mb=memory.gpu_peak_mb if memory else None,
        samples_ms=tuple(tuple(r) for r in timing.rounds),
        model_file=str(runner.graph_file) if getattr(runner, "graph_file", None) else None,
        engine_memory_bytes=getattr(runner, "device_memory_bytes", None),
    )


def _compare(baseline: str, candidate: str, batch: int, timing: Mapping[str, _Timing],
             config: BenchConfig) -> Comparison:
    base, cand = timing[baseline].rounds, timing[candidate].rounds
    speedup = stats.pooled_median(base) / stats.pooled_median(cand)
    ci = stats.bootstrap_median_ratio(base, cand, paired=True,
                                      n_resamples=config.bootstrap_resamples, seed=config.seed)
    return Comparison(batch=batch, baseline=baseline, candidate=candidate, speedup=speedup,
                      speedup_ci95=ci, rounds=len(base))


def _measure_memory(models: Mapping[str, Runner], inputs_by_batch: Mapping[int, np.ndarray],
                    config: BenchConfig, progress: Optional[ProgressCallback]):
    """Each model alone, before any timing, batches ascending; growth counts from the RSS
    before that model's first run."""
    if config.memory_iterations == 0:
        return {}, None
    result, method = {}, None
    total = len(models) * len(config.batch_sizes)
    for i, (name, runner) in enumerate(models.items()):
        rss_base = current_rss_mb()
        for j, batch in enumerate(sorted(config.batch_sizes)):
            x = inputs_by_batch[batch]
            m = measure_run(lambda: runner.run(x), config.memory_iterations,
                            device=str(getattr(runner, "device", "cpu")), rss_before_mb=rss_base)
            result[(name, batch)], method = m, m.method
            report(progress, "memory", i * len(config.batch_sizes) + j + 1, total)
    return result, method


# --- benchmarking ONNX files on a target ---------------------------------------------------


def benchmark_files(files: Mapping[str, Path], shape: Sequence[Any], target: Any,
                     config: BenchConfig, progress: Optional[ProgressCallback],
                     accuracy: Mapping[str, float], source: Path) -> BenchResult:
    target_obj, target_name = _resolve_target(target, config.threads)
    if config.threads is None and getattr(target_obj, "intra_op_threads", None):
        config = replace(config, threads=int(target_obj.intra_op_threads))
    for file in files.values():
        batch_dim = onnx_input_dims(file)[0]
        if isinstance(batch_dim, int) and batch_dim > 0 and set(config.batch_sizes) != {batch_dim}:
            raise InputError(f"{file} has a fixed batch size of {batch_dim}; pass --batch "
                             f"{batch_dim} or export with a dynamic batch dimension")
    shape = tuple(shape)
    if len(shape) != 3 or not all(isinstance(d, int) and d > 0 for d in shape):
        raise InputError(f"input shape {list(shape)} is not a fixed [C, H, W]; "
                         "set input.shape in manifest.json")
    rng = np.random.default_rng(config.seed)
    inputs = {b: rng.standard_normal((b, *shape)).astype(np.float32) for b in config.batch_sizes}
    sources = [ModelSource(name, file) for name, file in files.items()]
    # Engines the folder lacks (a TensorRT plan for this GPU) are built here and thrown away after.
    with tempfile.TemporaryDirectory(prefix="edgeprune-engines-") as build_dir:
        loaders = _engine_loaders(target_obj, sources, Path(build_dir))
        runners, load_mb = open_runners(loaders, discard_first=bool(config.memory_iterations))
        try:
            result = benchmark(runners, inputs, config, target_name=target_name, progress=progress,
                               load_rss_mb=load_mb)
        finally:
            for runner in runners.values():
                runner.close()
    result = with_model_memory(result, shape, target_obj, config)
    return replace(result, accuracy_pct=dict(accuracy), source=str(source))


def with_model_memory(result: BenchResult, shape: Sequence[int], target: Any, config: BenchConfig) -> BenchResult:
    """`result` with the memory of each model file added to its entries (see below)."""
    return replace(result, entries=_with_model_memory(result.entries, tuple(shape), target, config))


def _with_model_memory(entries: Sequence[BenchEntry], shape: tuple[int, ...], target: Any, config: BenchConfig
                       ) -> tuple[BenchEntry, ...]:
    """Weight and activation bytes of every entry whose runner executes an ONNX graph as written
    (its `model_file`: FP32 and INT8 alike), and, on an ONNX Runtime CPU target with memory
    measurement on, the peak RSS of a fresh process per model file. Compiled engines (TensorRT
    plans, ExecuTorch programs) keep None here: their memory is not the ONNX file's (TensorRT
    reports its own device memory, `engine_memory_bytes`)."""
    from edgeprune.measure.memory import fresh_process_peak_rss
    from edgeprune.measure.onnx_memory import onnx_memory

    on_cpu_ort = (getattr(target, "runtime", None) == "onnxruntime"
                  and getattr(target, "device", None) == "cpu")
    files = {e.model_file for e in entries if e.model_file}
    fresh: dict[str, dict] = {}
    if on_cpu_ort and config.memory_iterations:
        for file in sorted(files):
            fresh[file] = fresh_process_peak_rss(file, shape, config.batch_sizes, config.threads or None,
                                                 config.memory_iterations)
    out = []
    for e in entries:
        if not e.model_file:
            out.append(e)
            continue
        memory = onnx_memory(e.model_file, e.batch)
        rss = fresh.get(e.model_file, {}).get(e.batch)
        out.append(replace(e, weight_bytes=memory.weight_bytes, activation_bytes=memory.activation_bytes,
                           activation_exact=memory.exact, activation_bound=memory.bound,
                           fresh_peak_rss_mb=rss.peak_rss_mb if rss else None,
                           fresh_runtime_rss_mb=rss.runtime_rss_mb if rss else None))
    return tuple(out)


def open_runners(loaders: Mapping[str, Callable[[], Runner]], *, discard_first: bool = True
                 ) -> tuple[dict[str, Runner], dict[str, float]]:
    """Open every runner, in order, with the RSS each one added when loaded.

    Runtime start-up (library import, thread pools, CUDA context) happens once per process; with
    `discard_first`, a first load that is closed at once keeps it from being charged to the
    first model. If one fails to open, those already open are closed.
    """
    if discard_first and loaders:
        next(iter(loaders.values()))().close()
    runners: dict[str, Runner] = {}
    load_mb: dict[str, float] = {}
    try:
        for name, load in loaders.items():
            before = current_rss_mb()
            runners[name] = load()
            load_mb[name] = max(0.0, current_rss_mb() - before)
    except BaseException:
        for runner in runners.values():
            runner.close()
        raise
    return runners, load_mb


def _engine_loaders(target: Any, sources: Sequence[ModelSource], build_dir: Path
                    ) -> dict[str, Callable[[], Runner]]:
    """What `target` runs for each model, from the engine registry (which refuses a target whose
    runtime cannot run here rather than measure something else under its name)."""
    from edgeprune.engines import bench_loaders

    return bench_loaders(target, sources, build_dir)


def _resolve_target(target: Any, threads: Optional[int]) -> tuple[Any, str]:
    """(Target or None, name). Thread count from the config overrides the target's."""
    if target is None:
        target = DEFAULT_TARGET
    if isinstance(target, (str, Path)):
        from edgeprune.targets import load_target

        target = load_target(str(target))
    if threads is not None and hasattr(target, "intra_op_threads"):
        if is_dataclass(target):
            target = replace(target, intra_op_threads=threads)
    return target, str(getattr(target, "name", target))


def onnx_input_dims(path: Path) -> list[Any]:
    """[N, C, H, W] of the first graph input that is not an initializer (symbolic dims as str)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # onnx raises several unrelated types for a bad file
        raise InputError(f"{path}: not a readable ONNX model ({error})") from None
    initializers = {i.name for i in model.graph.initializer}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else d.dim_param
                for d in value.type.tensor_type.shape.dim]
        return dims
    raise InputError(f"{path}: the ONNX graph has no input")
