"""Measure layer latencies on a target's runtime and build a model's latency table.

Measured as `edgeprune bench` measures: a time-based warm-up that is thrown away, then rounds in
random order over every point of a layer (interleaved, so drift on a shared machine hits all
alike), and the pooled median. The channel axis is sampled at a few rounding steps and refined by
bisection where the midpoint is not where the straight line says (a step in the kernels), so
timings are interpolated only where they are smooth.

`LayerProfiler` is the interface a back end implements (ONNX Runtime CPU here; TensorRT and
PyTorch-CUDA would time the same `LayerSpec`s with their own engines). `PROFILERS` maps a
target runtime to its profiler.

A layer alone is not a layer in a model: ONNX Runtime's CPU provider runs convolutions in a
blocked (NCHWc) layout and converts a whole model into it once, but a one-layer model pays a
ReorderInput and a ReorderOutput around its conv, which cost about as much as a depthwise conv
itself and grow with its channels. Timed whole, the standalone layers of mobilenet_v2 added up
to 2.2x the model and a plan the table called free of latency ran at 0.51 of dense. So the
ONNX Runtime profiler reads the layer's own kernels from the runtime's profiler (what runs inside
a model), leaving the reorders and the call overhead out.
"""
from __future__ import annotations

import abc
import math
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from time import perf_counter_ns
from typing import Callable, Optional, Sequence

import numpy as np

from edgeprune.errors import BackendUnavailableError
from edgeprune.latency.layers import LayerSite, LayerSpec
from edgeprune.latency.table import Fingerprint, LayerTable, ModelTable, PointCache, open_cache
from edgeprune.progress import ProgressCallback, report
from edgeprune.targets import Target

#: Relative and absolute (ms) deviation from the straight line above which an interval is bisected.
STEP_RELATIVE = 0.12
STEP_ABSOLUTE_MS = 0.02
INITIAL_SAMPLES = 4
MAX_SAMPLES_PER_AXIS = 9


class LayerProfiler(abc.ABC):
    """Times single layers and whole models on one target; one subclass per runtime."""

    def __init__(self, target: Target, *, warmup_s: float = 0.03, rounds: int = 7, min_burst_ms: float = 1.0,
                 seed: int = 0) -> None:
        self.target = target
        self.warmup_s, self.rounds, self.min_burst_ms = warmup_s, rounds, min_burst_ms
        self.rng = np.random.default_rng(seed)

    @classmethod
    def unavailable_reason(cls, target: Target) -> Optional[str]:
        """None when this profiler can time `target` here, else what is missing."""
        return None

    @abc.abstractmethod
    def fingerprint(self) -> Fingerprint:
        """What must match for a cached point to be reused."""

    @abc.abstractmethod
    def layer_runner(self, spec: LayerSpec) -> Callable[[], None]:
        """A callable that runs `spec` once, synchronously, on random inputs."""

    @abc.abstractmethod
    def model_runner(self, onnx_path: Path, input_shape: Sequence[int]) -> Callable[[], None]:
        """A callable that runs the whole model once at the target's first batch size."""

    #: The clock `time` reads: "wall" (perf_counter) or "thread-cpu" (the calling thread's CPU time).
    clock = "wall"

    def _timed(self, run: Callable[[], None]) -> int:
        return _timed_cpu(run) if self.clock == "thread-cpu" else _timed(run)

    def time(self, runners: Sequence[Callable[[], None]]) -> list[float]:
        """Pooled median ms of each runner, interleaved in random order over `rounds` rounds."""
        bursts = []
        for run in runners:
            warm = []
            deadline = perf_counter_ns() + int(self.warmup_s * 1e9)
            while len(warm) < 2 or perf_counter_ns() < deadline:
                warm.append(self._timed(run))
            estimate_ms = float(np.median(warm[len(warm) // 2:])) / 1e6
            bursts.append(max(1, math.ceil(self.min_burst_ms / max(estimate_ms, 1e-6))))
        for run in runners:
            getattr(run, "mark", lambda: None)()  # what ran so far was warm-up
        samples: list[list[float]] = [[] for _ in runners]
        for _ in range(self.rounds):
            for i in self.rng.permutation(len(runners)):
                samples[i].extend(self._timed(runners[i]) / 1e6 for _ in range(bursts[i]))
        # A runner that can read its own kernels' time (see `KernelTimedLayer`) reports that instead,
        # unless the profile lost its events (then the clock's samples stand).
        times = []
        for run, s in zip(runners, samples):
            kernel = getattr(run, "kernel_ms", lambda: None)()
            times.append(float(np.median(s)) if kernel is None else float(kernel))
        return times


def _timed(run: Callable[[], None]) -> int:
    t0 = perf_counter_ns()
    run()
    return perf_counter_ns() - t0


def _timed_cpu(run: Callable[[], None]) -> int:
    t0 = time.thread_time_ns()
    run()
    return time.thread_time_ns() - t0


class OnnxRuntimeProfiler(LayerProfiler):
    """Single-layer ONNX graphs (Conv or Gemm, random weights) in sessions set up as the target's.

    With one intra-op thread ONNX Runtime runs every kernel on the calling thread, so the table
    is timed on that thread's CPU clock: on a machine shared with other jobs, wall time of a long
    kernel grows with the neighbours' load (it is preempted more often than a short one), which
    makes layers timed minutes apart incomparable. The closed loop still measures wall time."""

    def __init__(self, target: Target, **options) -> None:
        super().__init__(target, **options)
        self.clock = "thread-cpu" if target.intra_op_threads == 1 else "wall"
        self._profile_dir = tempfile.TemporaryDirectory(prefix="edgeprune-ort-profile-")
        self._profiles = 0

    @classmethod
    def unavailable_reason(cls, target: Target) -> Optional[str]:
        from edgeprune.engines import unavailable_reason

        if target.precision != "fp32":
            return (f"latency tables are built for fp32 ONNX Runtime targets only, not {target.precision}; "
                    "use --budget params or flops for this target")
        return unavailable_reason(target)

    def fingerprint(self) -> Fingerprint:
        import onnxruntime

        from edgeprune.measure.environment import environment

        env = environment(threads=self.target.intra_op_threads or None)
        return Fingerprint(
            machine=f"{env['cpu_model']} ({env['machine']})", cores=int(env.get("available_cores") or 0),
            runtime="onnxruntime", runtime_version=onnxruntime.__version__,
            providers=tuple(self.target.execution_providers), intra_op_threads=self.target.intra_op_threads,
            inter_op_threads=self.target.inter_op_threads, precision=self.target.precision,
            graph_optimization_level=self.target.graph_optimization_level,
            clock=f"layers: runtime profiler kernels; models: {self.clock}")

    def _session(self, model_bytes_or_path, *, profiled: bool = False):
        import onnxruntime as ort

        from edgeprune.engines.onnxruntime import provider_list, session_options

        options = session_options(self.target)
        if profiled:  # the runtime names its file after the start time: one prefix per session
            self._profiles += 1
            options.enable_profiling = True
            options.profile_file_prefix = str(Path(self._profile_dir.name) / f"layer{self._profiles}")
        return ort.InferenceSession(model_bytes_or_path, options, providers=provider_list(self.target))

    def layer_runner(self, spec: LayerSpec) -> "KernelTimedLayer":
        session = self._session(_single_layer_onnx(spec, self.rng), profiled=True)
        shape = (spec.batch, spec.cin, *spec.spatial) if spec.op == "conv2d" else (spec.batch, spec.cin)
        return KernelTimedLayer(session, {"x": self.rng.standard_normal(shape).astype(np.float32)})

    def model_runner(self, onnx_path: Path, input_shape: Sequence[int]) -> Callable[[], None]:
        session = self._session(str(onnx_path))
        name = session.get_inputs()[0].name
        feed = {name: self.rng.standard_normal((self.target.opt_batch, *input_shape)).astype(np.float32)}
        return lambda: session.run(None, feed)


#: Nodes the runtime adds around a lone layer that a whole model does not run per layer.
LAYOUT_NODES = ("ReorderInput", "ReorderOutput")


class KernelTimedLayer:
    """One layer's session with ONNX Runtime's profiler on. Calling it runs the layer once;
    `kernel_ms()` ends the profile and returns the median, over the runs after `mark()`, of the
    summed durations of the layer's own kernels (layout reorders excluded)."""

    def __init__(self, session, feed: dict) -> None:
        self.session, self.feed = session, feed
        self.calls, self.marked = 0, 0

    def __call__(self) -> None:
        self.session.run(None, self.feed)
        self.calls += 1

    def mark(self) -> None:
        self.marked = self.calls

    def kernel_ms(self) -> Optional[float]:
        import json

        path = Path(self.session.end_profiling())
        try:
            events = json.loads(path.read_text(encoding="utf-8"))
        finally:
            path.unlink(missing_ok=True)
        timed = kernel_times_per_run(events)[self.marked:]
        return float(np.median(timed)) / 1000.0 if timed else None


def kernel_times_per_run(events: list) -> list[float]:
    """Per run, the summed kernel microseconds of every node but the layout reorders, from an
    ONNX Runtime profile (each run lists every node's `*_kernel_time` event, in order)."""
    kernels = [e for e in events if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time")
               and (e.get("args") or {}).get("op_name") not in LAYOUT_NODES]
    per_run = len({e["name"] for e in kernels}) or 1
    return [float(sum(e["dur"] for e in kernels[i:i + per_run])) for i in range(0, len(kernels), per_run)]


def _single_layer_onnx(spec: LayerSpec, rng: np.random.Generator) -> bytes:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if spec.op == "conv2d":
        weight = rng.standard_normal((spec.cout, spec.cin // spec.groups, *spec.kernel)).astype(np.float32)
        node = helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=list(spec.kernel),
                                strides=list(spec.stride), pads=list(spec.padding) * 2,
                                dilations=list(spec.dilation), group=spec.groups)
        x_shape = [spec.batch, spec.cin, *spec.spatial]
    else:
        weight = rng.standard_normal((spec.cout, spec.cin)).astype(np.float32)
        node = helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)
        x_shape = [spec.batch, spec.cin]
    bias = rng.standard_normal(spec.cout).astype(np.float32)
    graph = helper.make_graph(
        [node], "layer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 9)
    return model.SerializeToString()


#: Target runtime -> the profiler that times layers there.
PROFILERS: dict[str, type[LayerProfiler]] = {"onnxruntime": OnnxRuntimeProfiler}


def profiler_for(target: Target, **options) -> LayerProfiler:
    """The profiler of `target`'s runtime; a clear one-line error where it cannot run here."""
    cls = PROFILERS.get(target.runtime)
    if cls is None:
        raise BackendUnavailableError(
            f"no latency profiler for {target.runtime} targets ({target.name}) in this edgeprune: "
            "use --budget params or flops, or a cpu-x86 target")
    reason = cls.unavailable_reason(target)
    if reason is not None:
        raise BackendUnavailableError(
            f"cannot measure latency for target {target.name} here: {reason}; "
            "run `edgeprune profile` and the latency-budgeted export on that device")
    return cls(target, **options)


def axis_candidates(full: int, step: int) -> list[int]:
    """Channel counts a plan may choose on one axis: multiples of `step`, and `full` itself."""
    return sorted(set(range(step, full + 1, step)) | {full})


def build_model_table(sites: Sequence[LayerSite], dense_onnx: Path, input_shape: Sequence[int],
                      profiler: LayerProfiler, round_to: int, *, cache_dir: Optional[Path] = None,
                      progress: Optional[ProgressCallback] = None) -> ModelTable:
    """Tables for every layer of `sites` (unique specs measured once, cached points reused) and the
    dense model's whole latency on the target."""
    started = time.perf_counter()
    cache = open_cache(profiler.fingerprint(), cache_dir)
    unique: dict[str, LayerSpec] = {}
    free: dict[str, tuple[bool, bool]] = {}  # does any site of this spec change its cin / cout?
    for site in sites:
        unique.setdefault(site.spec.key, site.spec)
        cin_free, cout_free = free.get(site.spec.key, (False, False))
        free[site.spec.key] = (cin_free or bool((site.in_units >= 0).any()),
                               cout_free or bool((site.out_units >= 0).any()))
    tables: dict[str, LayerTable] = {}
    measured = 0
    task = "latency table"
    report(progress, task, 0, len(unique) + 1)
    for i, (key, spec) in enumerate(unique.items()):
        tables[key], count = _layer_table(spec, profiler, cache, round_to, *free[key])
        measured += count
        report(progress, task, i + 1, len(unique) + 1)
        if count:
            cache.save()  # an interrupted build keeps what it measured
    tables = _common_scale(tables, unique, profiler)
    dense_ms = profiler.time([profiler.model_runner(dense_onnx, input_shape)])[0]
    report(progress, task, len(unique) + 1, len(unique) + 1)
    cache.save()
    return ModelTable(tuple(tables[s.spec.key] for s in sites), dense_ms, cache.fingerprint, measured,
                      cache.reused, time.perf_counter() - started, cache.path, cache.note)


def _common_scale(tables: dict[str, LayerTable], unique: dict[str, LayerSpec], profiler: LayerProfiler
                  ) -> dict[str, LayerTable]:
    """Every layer at full width once more, all interleaved in the same rounds, and each table
    scaled to that: the plan weighs layers against each other, so their relative costs must come
    from one measurement, not from batches taken minutes apart (or read from the cache) under
    whatever load the machine had then."""
    keys = list(unique)
    now = profiler.time([profiler.layer_runner(unique[k]) for k in keys])
    scaled = {}
    for key, ms in zip(keys, now):
        table = tables[key]
        factor = ms / table.full_ms if table.full_ms > 0 else 1.0
        scaled[key] = replace(table, cin_ms=tuple(v * factor for v in table.cin_ms),
                              cout_ms=tuple(v * factor for v in table.cout_ms))
    return scaled


def _measure(specs: Sequence[LayerSpec], profiler: LayerProfiler, cache: PointCache,
             reference: Optional[LayerSpec] = None) -> int:
    """Measure the specs the cache lacks, interleaved; returns how many were measured.

    With a `reference` already in the cache, it runs again in the same rounds and the new points
    are scaled by cached / now, so batches of one layer measured minutes apart under different
    load on a shared machine stay comparable."""
    missing = list({s.key: s for s in specs if cache.get(s) is None}.values())
    if not missing:
        return 0
    anchored = reference is not None and cache.get(reference) is not None and reference.key not in {s.key for s in missing}
    runs = missing + ([reference] if anchored else [])
    times = profiler.time([profiler.layer_runner(s) for s in runs])
    factor = cache.get(reference) / times[-1] if anchored and times[-1] > 0 else 1.0
    for spec, ms in zip(missing, times):
        cache.put(spec, ms * factor, profiler.rounds)
    return len(missing)


def _refine_axis(candidates: list[int], at: Callable[[int], LayerSpec], profiler: LayerProfiler,
                 cache: PointCache, reference: Optional[LayerSpec] = None) -> tuple[list[int], int]:
    """Sample points of one axis: a few even ones, bisected where the midpoint is off the line."""
    picks = sorted({candidates[int(round(i))] for i in np.linspace(0, len(candidates) - 1,
                                                                    min(INITIAL_SAMPLES, len(candidates)))})
    measured = _measure([at(c) for c in picks], profiler, cache, reference)
    queue = list(zip(picks, picks[1:]))
    while queue and len(picks) < MAX_SAMPLES_PER_AXIS:
        batch = []
        for lo, hi in queue:
            inside = [c for c in candidates if lo < c < hi]
            if inside:
                batch.append((lo, inside[len(inside) // 2], hi))
        batch = batch[: MAX_SAMPLES_PER_AXIS - len(picks)]
        measured += _measure([at(mid) for _, mid, _ in batch], profiler, cache, reference)
        queue = []
        for lo, mid, hi in batch:
            picks.append(mid)
            a, b, m = cache.get(at(lo)), cache.get(at(hi)), cache.get(at(mid))
            line = a + (b - a) * (mid - lo) / (hi - lo)
            if abs(m - line) > max(STEP_RELATIVE * m, STEP_ABSOLUTE_MS):
                queue.extend([(lo, mid), (mid, hi)])
        picks.sort()
    return picks, measured


def _layer_table(spec: LayerSpec, profiler: LayerProfiler, cache: PointCache, round_to: int,
                 cin_free: bool = True, cout_free: bool = True) -> tuple[LayerTable, int]:
    """A layer's table: each axis that some plan can change refined alone, then a coarse check
    grid off the axes (see `LayerTable`)."""
    if spec.grouped:
        if not (cin_free or cout_free):
            return LayerTable(spec, (), (), (spec.cout,), (_one(spec, profiler, cache),)), int(cache.get(spec) is None)
        per_out = spec.cout // spec.groups
        step = per_out * round_to // math.gcd(per_out, round_to)
        measured = _measure([spec], profiler, cache)
        couts, more = _refine_axis(axis_candidates(spec.cout, step), lambda c: spec.at(0, c), profiler, cache, spec)
        return LayerTable(spec, (), (), tuple(couts), tuple(cache.get(spec.at(0, c)) for c in couts)), measured + more
    cin_step = round_to if spec.cin > round_to else spec.cin
    cins, m1 = [spec.cin], 0
    couts, m2 = [spec.cout], 0
    m0 = _measure([spec], profiler, cache)  # the full layer first: every later batch is anchored to it
    if cin_free:
        cins, m1 = _refine_axis(axis_candidates(spec.cin, cin_step), lambda c: spec.at(c, spec.cout), profiler,
                                cache, spec)
    if cout_free:
        couts, m2 = _refine_axis(axis_candidates(spec.cout, min(round_to, spec.cout)),
                                 lambda c: spec.at(spec.cin, c), profiler, cache, spec)
    m1 += m0
    cin_ms = tuple(cache.get(spec.at(c, spec.cout)) for c in cins)
    cout_ms = tuple(cache.get(spec.at(spec.cin, c)) for c in couts)
    table = LayerTable(spec, tuple(cins), cin_ms, tuple(couts), cout_ms)
    if len(cins) < 2 or len(couts) < 2:
        return table, m1 + m2
    check_cin, check_cout = _coarse(cins), _coarse(couts)
    grid = [spec.at(a, b) for a in check_cin for b in check_cout]
    m3 = _measure(grid, profiler, cache, spec)
    ratio = tuple(tuple(cache.get(spec.at(a, b)) / table.separable_ms(a, b) for b in check_cout) for a in check_cin)
    return LayerTable(spec, tuple(cins), cin_ms, tuple(couts), cout_ms, check_cin, check_cout, ratio), m1 + m2 + m3


def _coarse(points: Sequence[int]) -> tuple[int, ...]:
    """The smallest, a middle and the largest sampled count."""
    return tuple(sorted({points[0], points[len(points) // 2], points[-1]}))


def _one(spec: LayerSpec, profiler: LayerProfiler, cache: PointCache) -> float:
    _measure([spec], profiler, cache)
    return cache.get(spec)
