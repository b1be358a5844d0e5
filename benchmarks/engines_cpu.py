"""What pruning buys on each CPU runtime: ONNX Runtime, ExecuTorch (XNNPACK) and OpenVINO, at 224 px.

For each model (random weights: latency does not depend on them), prune to keep 0.5 by weight
magnitude, export dense and pruned to ONNX, build every engine from the same files (ExecuTorch
from the shrunk nn.Module), check each engine against ONNX Runtime FP32, then time dense and
pruned interleaved in rounds (`edgeprune.measure.benchmark`), batch 1, on one thread and on all
threads. The speedup is p50 dense / p50 pruned with its paired-round bootstrap interval; an engine
whose interval does not lie above 1.0 is named as one where pruning did not pay off.

    nice -n 5 python benchmarks/engines_cpu.py [--models resnet18,mobilenet_v2,efficientnet_b0]
        [--size 224] [--seconds 2] [--out benchmarks/results/engines_cpu]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_zoo import build_zoo_model  # noqa: E402  (the same random-weight models as the zoo tests)

from edgeprune import engines  # noqa: E402
from edgeprune.fileio import write_json_atomic, write_text_atomic  # noqa: E402
from edgeprune.measure.bench import benchmark, open_runners  # noqa: E402
from edgeprune.measure.environment import environment  # noqa: E402
from edgeprune.measure.results import BenchConfig  # noqa: E402
from edgeprune.onnx_export.exporter import check_parity, export_onnx  # noqa: E402
from edgeprune.plan import PlanConfig  # noqa: E402
from edgeprune.report.thresholds import DEFAULT_THRESHOLDS  # noqa: E402
from edgeprune.targets import load_target  # noqa: E402
from edgeprune.versions import library_versions  # noqa: E402
from edgeprune.workflows.prune import prune_model  # noqa: E402

RESULTS = Path(__file__).parent / "results"
#: engine label -> the built-in target whose back end builds and runs it.
ENGINES = {"onnxruntime": "cpu-x86", "executorch": "mobile-executorch", "openvino": "cpu-x86-openvino"}
KEEP = 0.5


def all_threads() -> int:
    return len(os.sched_getaffinity(0))


def build(model_name: str, size: int, work: Path) -> dict:
    """Dense and pruned ONNX, every engine built, and their parity against ONNX Runtime FP32."""
    dense = build_zoo_model(model_name).eval()
    pruned = prune_model(dense, (3, size, size), None, PlanConfig(KEEP, round_to=8), criterion="magnitude")
    images = np.random.default_rng(1).standard_normal((4, 3, size, size)).astype(np.float32)
    entry = {"model": model_name, "keep_achieved": pruned.plan.keep_achieved,
             "params": [pruned.plan.params_before, pruned.plan.params_after],
             "flops": [pruned.plan.flops_before, pruned.plan.flops_after], "engines": {}}
    sources = {}
    for label, module in (("dense", dense), ("pruned", pruned.model.eval())):
        onnx_path = work / f"{label}.onnx"
        export_onnx(module, (3, size, size), onnx_path)
        entry[f"onnx_parity_{label}"] = check_parity(module, onnx_path, images).max_abs_err
        sources[label] = engines.ModelSource(label, onnx_path, module)
    for engine, target_name in ENGINES.items():
        target = load_target(target_name)
        started = time.perf_counter()
        loaders = engines.bench_loaders(target, list(sources.values()), work)  # builds what is missing
        parity = {}
        for label, load in loaders.items():
            with load() as runner:
                result = engines.compare_with_onnxruntime(runner, sources[label].onnx_path, images)
            parity[label] = {"max_abs_err": result.max_abs_err, "top1_agreement": result.top1_agreement,
                             "passed": result.passed, "tolerance": result.tolerance}
        entry["engines"][engine] = {"target": target_name, "build_and_parity_s": time.perf_counter() - started,
                                    "parity": parity}
    entry["sources"] = sources
    return entry


def measure(entry: dict, threads: int, config: BenchConfig, size: int) -> dict:
    """Dense vs pruned on each engine at `threads`, interleaved in rounds."""
    inputs = {1: np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)}
    out = {}
    for engine, target_name in ENGINES.items():
        target = replace(load_target(target_name), intra_op_threads=threads)
        loaders = engines.bench_loaders(target, list(entry["sources"].values()), Path(tempfile.gettempdir()))
        runners, load_mb = open_runners(loaders)
        try:
            result = benchmark(runners, inputs, replace(config, threads=threads), target_name=target.name,
                               load_rss_mb=load_mb)
        finally:
            for runner in runners.values():
                runner.close()
        rows = {e.model: e for e in result.entries}
        comparison = result.comparisons[0]
        out[engine] = {
            "dense_p50_ms": rows["dense"].p50_ms, "dense_p90_ms": rows["dense"].p90_ms,
            "pruned_p50_ms": rows["pruned"].p50_ms, "pruned_p90_ms": rows["pruned"].p90_ms,
            "n": [rows["dense"].n, rows["pruned"].n], "rounds": comparison.rounds,
            "speedup": comparison.speedup, "speedup_ci95": list(comparison.speedup_ci95),
            "judgement": DEFAULT_THRESHOLDS.judge_speedup(comparison.speedup, comparison.speedup_ci95),
            "cv": [rows["dense"].cv, rows["pruned"].cv],
        }
    return out


def render(results: dict) -> str:
    env, cfg = results["environment"], results["config"]
    versions = results["versions"]
    lines = [
        "# What pruning buys on each CPU runtime (ONNX Runtime, ExecuTorch XNNPACK, OpenVINO)",
        "",
        f"Machine: {env['cpu_model']} ({env['logical_cores']} cores, KVM guest), **shared with other "
        "engineers' jobs while this ran**; run with `nice -n 5`. "
        f"torch {versions.get('torch')}, onnxruntime {versions.get('onnxruntime')}, executorch "
        f"{versions.get('executorch')}, openvino {versions.get('openvino')}. Whole run: {results['seconds']:.0f} s.",
        "",
        f"Models: torchvision {', '.join(results['models'])} at {results['size']} px with **random weights** "
        "(10 classes, randomised BN statistics; latency does not depend on the weights), pruned to keep "
        f"{KEEP} of the parameters by weight magnitude, channels rounded to 8. Batch 1. Dense and pruned are "
        f"timed interleaved in rounds per engine and thread count (warm-up {cfg['warmup_s']} s, at least "
        f"{cfg['min_iterations']} runs and {cfg['min_seconds']} s each, {cfg['rounds']}+ rounds). Speedup = "
        "p50 dense / p50 pruned, 95% paired-round bootstrap interval. Parity: each engine's logits against "
        "ONNX Runtime FP32 on 4 random images (max abs error; top-1 agreement).",
        "",
        "ExecuTorch and ONNX Runtime Mobile are phone runtimes: here they run their x86 builds on this CPU, "
        "which says what pruning buys with their kernels, not a phone's latency. ONNX Runtime Mobile's "
        "`.ort` file runs on the same ONNX Runtime CPU kernels as the ONNX file, so it is not timed apart.",
        "",
        "| model | engine | threads | dense p50 / p90 ms | pruned p50 / p90 ms | speedup [95% CI] | paid off | "
        "parity dense / pruned (max abs err) |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    not_paid = []
    for entry in results["models_detail"]:
        for threads, by_engine in entry["timings"].items():
            for engine, t in by_engine.items():
                parity = entry["engines"][engine]["parity"]
                paid = {"faster": "yes", "within_noise": "**no** (within noise)", "slower": "**no** (slower)"}.get(
                    t["judgement"], t["judgement"])
                if t["judgement"] != "faster":
                    not_paid.append(f"{entry['model']} on {engine}, {threads} thread(s): "
                                    f"{t['speedup']:.2f}x [{t['speedup_ci95'][0]:.2f}, {t['speedup_ci95'][1]:.2f}]")
                lines.append(
                    f"| {entry['model']} | {engine} | {threads} | {t['dense_p50_ms']:.2f} / {t['dense_p90_ms']:.2f} "
                    f"| {t['pruned_p50_ms']:.2f} / {t['pruned_p90_ms']:.2f} | {t['speedup']:.2f}x "
                    f"[{t['speedup_ci95'][0]:.2f}, {t['speedup_ci95'][1]:.2f}] | {paid} | "
                    f"{parity['dense']['max_abs_err']:.1e} / {parity['pruned']['max_abs_err']:.1e} |")
    lines += ["", "Params and FLOPs (dense -> pruned):", ""]
    for entry in results["models_detail"]:
        lines.append(f"- {entry['model']}: params {entry['params'][0]:,} -> {entry['params'][1]:,} (keep "
                     f"{entry['keep_achieved']:.3f}), FLOPs {entry['flops'][0]:,} -> {entry['flops'][1]:,}")
    lines += ["", "Where pruning did not pay off (95% interval not above 1.0): "
              + ("; ".join(not_paid) if not_paid else "none; every engine ran the pruned model faster.")]
    lines += ["", "Reproduce: `nice -n 5 python benchmarks/engines_cpu.py` (raw figures in engines_cpu.json).", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet18,mobilenet_v2,efficientnet_b0")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--seconds", type=float, default=2.0, help="minimum timed seconds per model and round set")
    parser.add_argument("--out", type=Path, default=RESULTS / "engines_cpu")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the pruning and export; each runtime sets its own threads
    for engine, target in ENGINES.items():
        reason = engines.unavailable_reason(load_target(target))
        if reason is not None:
            raise SystemExit(f"{engine} cannot run here: {reason}")
    started = time.perf_counter()
    config = BenchConfig(warmup_s=0.3, min_iterations=64, min_seconds=args.seconds, rounds=10,
                         memory_iterations=0, bootstrap_resamples=2000)
    thread_counts = sorted({1, all_threads()})
    details = []
    with tempfile.TemporaryDirectory(prefix="engines-cpu-") as tmp:
        for name in args.models.split(","):
            work = Path(tmp) / name
            work.mkdir()
            print(f"[{time.perf_counter() - started:6.0f}s] {name}: build and parity", flush=True)
            entry = build(name, args.size, work)
            entry["timings"] = {}
            for threads in thread_counts:
                print(f"[{time.perf_counter() - started:6.0f}s] {name}: timing on {threads} thread(s)", flush=True)
                entry["timings"][threads] = measure(entry, threads, config, args.size)
            del entry["sources"]
            details.append(entry)
    results = {
        "models": args.models.split(","), "size": args.size, "keep": KEEP, "threads": thread_counts,
        "config": {"warmup_s": config.warmup_s, "min_iterations": config.min_iterations,
                   "min_seconds": config.min_seconds, "rounds": config.rounds},
        "environment": environment(), "versions": library_versions(),
        "seconds": time.perf_counter() - started, "models_detail": details,
    }
    write_json_atomic(args.out.with_suffix(".json"), results)
    write_text_atomic(args.out.with_suffix(".md"), render(results))
    print(render(results))


if __name__ == "__main__":
    main()
