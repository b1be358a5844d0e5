"""The same small sweep in this process and on a local Ray with 2 workers, in one run.

digits (scikit-learn's 8x8 digits, built in), resnet20 trained here once; the sweep is 3 keeps x
2 seeds x 2 criteria = 12 points, each planned, shrunk, fine-tuned, evaluated, exported and timed.
The in-process leg runs the points one after another (today's `--executor local`); the Ray leg
runs one task per point on a private local Ray with 2 CPUs (1 CPU per point, so 2 at a time,
each with one torch thread, as Ray sets OMP_NUM_THREADS), Ray's start-up included in its wall
time. A third leg runs in-process with torch limited to one thread, which separates what Ray
gains by running points side by side from what one thread per process gains on a busy machine.
The legs run in the order local-1-thread, Ray, local (each `--rounds` times, in that order, then
reversed), and the load average at the start of each leg is recorded. Printed: wall time of
every leg, the ratios of the medians, and whether every record's accuracy is identical in every
leg (the seeds decide them, not the executor).

    nice -n 5 .venv/bin/python benchmarks/sweep_scaling.py    # writes benchmarks/results/sweep_scaling.{json,md}
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
KEEPS = (0.7, 0.5, 0.3)
SEEDS = 2
CRITERIA = ("magnitude", "random")  # no gate phase: it would run on the driver before either leg's points
DENSE_EPOCHS = 8
DECIDED = ("keep_achieved", "params_after", "accuracy_before_finetune_pct", "accuracy_pct")


def _train(run_dir: Path) -> None:
    from edgeprune.training.runs import train_run
    from edgeprune.training.train import TrainConfig

    train_run(run_dir, "resnet20", "digits", TrainConfig(epochs=DENSE_EPOCHS, batch_size=64, lr=0.1),
              image_size=8, force=True)


def _leg(run_dir: Path, out_dir: Path, config, executor) -> tuple[float, object]:
    from edgeprune.workflows.sweep import run_sweep

    started = time.perf_counter()
    result = run_sweep(run_dir, out_dir, config, executor=executor, force=True)
    return time.perf_counter() - started, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS / "sweep_scaling")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1, help="passes over the 3 legs (alternately reversed)")
    args = parser.parse_args()

    import torch

    from edgeprune.measure.environment import environment
    from edgeprune.workflows.sweep import DEFAULT_SWEEP_BENCH, SweepConfig
    from edgeprune.workflows.sweep_executors import LocalExecutor, RayExecutor

    config = SweepConfig(keeps=KEEPS, seeds=SEEDS, criteria=CRITERIA, finetune_epochs=args.finetune_epochs,
                         bench=replace(DEFAULT_SWEEP_BENCH, min_seconds=0.2, threads=1), target="cpu-x86")
    work = Path(tempfile.mkdtemp(prefix="sweep-scaling-"))
    try:
        run_dir = work / "runs" / "digits"
        started = time.perf_counter()
        _train(run_dir)
        train_s = time.perf_counter() - started
        legs = []
        default_threads = torch.get_num_threads()
        order = ["local-1-thread", "ray", "local"]
        for index, name in enumerate((order + order[::-1]) * (args.rounds // 2) + order * (args.rounds % 2)):
            executor = RayExecutor(num_cpus=args.workers) if name == "ray" else LocalExecutor()
            torch.set_num_threads(1 if name == "local-1-thread" else default_threads)
            load = os.getloadavg()[0]
            wall, result = _leg(run_dir, work / f"{name}-{index}", config, executor)
            torch.set_num_threads(default_threads)
            legs.append({"executor": name, "wall_s": wall, "load_avg_1min_at_start": load, "result": result})
            print(f"leg {index + 1}: {name:5s} {wall:6.1f} s (load average {load:.1f} at start)", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    import statistics

    def decided(result):
        return {r.key: {k: getattr(r, k) for k in DECIDED} for r in result.records}

    reference = decided(legs[0]["result"])
    differing = sorted({k for leg in legs for k, v in decided(leg["result"]).items() if reference.get(k) != v})
    identical = not differing and all(not leg["result"].failed for leg in legs) and \
        all(len(leg["result"].records) == len(reference) for leg in legs)
    medians = {name: statistics.median(leg["wall_s"] for leg in legs if leg["executor"] == name)
               for name in ("local", "local-1-thread", "ray")}
    points = len(reference)
    document = {
        "command": f"nice -n 5 .venv/bin/python benchmarks/sweep_scaling.py --rounds {args.rounds}",
        "torch_version": torch.__version__,
        "grid": {"keeps": list(KEEPS), "seeds": SEEDS, "criteria": list(CRITERIA),
                 "finetune_epochs": args.finetune_epochs, "dense_epochs": DENSE_EPOCHS, "data": "digits 8x8",
                 "model": "resnet20", "bench_seconds": 0.2, "bench_threads": 1},
        "points": points, "dense_train_s": train_s, "torch_threads_in_process": default_threads,
        "ray_workers": args.workers, "ray_cpus_per_point": 1,
        "legs": [{"executor": leg["executor"], "wall_s": leg["wall_s"],
                  "load_avg_1min_at_start": leg["load_avg_1min_at_start"],
                  "point_seconds": [r.seconds for r in leg["result"].records]} for leg in legs],
        "median_wall_s": medians, "ray_speedup_over_local": medians["local"] / medians["ray"],
        "ray_speedup_over_local_1_thread": medians["local-1-thread"] / medians["ray"],
        "local_1_thread_speedup_over_local": medians["local"] / medians["local-1-thread"],
        "accuracies_identical": identical, "differing_points": differing,
        "accuracy_pct": {k: v["accuracy_pct"] for k, v in reference.items()},
        "environment": environment(threads=1),
        "machine_note": "shared with other engineers' jobs (2 cores for 5 people); run under nice -n 5",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(document, indent=2, default=str) + "\n")
    print(f"{points} points; median wall: in-process {medians['local']:.1f} s ({default_threads} torch threads), "
          f"in-process {medians['local-1-thread']:.1f} s (1 thread), Ray x{args.workers} {medians['ray']:.1f} s "
          f"(start-up included)")
    print(f"Ray / in-process: {medians['local'] / medians['ray']:.2f}x; Ray / in-process 1 thread: "
          f"{medians['local-1-thread'] / medians['ray']:.2f}x")
    print(f"accuracies identical in all {len(legs)} legs: {identical}"
          + (f" (differ at {', '.join(differing)})" if differing else ""))
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
