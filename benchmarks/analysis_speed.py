"""How long analysis + planning + shrink take for ResNet-50 at 224 px on this machine (target < 1 s).

Median of several runs of each stage (the first, warm-up run is not counted), with the machine
named. The shrink is the physical copy into smaller layers; the shrink check (two real forward
passes) and FLOP counting are reported beside it but are not part of the target.

    python benchmarks/analysis_speed.py [--model resnet50] [--size 224] [--runs 7]
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torchvision

from edgeprune.measure.environment import environment
from edgeprune.fileio import write_json_atomic, write_text_atomic
from edgeprune.analysis.graph import analyze
from edgeprune.plan import PlanConfig, make_plan
from edgeprune.workflows.prune import count_flops
from edgeprune.shrink import check_shrink, shrink

TARGET_S = 1.0
RESULTS = Path(__file__).parent / "results"


def measure(model_name: str, size: int, runs: int, keep: float) -> dict:
    model = torchvision.models.get_model(model_name, weights=None, num_classes=1000).eval()
    example = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    samples: dict[str, list[float]] = {"analyze": [], "plan": [], "shrink": [], "total": []}
    extra: dict[str, list[float]] = {"count_flops": [], "shrink_check": []}
    for run in range(runs + 1):
        start = time.perf_counter()
        graph = analyze(model, example)
        analysed = time.perf_counter()
        rng = np.random.default_rng(run)
        plan = make_plan(model, graph, {g.id: rng.random(g.size) for g in graph.groups}, PlanConfig(keep))
        planned = time.perf_counter()
        shrunk = shrink(model, graph, plan)
        done = time.perf_counter()
        flops_start = time.perf_counter()
        count_flops(model, example)
        check_start = time.perf_counter()
        check_shrink(model, shrunk, graph, plan, example)
        check_done = time.perf_counter()
        if run == 0:
            continue  # warm-up
        samples["analyze"].append(analysed - start)
        samples["plan"].append(planned - analysed)
        samples["shrink"].append(done - planned)
        samples["total"].append(done - start)
        extra["count_flops"].append(check_start - flops_start)
        extra["shrink_check"].append(check_done - check_start)
    median = {k: statistics.median(v) for k, v in {**samples, **extra}.items()}
    return {
        "model": model_name, "input_shape": [3, size, size], "keep": keep, "runs": runs, "warmup_runs": 1,
        "statistic": "median", "groups": len(graph.groups), "units": sum(g.size for g in graph.groups),
        "median_s": median, "samples_s": {**samples, **extra}, "target_s": TARGET_S,
        "meets_target": median["total"] < TARGET_S, "torch_threads": torch.get_num_threads(),
        "environment": environment(),
    }


def render(result: dict) -> str:
    env = result["environment"]
    m = result["median_s"]
    lines = [
        f"# Analysis speed: {result['model']} at {result['input_shape'][1]} px",
        "",
        f"Machine: {env.get('cpu_model')} ({env.get('logical_cores')} logical cores, shared with other jobs), "
        f"torch {env.get('versions', {}).get('torch')}, {result['torch_threads']} torch threads.",
        f"Median of {result['runs']} runs after {result['warmup_runs']} warm-up; keep {result['keep']}; "
        f"{result['groups']} channel groups, {result['units']} units.",
        "",
        "| stage | median (s) |",
        "| --- | ---: |",
        f"| analyze (fx trace + label propagation on the meta device) | {m['analyze']:.3f} |",
        f"| plan (cost model + global top-K to budget) | {m['plan']:.3f} |",
        f"| shrink (physical copy into smaller layers) | {m['shrink']:.3f} |",
        f"| **total** (target < {result['target_s']:.0f} s) | **{m['total']:.3f}** |",
        f"| not in the target: count_flops (meta device) | {m['count_flops']:.3f} |",
        f"| not in the target: shrink check (2 real forwards) | {m['shrink_check']:.3f} |",
        "",
        f"Verdict: {'meets' if result['meets_target'] else 'misses'} the {result['target_s']:.0f} s target "
        f"(min total {min(result['samples_s']['total']):.3f} s, max {max(result['samples_s']['total']):.3f} s).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--keep", type=float, default=0.5)
    args = parser.parse_args()
    result = measure(args.model, args.size, args.runs, args.keep)
    write_json_atomic(RESULTS / "analysis_speed.json", result)
    text = render(result)
    write_text_atomic(RESULTS / "analysis_speed.md", text)
    print(text)


if __name__ == "__main__":
    main()
