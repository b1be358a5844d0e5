"""Accuracy and latency against sparsity, over seeds and criteria: `edgeprune sweep`.

For every seed x criterion x keep ratio the dense model is planned, shrunk, fine-tuned (seeded),
evaluated, exported to ONNX and benchmarked against the dense ONNX, interleaved in one run. Each
finished run is written atomically to `OUT/runs/<criterion>-s<seed>-k<keep>.json`, so an
interrupted sweep resumes where it stopped; a run recorded under other settings is an error
(or, with `force`, redone) rather than silently mixed in. Learned gates are learned once per dense
model and saved with it (the run's `gates.pt`), then reused for every keep ratio and seed.
"""
from __future__ import annotations

import hashlib
import json
import shlex
import tempfile
import time
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from edgeprune.measure.results import BenchConfig
from edgeprune.importance.criteria import CRITERIA
from edgeprune.errors import InputError, OutputExistsError, RunError
from edgeprune.fileio import read_json_object, sha256_file, write_json_atomic, write_text_atomic
from edgeprune.importance.gates import GateConfig
from edgeprune.plan import BUDGETS, PlanConfig
from edgeprune.targets import DEFAULT_TARGET
from edgeprune.workflows.recipe import FinetuneRecipe
from edgeprune.progress import ProgressCallback, report
from edgeprune.report.sweep_rules import SweepEvidence, SweepJudgement, judge_sweep
from edgeprune.workflows.sweep_run import DenseContext, DenseModel, SweepRecord, run_key
from edgeprune.workflows.sweep_stats import AggregateRow, OperatingPoint, aggregate, csv_text, operating_point, pareto_front

SWEEP_SCHEMA_VERSION = 1
DEFAULT_KEEPS = (0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1)
#: Short but honest: time-based warm-up, both a duration and a count, interleaved rounds.
DEFAULT_SWEEP_BENCH = BenchConfig(warmup_s=0.1, min_iterations=60, min_seconds=0.5, rounds=10,
                                  batch_sizes=(1,), memory_iterations=0, bootstrap_resamples=500)


@dataclass(frozen=True)
class SweepConfig:
    """The grid (keeps x seeds x criteria) and the settings every run of it shares.

    `seeds` may be a count (3 means seeds 0, 1, 2) or the seeds themselves. Seeds drive the
    fine-tune (and the random and taylor criteria); with `retrain_dense` each seed also trains
    its own dense model. `bench=None` skips ONNX export and latency.
    """

    keeps: tuple[float, ...] = DEFAULT_KEEPS
    seeds: Any = 3
    criteria: tuple[str, ...] = ("gate",)
    retrain_dense: bool = False
    finetune_epochs: int = FinetuneRecipe.epochs
    finetune_lr: float = FinetuneRecipe.lr
    distill_weight: float = 0.5  # distillation from the dense model while fine-tuning; 0: labels only
    steps: int = 1  # gradual pruning in this many steps (workflows.gradual); 1: one-shot
    #: Every criterion spends the same epochs in all (`recipe.compute_epochs`): those without a
    #: gate or sparsity phase fine-tune that much longer, gradual recovery comes out of the fine-tune.
    equal_compute: bool = True
    gate: GateConfig = GateConfig()
    bench: Optional[BenchConfig] = DEFAULT_SWEEP_BENCH
    target: str = DEFAULT_TARGET
    budget: str = "params"
    round_to: Optional[int] = None  # None: the target's channel rounding
    min_channels: int = 8
    tolerance_points: float = 1.0

    def __post_init__(self) -> None:
        seeds = self.seeds
        if isinstance(seeds, (int, np.integer)) and not isinstance(seeds, bool):
            if seeds < 1:
                raise InputError(f"--seeds must be a count >= 1 or a list of seeds, got {seeds}")
            seeds = tuple(range(int(seeds)))
        seeds = tuple(int(s) for s in seeds)
        keeps = tuple(float(k) for k in self.keeps)
        criteria = tuple(str(c) for c in self.criteria)
        for name, values in (("--seeds", seeds), ("--keep", keeps), ("--criterion", criteria)):
            if not values:
                raise InputError(f"{name} needs at least one value")
            if len(set(values)) != len(values):
                raise InputError(f"{name} has duplicates: {', '.join(map(str, values))}")
        for keep in keeps:
            PlanConfig(keep=keep, budget=self.budget, min_channels=self.min_channels)  # same errors as prune
        unknown = [c for c in criteria if c not in CRITERIA]
        if unknown:
            raise InputError(f"unknown criterion {unknown[0]!r}; choose from {', '.join(CRITERIA)}")
        if self.budget == "latency":  # each point would need its own closed loop on the target
            raise InputError("sweep takes --budget params or flops; for a latency budget run "
                             "`edgeprune export --budget latency --keep K` per keep")
        if self.budget not in BUDGETS:
            raise InputError(f"--budget must be one of {', '.join(BUDGETS)}, got {self.budget!r}")
        self.finetune_recipe  # validates the fine-tune settings
        from edgeprune.workflows.gradual import step_keeps

        step_keeps(0.5, self.steps)  # validates --steps
        for criterion in criteria:  # the epochs budget fits every criterion's phases
            self.epochs_for(criterion)
        if self.round_to is not None and self.round_to < 1:
            raise InputError(f"--round-to must be >= 1, got {self.round_to}")
        if not self.tolerance_points >= 0:
            raise InputError(f"--tolerance must be >= 0 accuracy points, got {self.tolerance_points}")
        object.__setattr__(self, "seeds", seeds)
        object.__setattr__(self, "keeps", tuple(sorted(keeps, reverse=True)))
        object.__setattr__(self, "criteria", criteria)

    @property
    def finetune_recipe(self) -> FinetuneRecipe:
        return FinetuneRecipe(epochs=self.finetune_epochs, lr=self.finetune_lr, distill_weight=self.distill_weight)

    def epochs_for(self, criterion: str) -> dict[str, int]:
        """The epochs of each phase of one point of `criterion` (see `recipe.compute_epochs`)."""
        from edgeprune.workflows.recipe import compute_epochs

        return compute_epochs(criterion, self.gate.max_epochs, self.finetune_epochs, self.steps,
                              equal_compute=self.equal_compute)

    def finetune_recipe_for(self, criterion: str) -> FinetuneRecipe:
        return replace(self.finetune_recipe, epochs=self.epochs_for(criterion)["finetune"])

    def settings(self) -> dict[str, Any]:
        """What changes the outcome of one run (the grid and the tolerance do not)."""
        return {
            "retrain_dense": self.retrain_dense, "finetune_epochs": self.finetune_epochs,
            "finetune_lr": self.finetune_lr, "distill_weight": self.distill_weight, "steps": self.steps,
            "equal_compute": self.equal_compute,
            "gate": self.gate.to_dict(),
            "bench": self.bench.to_dict() if self.bench is not None else None, "target": self.target,
            "budget": self.budget, "round_to": self.round_to, "min_channels": self.min_channels,
        }

    def to_dict(self) -> dict[str, Any]:
        return {**self.settings(), "keeps": list(self.keeps), "seeds": list(self.seeds),
                "criteria": list(self.criteria), "tolerance_points": self.tolerance_points}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SweepConfig":
        values = {f.name: data[f.name] for f in fields(cls) if f.name in data}
        if isinstance(values.get("gate"), Mapping):
            values["gate"] = GateConfig.from_dict(dict(values["gate"]))
        if isinstance(values.get("bench"), Mapping):
            values["bench"] = BenchConfig.from_dict(dict(values["bench"]))
        return cls(**values)


@dataclass(frozen=True)
class SweepResult:
    """Every record of the grid, their summaries, the judged operating point and the files written.

    `operating_point` is the recommendation: None when no keep ratio is within tolerance or when
    the rules withhold it (`judgement` says why); `candidate` is what the tolerance rule picked.
    """

    out_dir: Path
    config: SweepConfig
    records: tuple[SweepRecord, ...]
    aggregates: tuple[AggregateRow, ...]
    dense_accuracy_pct: float
    operating_point: Optional[OperatingPoint]
    operating_points: dict[str, Optional[OperatingPoint]]
    pareto: tuple[dict[str, Any], ...]
    runs_done: int
    runs_reused: int
    judgement: SweepJudgement
    candidate: Optional[OperatingPoint] = None
    chance_accuracy_pct: Optional[float] = None
    files: tuple[Path, ...] = field(default_factory=tuple)
    seconds: float = 0.0
    failed: tuple[dict[str, Any], ...] = field(default_factory=tuple)  # points that failed after retries


# --- entry points -----------------------------------------------------------------------------------


def run_sweep(run_dir: Path, out_dir: Path, config: SweepConfig = SweepConfig(),
              progress: Optional[ProgressCallback] = None, *, force: bool = False,
              command: Optional[str] = None, executor: Any = None) -> SweepResult:
    """Sweep the dense model of `run_dir` (see module docstring) into `out_dir`.

    With `config.retrain_dense`, seed s trains its own dense model into `out_dir/dense/s<s>`
    with the run's recipe (kept, so a resumed sweep does not train it again).
    """
    from edgeprune.training.runs import load_run, load_splits, train_run

    run_dir = Path(run_dir)
    run = load_run(run_dir)
    source = {"run": str(run_dir), "model": run.spec.model, "data": run.spec.data,
              "fingerprint": _run_fingerprint(run_dir)}
    cache: dict[str, DenseModel] = {}

    def dense_for(seed: int) -> DenseModel:
        if not config.retrain_dense:
            if "run" not in cache:
                cache["run"] = DenseModel(run_dir.name, run.model.eval(), load_splits(run.spec),
                                          tuple(run.spec.input_shape), run_dir / "gates.pt")
            return cache["run"]
        seed_dir = Path(out_dir) / "dense" / f"s{seed}"
        if (seed_dir / "dense.pt").is_file():
            seeded = load_run(seed_dir)
        else:
            train_config = replace(_train_config_of(run.spec, run_dir), seed=seed)
            seeded = train_run(seed_dir, run.spec.model, run.spec.data, train_config, progress=progress)
        return DenseModel(f"s{seed}", seeded.model.eval(), load_splits(seeded.spec),
                          tuple(seeded.spec.input_shape), seed_dir / "gates.pt")

    if command is None:
        command = sweep_command(run_dir, out_dir, config, force=force)
    return sweep_dense(dense_for, out_dir, config, source=source, progress=progress, force=force, command=command,
                       executor=executor)


def _train_config_of(spec: Any, run_dir: Path):
    """The dense recipe recorded in run.json, so a per-seed dense model is trained the same way."""
    from edgeprune.training.train import TrainConfig

    for name in ("train", "train_config", "config"):
        value = getattr(spec, name, None)
        if isinstance(value, TrainConfig):
            return value
        if isinstance(value, Mapping):
            return TrainConfig.from_dict(value)
    raise RunError(f"{run_dir}/run.json records no training recipe; re-run `edgeprune train` to use --retrain-dense")


def sweep_dense(dense_for: Callable[[int], DenseModel], out_dir: Path, config: SweepConfig, *,
                source: Mapping[str, Any], progress: Optional[ProgressCallback] = None,
                force: bool = False, command: Optional[str] = None, executor: Any = None) -> SweepResult:
    """The sweep over in-memory dense models: `dense_for(seed)` gives the model seed s prunes.

    `source["fingerprint"]` identifies the dense models; with the settings it decides whether a
    recorded run can be reused. `executor` (workflows.sweep_executors, default local) decides
    where the points run; whatever it is, this driver alone writes the files. A point that still
    fails after its retries is written to `OUT/failed/<key>.json` and listed in `sweep.json`;
    it is tried again by the next run of the same sweep.
    """
    from edgeprune.targets import load_target
    from edgeprune.workflows.sweep_executors import LocalExecutor, PointJob, PointSettings, SweepPoint

    started = time.perf_counter()
    executor = executor if executor is not None else LocalExecutor()
    out_dir = Path(out_dir)
    runs_dir, failed_dir = out_dir / "runs", out_dir / "failed"
    target = load_target(config.target)
    settings = config.settings()
    fingerprint = _fingerprint({"settings": settings, "source": source.get("fingerprint")})
    finished = _load_finished(runs_dir, fingerprint, settings, force)
    write_json_atomic(out_dir / "settings.json", {"schema_version": SWEEP_SCHEMA_VERSION,
                                                  "fingerprint": fingerprint, "settings": settings,
                                                  "source": dict(source)})
    for path in sorted(failed_dir.glob("*.json")) if failed_dir.is_dir() else []:
        path.unlink()  # every failed point is tried again now
    grid = [(seed, criterion, keep) for seed in config.seeds for criterion in config.criteria
            for keep in config.keeps]
    reused = sum(run_key(c, s, k) in finished for s, c, k in grid)
    failures: dict[str, dict[str, Any]] = {}
    report(progress, "sweep runs", reused, len(grid))

    def jobs():
        """Point jobs in grid order; a dense model's context is built once, when its first point is due."""
        contexts: dict[int, DenseContext] = {}
        with tempfile.TemporaryDirectory(prefix="edgeprune-sweep-") as tmp:
            for seed in config.seeds:
                todo = [(c, k) for c in config.criteria for k in config.keeps if run_key(c, seed, k) not in finished]
                if not todo:
                    continue
                dense = dense_for(seed)
                if id(dense) not in contexts:
                    contexts[id(dense)] = DenseContext.build(dense, config, Path(tmp), progress)
                context = contexts[id(dense)]
                for criterion in config.criteria:
                    keeps = [k for c, k in todo if c == criterion]
                    if keeps:
                        importance = context.importance(criterion, seed, config)
                        for keep in keeps:
                            yield PointJob(SweepPoint(criterion, seed, keep), context, importance)

    def on_outcome(outcome) -> None:
        key = outcome.point.key
        if outcome.failed:
            failures[key] = outcome.failure_dict(fingerprint)
            write_json_atomic(failed_dir / f"{key}.json", failures[key])
        else:
            write_json_atomic(runs_dir / f"{key}.json", outcome.record.to_dict())
            finished[key] = outcome.record
        report(progress, "sweep runs", len(finished) + len(failures), len(grid))

    job_iter = jobs()
    try:
        executor.run(job_iter, PointSettings(config, target, fingerprint), on_outcome, progress)
    finally:
        job_iter.close()  # removes the dense ONNX folder even when the executor stopped early
    order = sorted(grid, key=lambda g: (config.criteria.index(g[1]), -g[2], g[0]))
    records = tuple(finished[run_key(c, s, k)] for s, c, k in order if run_key(c, s, k) in finished)
    failed = tuple(failures[run_key(c, s, k)] for s, c, k in order if run_key(c, s, k) in failures)
    if not records:
        first = failed[0]
        raise RunError(f"all {len(grid)} sweep points failed (first, {first['key']}: {first['error']}); "
                       f"see {failed_dir}/ for the errors")
    return _summarise(out_dir, config, records, source, command, len(records) - reused, reused,
                      time.perf_counter() - started, failed)


def sweep_command(run_dir: Path, out_dir: Path, config: SweepConfig, *, force: bool = False) -> str:
    """The `edgeprune sweep` command line that reproduces `config` (recorded in sweep.json)."""
    seeds = config.seeds
    if seeds == tuple(range(len(seeds))):
        seeds_arg = str(len(seeds))
    else:
        seeds_arg = ",".join(map(str, seeds)) + ("," if len(seeds) == 1 else "")
    args = ["edgeprune", "sweep", "--run", str(run_dir), "--keep", ",".join(f"{k:g}" for k in config.keeps),
            "--seeds", seeds_arg, "--criterion", ",".join(config.criteria)]
    if config.retrain_dense:
        args.append("--retrain-dense")
    args += ["--finetune-epochs", str(config.finetune_epochs), "--finetune-lr", f"{config.finetune_lr:g}",
             "--distill-weight", f"{config.distill_weight:g}", "--steps", str(config.steps),
             *([] if config.equal_compute else ["--no-equal-compute"]),
             "--gate-epochs", str(config.gate.max_epochs), "--target", config.target, "--budget", config.budget]
    if config.round_to is not None:
        args += ["--round-to", str(config.round_to)]
    args += ["--min-channels", str(config.min_channels)]
    if config.bench is None:
        args += ["--bench-seconds", "0"]
    else:
        args += ["--bench-seconds", f"{config.bench.min_seconds:g}"]
        if config.bench.threads is not None:
            args += ["--bench-threads", str(config.bench.threads)]
    args += ["--tolerance", f"{config.tolerance_points:g}", "-o", str(out_dir)]
    if force:
        args.append("--force")
    return shlex.join(args)


# --- resume ------------------------------------------------------------------------------------------


def _fingerprint(payload: Mapping[str, Any]) -> str:
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _run_fingerprint(run_dir: Path) -> str:
    """Identity of a run's dense model: its weights and its spec (data, recipe, seed)."""
    parts = [sha256_file(run_dir / name) for name in ("dense.pt", "run.json") if (run_dir / name).is_file()]
    if not parts:
        raise RunError(f"{run_dir} has no dense.pt; train it first with `edgeprune train`")
    return hashlib.sha256("".join(parts).encode()).hexdigest()[:16]


def _load_finished(runs_dir: Path, fingerprint: str, settings: dict[str, Any], force: bool) -> dict[str, SweepRecord]:
    """Records made under the current settings; others are an error, or deleted with `force`."""
    finished: dict[str, SweepRecord] = {}
    stale: list[Path] = []
    for path in sorted(runs_dir.glob("*.json")) if runs_dir.is_dir() else []:
        try:
            record = SweepRecord.from_dict(read_json_object(path, RunError, "it is discarded with --force"))
        except (OSError, ValueError, TypeError, KeyError, RunError):
            stale.append(path)
            continue
        if record.fingerprint != fingerprint or path.stem != record.key:
            stale.append(path)
        else:
            finished[record.key] = record
    if stale and not force:
        changed = _changed_settings(runs_dir.parent / "settings.json", settings)
        raise OutputExistsError(
            f"{runs_dir} holds {len(stale)} run(s) recorded under other settings or another dense model"
            f"{' (changed: ' + changed + ')' if changed else ''}; pass --force to discard them and re-run, "
            "or write to another folder with -o"
        )
    for path in stale:
        path.unlink()
    return finished


def _changed_settings(path: Path, settings: dict[str, Any]) -> str:
    try:
        previous = read_json_object(path, RunError, "").get("settings", {})
    except RunError:
        return ""
    changed = sorted(k for k in set(previous) | set(settings) if previous.get(k) != settings.get(k))
    return ", ".join(changed) if changed else "the dense model"


# --- summary files -----------------------------------------------------------------------------------


def _chance_accuracy_pct(records: Sequence[SweepRecord]) -> Optional[float]:
    """100 / number of classes, as the export's manifest records it; None for older records."""
    classes = {r.num_classes for r in records if r.num_classes}
    return 100.0 / classes.pop() if len(classes) == 1 else None


def _summarise(out_dir: Path, config: SweepConfig, records: Sequence[SweepRecord], source: Mapping[str, Any],
               command: Optional[str], runs_done: int, runs_reused: int, seconds: float,
               failed: Sequence[Mapping[str, Any]] = ()) -> SweepResult:
    """Aggregate, pick the operating point, and write sweep.json, sweep.csv and the plots."""
    from edgeprune.measure.environment import environment
    from edgeprune.report.sweep_plots import plot_sweep

    dicts = [r.to_dict() for r in records]
    rows = aggregate(dicts)
    dense_by_name = {r.dense: r.dense_accuracy_pct for r in records}
    dense_accuracy = float(np.mean(list(dense_by_name.values())))
    candidate = operating_point(rows, dense_accuracy, config.tolerance_points)
    chance = _chance_accuracy_pct(records)
    judgement = judge_sweep(SweepEvidence(
        dense=[{"name": name, "accuracy_pct": acc} for name, acc in dense_by_name.items()],
        chance_accuracy_pct=chance, aggregates=[r.to_dict() for r in rows], records=dicts,
        candidate=candidate.to_dict() if candidate else None, tolerance_points=config.tolerance_points,
        finetune_epochs=config.finetune_epochs))
    point = candidate if judgement.recommended else None
    per_criterion = {c: operating_point(rows, dense_accuracy, config.tolerance_points, criterion=c)
                     if judgement.recommended else None for c in config.criteria}
    timed = [r for r in rows if r.pruned_p50_ms is not None]
    front = pareto_front([r.pruned_p50_ms.mean for r in timed], [r.accuracy_pct.mean for r in timed])
    pareto = tuple({"criterion": timed[i].criterion, "keep": timed[i].keep,
                    "pruned_p50_ms": timed[i].pruned_p50_ms.mean, "accuracy_pct": timed[i].accuracy_pct.mean}
                   for i in front)
    result = SweepResult(out_dir, config, tuple(records), tuple(rows), dense_accuracy, point, per_criterion,
                         pareto, runs_done, runs_reused, judgement, candidate, chance, seconds=seconds,
                         failed=tuple(dict(f) for f in failed))
    files = [out_dir / "sweep.csv"]
    write_text_atomic(files[0], csv_text(dicts, rows))
    files += plot_sweep(result, out_dir)
    files.append(out_dir / "sweep.json")
    threads = config.bench.threads if config.bench is not None else None
    write_json_atomic(files[-1], {
        "schema_version": SWEEP_SCHEMA_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "config": config.to_dict(),
        "source": dict(source),
        "environment": environment(threads=threads),
        "dense": [{"name": name, "accuracy_pct": acc} for name, acc in dense_by_name.items()],
        "dense_accuracy_pct": dense_accuracy,
        "chance_accuracy_pct": chance,
        "verdict": judgement.verdict.to_dict(),
        "findings": [f.to_dict() for f in judgement.findings],
        "operating_point": point.to_dict() if point else None,
        "operating_point_candidate": candidate.to_dict() if candidate else None,
        "operating_points_by_criterion": {c: p.to_dict() if p else None for c, p in per_criterion.items()},
        "pareto": list(pareto),
        "aggregates": [r.to_dict() for r in rows],
        "records": dicts,
        "runs_done": runs_done,
        "runs_reused": runs_reused,
        "failed": [dict(f) for f in failed],
        "seconds": seconds,
        "files": [f.name for f in files],
    })
    return replace(result, files=tuple(files))
