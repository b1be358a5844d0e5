"""`--budget latency` on torchvision CNNs at 224, batch 1, ONNX Runtime CPU, in one run.

Per model: the latency table is built from an empty cache (timed), then latency-budgeted plans at
each --keeps value go through the closed loop (each round measured against dense, interleaved);
params- and FLOPs-budgeted plans at the first keep are measured the same way; Torch-Pruning
(MagnitudePruner, global, round_to 8) is bisected on its pruning ratio to the latency ratio
edgeprune measured, and the parameters both keep there are compared. Random weights (latency does
not depend on them) and magnitude importance. Writes JSON and a markdown table.

    nice -n 5 python benchmarks/latency_budget.py --out benchmarks/results/latency_budget.json
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import nn

from edgeprune.analysis.graph import analyze
from edgeprune.importance.criteria import score_units
from edgeprune.measure.environment import environment
from edgeprune.measure.results import BenchConfig
from edgeprune.onnx_export.exporter import export_onnx
from edgeprune.plan import PlanConfig
from edgeprune.targets import load_target
from edgeprune.workflows.latency import measure_against_dense, profile_model, prune_to_latency
from edgeprune.workflows.prune import example_input, prune_model

MODELS = ("resnet18", "resnet50", "mobilenet_v2", "efficientnet_b0", "regnet_y_400mf")  # resnet50 early: its table build time is a target
TARGET = Path(__file__).parent / "targets" / "cpu-x86-1thread.yaml"
#: The closed loop keeps the round nearest the request, which favours a lucky measurement; every
#: final plan is measured once more, longer, in a run of its own.
CONFIRM_BENCH = BenchConfig(warmup_s=0.3, min_iterations=60, min_seconds=3.0, rounds=20, memory_iterations=0,
                            bootstrap_resamples=1000)


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def kept_units(graph, plan) -> np.ndarray:
    offsets = np.cumsum([0] + [g.size for g in graph.groups])
    kept = np.zeros(int(offsets[-1]), dtype=bool)
    for gp in plan.groups:
        kept[offsets[gp.id] + np.array(gp.kept_units, dtype=np.int64)] = True
    return kept


def torch_pruning_at(model, dense_onnx, shape, target, work, ratio_wanted, steps):
    """Bisect Torch-Pruning's pruning ratio towards the measured latency ratio `ratio_wanted`.

    Every step is measured against dense (interleaved) and kept. The parameters Torch-Pruning keeps
    at exactly `ratio_wanted` are interpolated linearly between the two measured steps that bracket
    it (None when no step landed on each side); the nearest measured step is reported beside it."""
    import torch_pruning as tp

    classifier = [m for m in model.modules() if isinstance(m, nn.Linear)][-1:]
    lo, hi, tried = 0.0, 0.9, []
    for _ in range(steps):
        mid = (lo + hi) / 2
        candidate = copy.deepcopy(model)
        pruner = tp.pruner.MagnitudePruner(candidate, torch.randn(1, *shape), importance=tp.importance.MagnitudeImportance(p=2),
                                           global_pruning=True, pruning_ratio=mid, ignored_layers=classifier, round_to=8)
        pruner.step()
        measured = measure_against_dense(dense_onnx, candidate.eval(), shape, target, work)
        tried.append({"pruning_ratio": mid, "measured_ratio": measured.ratio,
                      "params_kept": params(candidate) / params(model)})
        if abs(measured.ratio - ratio_wanted) <= 0.01:
            break
        lo, hi = (mid, hi) if measured.ratio > ratio_wanted else (lo, mid)
    nearest = min(tried, key=lambda t: abs(t["measured_ratio"] - ratio_wanted))
    slower = [t for t in tried if t["measured_ratio"] >= ratio_wanted]
    faster = [t for t in tried if t["measured_ratio"] < ratio_wanted]
    interpolated = None
    if abs(nearest["measured_ratio"] - ratio_wanted) <= 0.01:
        interpolated = nearest["params_kept"]
    elif slower and faster:
        a = min(slower, key=lambda t: t["measured_ratio"])
        b = max(faster, key=lambda t: t["measured_ratio"])
        w = (ratio_wanted - b["measured_ratio"]) / (a["measured_ratio"] - b["measured_ratio"])
        interpolated = b["params_kept"] + w * (a["params_kept"] - b["params_kept"])
    return {**nearest, "params_kept_at_ratio": interpolated, "steps": tried}


def bench_model(name, keeps, target, cache_dir, tp_steps):
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).eval()
    shape = (3, 224, 224)
    graph = analyze(model, example_input(shape))
    scores = score_units("magnitude", model, graph)
    row = {"model": name, "groups": len(graph.groups)}
    started = time.perf_counter()
    profile = profile_model(model, shape, target, graph=graph, cache_dir=cache_dir)
    row["table"] = {**profile.table.summary(), "build_s_incl_export": time.perf_counter() - started}
    row["latency"] = []
    for keep in keeps:
        t0 = time.perf_counter()
        result = prune_to_latency(model, shape, scores, PlanConfig(keep=keep, budget="latency"), target,
                                  criterion="magnitude", graph=graph, profile=profile)
        plan = result.prune.plan
        loop = result.loop.to_dict()
        row["latency"].append({"keep": keep, **{k: loop[k] for k in ("measured_ratio", "measured_ratio_ci95",
                                                                     "predicted_ratio", "rounds", "met", "dense_ms",
                                                                     "pruned_ms", "chosen_round")},
                               "history": loop["history"],
                               "params_kept": plan.params_after / plan.params_before,
                               "flops_kept": plan.flops_after / plan.flops_before,
                               "seconds": time.perf_counter() - t0, "_model": result.prune.model})
    predictor = profile.predictor()
    row["other_budgets"] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        dense_onnx = work / "dense.onnx"
        export_onnx(model, shape, dense_onnx)
        for entry in row["latency"]:  # the loop kept its best round: measure that plan again, independently
            confirm = measure_against_dense(dense_onnx, entry["_model"], shape, target, work, CONFIRM_BENCH)
            entry["confirmed_ratio"], entry["confirmed_ratio_ci95"] = confirm.ratio, list(confirm.ratio_ci95)
        for budget in ("params", "flops"):
            result = prune_model(model, shape, scores, PlanConfig(keep=keeps[0], budget=budget), criterion="magnitude",
                                 graph=graph)
            plan = result.plan
            measured = measure_against_dense(dense_onnx, result.model, shape, target, work)
            row["other_budgets"].append({
                "budget": budget, "keep": keeps[0], "measured_ratio": measured.ratio,
                "measured_ratio_ci95": list(measured.ratio_ci95),
                "predicted_ratio": predictor(kept_units(graph, plan)) / predictor.dense_ms,
                "params_kept": plan.params_after / plan.params_before, "flops_kept": plan.flops_after / plan.flops_before})
        row["torch_pruning"] = []
        if tp_steps:
            for entry in row["latency"]:
                tp_row = torch_pruning_at(model, dense_onnx, shape, target, work, entry["confirmed_ratio"], tp_steps)
                row["torch_pruning"].append({"edgeprune_keep": entry["keep"], "edgeprune_measured_ratio": entry["confirmed_ratio"],
                                             "edgeprune_params_kept": entry["params_kept"], **tp_row})
    for entry in row["latency"]:
        entry.pop("_model")
    return row


def markdown(results, env, command) -> str:
    lines = [f"# `--budget latency` on ONNX Runtime CPU (batch 1, 224 px, 1 intra-op thread)", "",
             f"Machine: {env['cpu_model']}, {env['available_cores']} cores (1-minute load average when each model "
             f"started: {results['load_by_model']}), onnxruntime {env['versions'].get('onnxruntime')}, "
             f"torch {env['versions'].get('torch')}. Random weights (latency does not depend on them), "
             "magnitude importance. Every ratio is pruned over dense latency (medians), measured in one run "
             "with the two interleaved.", "", f"Command: `{command}`", "",
             "## Latency budget: measured vs requested", "",
             "`loop` is what the closed loop measured in the round it kept; the loop keeps its best round, which "
             "favours a lucky measurement, so every final plan is measured again afterwards, longer (20 rounds, "
             ">= 3 s and 60 iterations per model), independent of that choice: `confirmed`. A row meets the "
             "request when the confirmed median ratio is within 3 points of it.", "",
             "| model | keep | confirmed ratio (95% CI) | miss (points) | met | loop's ratio (95% CI) | rounds | table asked for (kept round) | table predicted | params kept | FLOPs kept |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    errors_final = []
    for row in results["models"]:
        for e in row["latency"]:
            lo, hi = e["measured_ratio_ci95"]
            clo, chi = e["confirmed_ratio_ci95"]
            met = abs(e["confirmed_ratio"] - e["keep"]) <= 0.03
            lines.append(f"| {row['model']} | {e['keep']:.2f} | {e['confirmed_ratio']:.3f} ({clo:.3f}-{chi:.3f}) | "
                         f"{100 * (e['confirmed_ratio'] - e['keep']):+.1f} | {'yes' if met else '**no**'} | "
                         f"{e['measured_ratio']:.3f} ({lo:.3f}-{hi:.3f}) | {e['rounds']} | "
                         f"{e['history'][e['chosen_round'] - 1]['asked_ratio']:.3f} | {e['predicted_ratio']:.3f} | "
                         f"{e['params_kept']:.3f} | {e['flops_kept']:.3f} |")
            errors_final.append(abs(e["predicted_ratio"] - e["confirmed_ratio"]) / e["confirmed_ratio"])
        for e in row["other_budgets"]:
            errors_final.append(abs(e["predicted_ratio"] - e["measured_ratio"]) / e["measured_ratio"])
    lines += ["", "## Table prediction vs measurement", "",
              f"MAPE of the table-predicted whole-model latency ratio (dense measured whole + the table's "
              f"per-layer changes, as corrected by nothing) against the measured ratio (confirmed), over the final "
              f"plan of every latency row above "
              f"and the params/FLOPs plans below: **{100 * np.mean(errors_final):.1f}%** ({len(errors_final)} plans).", "",
              "## Table build time (empty cache)", "", "| model | layers | points measured | seconds (incl. dense export and timing) |", "|---|---|---|---|"]
    for row in results["models"]:
        t = row["table"]
        lines.append(f"| {row['model']} | {t['layers']} | {t['measured_points']} | {t['build_s_incl_export']:.0f} |")
    lines += ["", f"## Speedup per FLOPs reduction (keep {results['keeps'][0]})", "",
              "speedup = dense / pruned latency (measured); FLOPs reduction = dense / pruned FLOPs.", "",
              "| model | budget | measured ratio | speedup | FLOPs reduction | speedup / FLOPs reduction | params kept |",
              "|---|---|---|---|---|---|---|"]
    for row in results["models"]:
        plans = [{"budget": "latency", **row["latency"][0], "measured_ratio": row["latency"][0]["confirmed_ratio"]}] \
            + row["other_budgets"]
        for e in plans:
            speedup, reduction = 1 / e["measured_ratio"], 1 / e["flops_kept"]
            lines.append(f"| {row['model']} | {e['budget']} | {e['measured_ratio']:.3f} | {speedup:.2f}x | {reduction:.2f}x | "
                         f"{speedup / reduction:.2f} | {e['params_kept']:.3f} |")
    if any(row["torch_pruning"] for row in results["models"]):
        lines += ["", "## Torch-Pruning at the same measured latency", "",
                  "Torch-Pruning (MagnitudePruner, global, L2 magnitude, round_to 8) has its pruning ratio bisected "
                  "(a measurement against dense per step) towards edgeprune's measured ratio; its parameters kept at "
                  "that ratio are interpolated between the two measured steps around it (or taken from a step within "
                  "0.01 of it). Higher is better: more of the network kept for the same measured latency.", "",
                  "| model | edgeprune keep | edgeprune ratio | nearest Torch-Pruning step: ratio, params kept | params kept at edgeprune's ratio: edgeprune | Torch-Pruning (interpolated) | edgeprune keeps more |",
                  "|---|---|---|---|---|---|---|"]
        wins, models_won = 0, 0
        for row in results["models"]:
            row_wins = []
            for e in row["torch_pruning"]:
                theirs = e.get("params_kept_at_ratio")
                more = None if theirs is None else e["edgeprune_params_kept"] > theirs
                row_wins.append(more)
                lines.append(f"| {row['model']} | {e['edgeprune_keep']:.2f} | {e['edgeprune_measured_ratio']:.3f} | "
                             f"{e['measured_ratio']:.3f}, {e['params_kept']:.3f} | {e['edgeprune_params_kept']:.3f} | "
                             f"{'not bracketed' if theirs is None else f'{theirs:.3f}'} | "
                             f"{'-' if more is None else ('yes' if more else '**no**')} |")
            if row_wins and all(w is True for w in row_wins):
                models_won += 1
        lines += ["", f"edgeprune keeps more parameters than Torch-Pruning at the same measured latency, at every "
                      f"keep, on **{models_won} of {len(results['models'])}** models."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--keeps", default="0.5,0.7")
    parser.add_argument("--target", default=str(TARGET))
    parser.add_argument("--torch-pruning-steps", type=int, default=6, help="0 skips Torch-Pruning")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/latency_budget.json"))
    args = parser.parse_args()
    import sys

    command = "python benchmarks/latency_budget.py " + " ".join(sys.argv[1:])
    keeps = [float(k) for k in args.keeps.split(",")]
    target = load_target(args.target)
    results = {"keeps": keeps, "target": target.to_dict(), "models": [], "command": command}
    env = environment(threads=target.intra_op_threads)
    with tempfile.TemporaryDirectory() as cache:  # an empty cache: the table build is timed from scratch
        for name in args.models.split(","):
            started, load_at_start = time.perf_counter(), os.getloadavg()[0]
            results["models"].append(bench_model(name, keeps, target, Path(cache), args.torch_pruning_steps))
            results["models"][-1]["seconds"] = time.perf_counter() - started
            results.setdefault("load_by_model", {})[name] = round(load_at_start, 2)
            results["environment"] = env
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=1, default=str))
            args.out.with_suffix(".md").write_text(markdown(results, env, command))
            print(name, f"{results['models'][-1]['seconds']:.0f}s",
                  [(e["keep"], round(e["measured_ratio"], 3), e["rounds"]) for e in results["models"][-1]["latency"]],
                  flush=True)
    print(f"platform {platform.platform()}")


if __name__ == "__main__":
    main()
