"""Where the points of a sweep run: in this process (`local`) or as Ray tasks (`ray`).

The driver (workflows.sweep) builds each dense model's context and importance and hands the
executor one `PointJob` per point still to do; the executor runs them and gives every
`PointOutcome` back to the driver as soon as it is known, and the driver alone writes files. So
resume, the record format and the figures do not depend on the executor. A point that raises is
retried a bounded number of times, then reported as failed with its error; the other points go
on. On Ctrl-C the Ray executor first collects what has finished, then cancels the rest.
"""
from __future__ import annotations

import tempfile
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from edgeprune.errors import BackendUnavailableError, InputError
from edgeprune.progress import ProgressCallback
from edgeprune.workflows.recipe import Importance
from edgeprune.workflows.sweep_run import DenseContext, SweepRecord, run_key, run_one

EXECUTORS = ("local", "ray")
RAY_INSTALL_HINT = "pip install 'edgeprune[ray]'"
DEFAULT_RETRIES = 1


@dataclass(frozen=True)
class SweepPoint:
    """One cell of the grid: a criterion, a seed and a keep ratio."""

    criterion: str
    seed: int
    keep: float

    @property
    def key(self) -> str:
        return run_key(self.criterion, self.seed, self.keep)


@dataclass(frozen=True)
class PointSettings:
    """What every point of one sweep shares: the sweep's config, the loaded target, the fingerprint."""

    config: Any  # SweepConfig (a runtime import of workflows.sweep would be circular)
    target: Any  # targets.Target
    fingerprint: str


@dataclass(frozen=True)
class PointJob:
    """A point still to run, with the dense model's context and the criterion's importance."""

    point: SweepPoint
    context: DenseContext
    importance: Importance


@dataclass(frozen=True)
class PointOutcome:
    """A finished point: its record, or the error of its last attempt (`record` is then None)."""

    point: SweepPoint
    record: Optional[SweepRecord]
    error: Optional[str] = None
    traceback: Optional[str] = None
    attempts: Optional[int] = 1  # None: the executor cannot tell (Ray retries inside)

    @property
    def failed(self) -> bool:
        return self.record is None

    def failure_dict(self, fingerprint: str) -> dict[str, Any]:
        return {"key": self.point.key, "criterion": self.point.criterion, "seed": self.point.seed,
                "keep": self.point.keep, "fingerprint": fingerprint, "error": self.error,
                "attempts": self.attempts, "traceback": self.traceback}


PointFunction = Callable[[DenseContext, Importance, SweepPoint, PointSettings], SweepRecord]
OutcomeCallback = Callable[[PointOutcome], None]


def run_point(context: DenseContext, importance: Importance, point: SweepPoint, settings: PointSettings,
              progress: Optional[ProgressCallback] = None) -> SweepRecord:
    """One point in a private temporary folder (so points can run side by side)."""
    with tempfile.TemporaryDirectory(prefix=f"edgeprune-{point.key}-") as tmp:
        return run_one(context, point.criterion, point.seed, point.keep, importance, settings.config,
                       settings.target, settings.fingerprint, Path(tmp), progress)


def point_resources(config: Any, target: Any) -> dict[str, float]:
    """The Ray resources one point asks for: the CPU threads its target's runtime is set to (one
    when it says "runtime default") and one GPU when the target runs on one."""
    threads = (config.bench.threads if config.bench is not None else None) or target.intra_op_threads or 1
    return {"num_cpus": float(threads), "num_gpus": 0.0 if target.device == "cpu" else 1.0}


def _describe(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


# --- in this process -------------------------------------------------------------------------------


@dataclass
class LocalExecutor:
    """Today's behaviour: the points one after another in this process, each retried `retries`
    times before it is reported as failed."""

    retries: int = DEFAULT_RETRIES
    point_fn: Optional[PointFunction] = None
    name: str = field(default="local", init=False)

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise InputError(f"--retries must be >= 0, got {self.retries}")

    def run(self, jobs: Iterable[PointJob], settings: PointSettings, on_outcome: OutcomeCallback,
            progress: Optional[ProgressCallback] = None) -> None:
        for job in jobs:
            on_outcome(self._attempt(job, settings, progress))

    def _attempt(self, job: PointJob, settings: PointSettings, progress: Optional[ProgressCallback]) -> PointOutcome:
        last: Optional[Exception] = None
        trace = None
        for attempt in range(1, self.retries + 2):
            try:
                if self.point_fn is None:
                    record = run_point(job.context, job.importance, job.point, settings, progress)
                else:
                    record = self.point_fn(job.context, job.importance, job.point, settings)
                return PointOutcome(job.point, record, attempts=attempt)
            except Exception as error:  # recorded with its type, message and traceback; never reclassified
                last, trace = error, traceback.format_exc()
        return PointOutcome(job.point, None, _describe(last), trace, attempts=self.retries + 1)


# --- Ray ---------------------------------------------------------------------------------------------


def import_ray():
    """Ray, or a one-line error naming the extra to install."""
    try:
        import ray
    except ImportError as error:
        raise BackendUnavailableError(f"--executor ray needs Ray, which is not installed ({error.name}); "
                                      f"install it with: {RAY_INSTALL_HINT}") from None
    return ray


@dataclass(frozen=True)
class _Shipped:
    """A dense context as it travels through the object store: with the dense ONNX file's bytes,
    since a worker on another node cannot read the driver's temporary folder."""

    context: DenseContext
    dense_onnx: Optional[bytes]


def _ship(context: DenseContext) -> _Shipped:
    data = Path(context.dense_onnx).read_bytes() if context.dense_onnx is not None else None
    return _Shipped(context, data)


def _ray_point(shipped: _Shipped, importance: Importance, point: SweepPoint, settings: PointSettings,
               point_fn: Optional[PointFunction]) -> SweepRecord:
    """The body of one Ray task (runs in a worker): unpack the dense ONNX locally, run the point."""
    from dataclasses import replace

    with tempfile.TemporaryDirectory(prefix="edgeprune-dense-") as tmp:
        context = shipped.context
        if shipped.dense_onnx is not None:
            path = Path(tmp) / "dense.onnx"
            path.write_bytes(shipped.dense_onnx)
            context = replace(context, dense_onnx=path)
        if point_fn is None:
            return run_point(context, importance, point, settings)
        return point_fn(context, importance, point, settings)


@dataclass
class RayExecutor:
    """One Ray task per point, with the resources its target needs (`point_resources`).

    `address=None` starts a private local Ray (with `num_cpus` CPUs, default all); "auto" or
    "ray://host:port" joins a cluster, whose nodes need the same edgeprune and torch installed.
    A Ray already initialised in this process is used as it is and left running. Each dense
    context is put into the object store once and shared by all of its points. Failed tasks are
    retried by Ray (`max_retries=retries`, application errors included).
    """

    address: Optional[str] = None
    retries: int = DEFAULT_RETRIES
    num_cpus: Optional[int] = None
    point_fn: Optional[PointFunction] = None
    poll_s: float = 0.5
    name: str = field(default="ray", init=False)

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise InputError(f"--retries must be >= 0, got {self.retries}")
        if self.num_cpus is not None and self.num_cpus < 1:
            raise InputError(f"Ray needs at least one CPU, got {self.num_cpus}")

    def run(self, jobs: Iterable[PointJob], settings: PointSettings, on_outcome: OutcomeCallback,
            progress: Optional[ProgressCallback] = None) -> None:
        ray = import_ray()
        started_here = not ray.is_initialized()
        if started_here:
            ray.init(address=self.address, num_cpus=self.num_cpus if self.address is None else None,
                     include_dashboard=False, log_to_driver=False, configure_logging=False)
        pending: dict[Any, SweepPoint] = {}
        try:
            task = ray.remote(_ray_point).options(**point_resources(settings.config, settings.target),
                                                  max_retries=self.retries, retry_exceptions=True)
            settings_ref = ray.put(settings)
            shipped: dict[int, Any] = {}
            importances: dict[int, Any] = {}
            for job in jobs:
                if id(job.context) not in shipped:
                    shipped[id(job.context)] = ray.put(_ship(job.context))
                if id(job.importance) not in importances:
                    importances[id(job.importance)] = ray.put(job.importance)
                ref = task.remote(shipped[id(job.context)], importances[id(job.importance)], job.point,
                                  settings_ref, self.point_fn)
                pending[ref] = job.point
                self._collect(ray, pending, on_outcome, wait_s=0)
            while pending:
                self._collect(ray, pending, on_outcome, wait_s=self.poll_s)
        except BaseException:
            # Ctrl-C (or a driver-side error): keep what has finished, cancel what has not.
            try:
                self._collect(ray, pending, on_outcome, wait_s=0)
            finally:
                for ref in pending:
                    ray.cancel(ref, force=True)
            raise
        finally:
            if started_here:
                ray.shutdown()

    def _collect(self, ray, pending: dict, on_outcome: OutcomeCallback, wait_s: float) -> None:
        """Hand every finished task's outcome to the driver (waiting up to `wait_s` for one)."""
        if not pending:
            return
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=wait_s)
        if ready:
            ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0)
        for ref in ready:
            point = pending.pop(ref)
            try:
                outcome = PointOutcome(point, ray.get(ref), attempts=None)
            except ray.exceptions.RayTaskError as error:
                cause = error.cause if error.cause is not None else error
                outcome = PointOutcome(point, None, _describe(cause), str(error), attempts=self.retries + 1)
            except ray.exceptions.RayError as error:  # worker died, node lost, task cancelled
                outcome = PointOutcome(point, None, _describe(error), None, attempts=self.retries + 1)
            on_outcome(outcome)


def make_executor(name: str, *, address: Optional[str] = None, retries: int = DEFAULT_RETRIES,
                  num_cpus: Optional[int] = None):
    """The executor called `name`; Ray's presence is checked here, before any work starts."""
    if name == "local":
        if address is not None:
            raise InputError("--ray-address needs --executor ray")
        return LocalExecutor(retries=retries)
    if name == "ray":
        import_ray()
        return RayExecutor(address=address, retries=retries, num_cpus=num_cpus)
    raise InputError(f"--executor must be one of {', '.join(EXECUTORS)}, got {name!r}")
