"""edgeprune vs Torch-Pruning on the same models at the same parameter budget (keep 0.5).

Both start from the same random-weight model (randomised BN statistics) and use weight
magnitude: edgeprune's `magnitude` criterion with its exact-budget planner; Torch-Pruning's
MagnitudeImportance with a global MetaPruner whose pruning_ratio is found by bisection so its
remaining parameters come as close to the budget as it can. Both round channels to multiples of 8
and leave the classifier's outputs alone. Reported side by side, in one run: achieved keep,
FLOPs, pruning time, ONNX parity, and ONNX Runtime CPU latency at batch 1 (median over
interleaved rounds: dense, edgeprune, Torch-Pruning, dense, ...).

    python benchmarks/peers.py [--models resnet50,...] [--keep 0.5] [--size 224]
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_zoo import build_zoo_model  # noqa: E402

from edgeprune.importance.criteria import score_units  # noqa: E402
from edgeprune.measure.environment import environment  # noqa: E402
from edgeprune.onnx_export.exporter import check_parity, export_onnx  # noqa: E402
from edgeprune.fileio import write_json_atomic, write_text_atomic  # noqa: E402
from edgeprune.analysis.graph import analyze  # noqa: E402
from edgeprune.plan import PlanConfig, make_plan  # noqa: E402
from edgeprune.workflows.prune import count_flops  # noqa: E402
from edgeprune.shrink import check_shrink, shrink  # noqa: E402

RESULTS = Path(__file__).parent / "results"
SUBSET = ("resnet50", "mobilenet_v2", "efficientnet_b0", "regnet_y_400mf", "densenet121", "convnext_tiny",
          "shufflenet_v2_x1_0", "googlenet")


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def classifier(model: nn.Module, num_classes: int) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == num_classes] or [
        m for m in model.modules() if isinstance(m, nn.Conv2d) and m.out_channels == num_classes]


def edgeprune_prune(model: nn.Module, size: int, keep: float) -> tuple[nn.Module, dict]:
    example = torch.randn(1, 3, size, size)
    start = time.perf_counter()
    graph = analyze(model, example)
    scores = score_units("magnitude", model, graph)
    plan = make_plan(model, graph, scores, PlanConfig(keep), criterion="magnitude", flops_measured=count_flops(model, example))
    shrunk = shrink(model, graph, plan)
    seconds = time.perf_counter() - start
    diff = check_shrink(model, shrunk, graph, plan, torch.randn(2, 3, size, size), tolerance=1e-4)
    return shrunk, {"prune_s": seconds, "shrink_check_max_diff": diff, "note": plan.note}


def torch_pruning_prune(model: nn.Module, size: int, keep: float, num_classes: int, steps: int = 12) -> tuple[nn.Module, dict]:
    import torch_pruning as tp

    example = torch.randn(1, 3, size, size)
    target = keep * params(model)

    def run(ratio: float) -> tuple[nn.Module, float]:
        candidate = copy.deepcopy(model)
        start = time.perf_counter()
        pruner = tp.pruner.MetaPruner(
            candidate, example, importance=tp.importance.MagnitudeImportance(p=2), global_pruning=True,
            pruning_ratio=ratio, ignored_layers=classifier(candidate, num_classes), round_to=8,
        )
        pruner.step()
        return candidate, time.perf_counter() - start

    start = time.perf_counter()
    lo, hi, best, last_error = 0.0, 0.95, None, ""
    for _ in range(steps):  # channel ratio -> remaining params is monotone: bisect on it
        mid = (lo + hi) / 2
        try:
            candidate, seconds = run(mid)
        except Exception as error:  # a too-high ratio can empty a layer: treat as "too much"
            last_error = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            hi = mid
            continue
        remaining = params(candidate)
        if best is None or abs(remaining - target) < abs(params(best[0]) - target):
            best = (candidate, seconds, mid)
        if remaining > target:
            lo = mid
        else:
            hi = mid
        if abs(remaining / params(model) - keep) <= 0.001:
            break
    if best is None:
        raise RuntimeError(f"Torch-Pruning failed at every pruning_ratio tried (last: {last_error})")
    return best[0], {"prune_s": best[1], "search_s": time.perf_counter() - start, "pruning_ratio": best[2]}


def ort_session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def latency(paths: dict[str, Path], size: int, threads: int, rounds: int, per_round: int, warmup: int) -> dict:
    sessions = {name: ort_session(path, threads) for name, path in paths.items()}
    x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    samples: dict[str, list[float]] = {name: [] for name in sessions}
    for name, session in sessions.items():
        for _ in range(warmup):
            session.run(None, {session.get_inputs()[0].name: x})
    for _ in range(rounds):
        for name, session in sessions.items():  # interleaved: every round runs every model
            feed = {session.get_inputs()[0].name: x}
            for _ in range(per_round):
                start = time.perf_counter()
                session.run(None, feed)
                samples[name].append((time.perf_counter() - start) * 1e3)
    return {name: {"median_ms": statistics.median(v), "p90_ms": float(np.percentile(v, 90)), "n": len(v)}
            for name, v in samples.items()}


def compare(name: str, size: int, keep: float, threads: int, rounds: int, per_round: int, warmup: int) -> dict:
    row: dict = {"model": name}
    model = build_zoo_model(name)
    example = torch.randn(1, 3, size, size)
    row["params_before"], row["flops_before"] = params(model), count_flops(model, example)
    batch = torch.randn(2, 3, size, size)
    pruned: dict[str, nn.Module] = {"dense": model}
    for tool, fn in (("edgeprune", lambda: edgeprune_prune(model, size, keep)),
                     ("torch_pruning", lambda: torch_pruning_prune(model, size, keep, 10))):
        try:
            small, info = fn()
            small.eval()
            info.update(params_after=params(small), keep_achieved=params(small) / row["params_before"],
                        flops_after=count_flops(small, example))
            with torch.no_grad():
                info["output_shape_ok"] = tuple(small(batch).shape) == (2, 10)
            pruned[tool] = small
        except Exception as error:  # record either tool's failure honestly
            info = {"error": f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}",
                    "traceback": traceback.format_exc(limit=4)}
        row[tool] = info
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for tool, small in pruned.items():
            path = Path(tmp) / f"{tool}.onnx"
            try:
                export_onnx(small, (3, size, size), path)
                parity = check_parity(small, path, batch, tolerance=1e-4)
                paths[tool] = path
                if tool != "dense":
                    row[tool]["onnx_max_abs_err"] = parity.max_abs_err
            except Exception as error:
                target = row.setdefault(tool, {})
                target["onnx_error"] = f"{type(error).__name__}: {str(error).splitlines()[0]}"
        row["latency"] = latency(paths, size, threads, rounds, per_round, warmup)
    return row


def render(rows: list[dict], args, env: dict, seconds: float) -> str:
    lines = [
        f"# edgeprune vs Torch-Pruning at keep {args.keep} of parameters ({args.size} px)",
        "",
        f"Machine: {env.get('cpu_model')} ({env.get('logical_cores')} logical cores, shared with other jobs, so "
        f"absolute times are noisy; ratios within a row come from one interleaved run). torch "
        f"{env.get('versions', {}).get('torch')}, onnxruntime {env.get('versions', {}).get('onnxruntime')}, "
        f"torch-pruning {_tp_version()}. ONNX Runtime CPU EP, {args.threads} intra-op thread(s), batch 1, "
        f"{args.warmup} warm-up runs per model, then {args.rounds} interleaved rounds x {args.per_round} runs: median. "
        f"Models: {', '.join(r['model'] for r in rows)} (a representative subset of the 18: the whole zoo with "
        f"Torch-Pruning's bisection takes over half an hour on this machine). Whole run {seconds:.0f} s.",
        "",
        "| model | tool | keep achieved | params after | FLOPs after | prune time (s) | ONNX diff | latency median (ms) | speed-up vs dense |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        dense_ms = row["latency"].get("dense", {}).get("median_ms")
        lines.append(f"| {row['model']} | dense | 1 | {row['params_before']:,} | {row['flops_before']:,} | - | - | "
                     f"{dense_ms:.2f} | 1.00 |" if dense_ms else f"| {row['model']} | dense | - | - | - | - | - | - | - |")
        for tool in ("edgeprune", "torch_pruning"):
            info = row.get(tool, {})
            if "error" in info:
                lines.append(f"| {row['model']} | {tool} | FAILED: {info['error']} | | | | | | |")
                continue
            ms = row["latency"].get(tool, {}).get("median_ms")
            t = info["prune_s"]
            time_text = f"{t:.2f}" + (f" (+ search {info['search_s']:.0f})" if "search_s" in info else "")
            lines.append(
                f"| {row['model']} | {tool} | {info['keep_achieved']:.4f} | {info['params_after']:,} | {info['flops_after']:,} | "
                f"{time_text} | {info.get('onnx_max_abs_err', float('nan')):.1e} | {ms:.2f} | "
                f"{dense_ms / ms:.2f} |" if ms and dense_ms else
                f"| {row['model']} | {tool} | {info['keep_achieved']:.4f} | {info['params_after']:,} | {info['flops_after']:,} | "
                f"{time_text} | {info.get('onnx_error', '-')} | - | - |"
            )
    lines += ["", "edgeprune prune time: analysis + magnitude scores + plan + shrink (its shrink check is extra). "
              "Torch-Pruning prune time: one MetaPruner build + step at the final ratio; '+ search' is the bisection "
              "over pruning_ratio needed to land on the parameter budget, which Torch-Pruning does not offer itself.", ""]
    return "\n".join(lines)


def _tp_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("torch-pruning")
    except metadata.PackageNotFoundError:
        return "not installed"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(SUBSET))
    parser.add_argument("--keep", type=float, default=0.5)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--per-round", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    rows = []
    for name in args.models.split(","):
        rows.append(compare(name, args.size, args.keep, args.threads, args.rounds, args.per_round, args.warmup))
        print(name, {t: rows[-1].get(t, {}).get("keep_achieved", rows[-1].get(t, {}).get("error")) for t in ("edgeprune", "torch_pruning")},
              {k: round(v["median_ms"], 2) for k, v in rows[-1]["latency"].items()}, flush=True)
    env = environment()
    seconds = time.perf_counter() - start
    write_json_atomic(RESULTS / "peers.json", {"keep": args.keep, "size": args.size, "threads": args.threads,
                                               "rounds": args.rounds, "per_round": args.per_round, "warmup": args.warmup,
                                               "seconds": seconds, "rows": rows, "environment": env})
    write_text_atomic(RESULTS / "peers.md", render(rows, args, env, seconds))


if __name__ == "__main__":
    main()
