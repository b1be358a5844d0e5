"""The torchvision zoo at full size (224 px): prune to keep 0.3/0.5/0.7, check shrink == gated with
random gates and randomised BatchNorm statistics, export ONNX and compare ONNX Runtime with PyTorch.
Also records which channel patterns each model needed, read from its traced graph.

    python benchmarks/zoo_224.py [--size 224] [--models resnet18,...] [--threads 1]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_zoo import KEEPS, ZOO, build_zoo_model  # noqa: E402  (the same models as the CI test)

from edgeprune.measure.environment import environment  # noqa: E402
from edgeprune.onnx_export.exporter import check_parity, export_onnx  # noqa: E402
from edgeprune.fileio import write_json_atomic, write_text_atomic  # noqa: E402
from edgeprune.analysis.graph import analyze, meta_copy, trace  # noqa: E402
from edgeprune.plan import PlanConfig, make_plan  # noqa: E402
from edgeprune.workflows.prune import count_flops  # noqa: E402
from edgeprune.shrink import check_shrink, num_units, shrink  # noqa: E402

RESULTS = Path(__file__).parent / "results"
TOLERANCE = 1e-4


def patterns(model: nn.Module, graph, size: int) -> list[str]:
    """Channel patterns the model uses, read from its fx graph with meta shapes."""
    from torch.fx.passes.shape_prop import ShapeProp

    gm = trace(meta_copy(model))
    ShapeProp(gm).propagate(torch.empty(1, 3, size, size, device="meta"))

    def shape(arg):
        meta = arg.meta.get("tensor_meta") if isinstance(arg, torch.fx.Node) else None
        return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None

    found = set()
    for node in gm.graph.nodes:
        name = node.target if node.op == "call_method" else getattr(node.target, "__name__", str(node.target))
        shapes = [shape(a) for a in node.args]
        if name in ("add", "iadd") and len(shapes) >= 2 and shapes[0] and shapes[0] == shapes[1] and len(shapes[0]) == 4:
            found.add("residual add")
        if name in ("mul", "imul") and len(shapes) >= 2 and all(s and len(s) == 4 for s in shapes[:2]):
            if any(s[2:] == (1, 1) for s in shapes[:2]) and any(s[2:] != (1, 1) for s in shapes[:2]):
                found.add("squeeze-excite (x * scale)")
        if name in ("chunk", "split"):
            found.add("chunk/split")
        if name in ("view", "reshape") and shape(node) is not None and len(shape(node)) == 5:
            found.add("channel shuffle (view/transpose)")
        if name in ("cat", "concat"):
            found.add("concat")
        if name == "stochastic_depth":
            found.add("stochastic depth")
        if name == "permute":
            found.add("channels-last permute")
    modules = list(model.modules())
    if any(isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels for m in modules):
        found.add("depthwise conv")
    if any(isinstance(m, nn.Conv2d) and 1 < m.groups < m.in_channels for m in modules):
        found.add("grouped conv")
    if any("layer_scale" in n for n, _ in model.named_parameters()):
        found.add("layer scale")
    if any(type(m).__name__ == "StochasticDepth" for m in modules):
        found.add("stochastic depth")
    for consumer in graph.consumers:
        if consumer.kind == "linear":
            classes = graph.class_of_label[consumer.labels]
            if (classes != 0).any() and np.unique(classes).size < classes.size:
                found.add("flatten->Linear with spatial>1")
    if any("LayerNorm" in f.reason or f.op == "LayerNorm" for f in graph.frozen):
        found.add("LayerNorm over channels (frozen)")
    return sorted(found)


def check_model(name: str, size: int) -> dict:
    model = build_zoo_model(name)
    example = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    graph = analyze(model, example)
    analyse_s = time.perf_counter() - start
    flops = count_flops(model, example)
    frozen = sorted({f"{f.op}: {f.reason}" for f in graph.frozen if f.reason != "model output"})
    row = {"model": name, "size": size, "groups": len(graph.groups), "units": num_units(graph),
           "analyse_s": analyse_s, "patterns": patterns(model, graph, size), "frozen": frozen,
           "unused_modules": graph.unused_modules, "keeps": []}
    batch = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(2))
    for keep in KEEPS:
        entry = {"keep": keep}
        try:
            rng = np.random.default_rng(int(keep * 10))
            plan = make_plan(model, graph, {g.id: rng.random(g.size) for g in graph.groups}, PlanConfig(keep),
                             criterion="random", flops_measured=flops)
            gates = torch.rand(num_units(graph), generator=torch.Generator().manual_seed(1)) + 0.5
            shrunk = shrink(model, graph, plan, gates)
            entry.update(keep_achieved=plan.keep_achieved, note=plan.note, params_before=plan.params_before,
                         params_after=plan.params_after, flops_before=plan.flops_before, flops_after=plan.flops_after,
                         real_params_after=sum(p.numel() for n, p in shrunk.named_parameters()
                                               if not n.startswith(tuple(f"{m}." for m in graph.unused_modules))),
                         real_flops_after=count_flops(shrunk, example))
            entry["shrink_max_diff"] = check_shrink(model, shrunk, graph, plan, batch, gates, tolerance=TOLERANCE)
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "model.onnx"
                export_onnx(shrunk, (3, size, size), path)
                parity = check_parity(shrunk, path, batch, tolerance=TOLERANCE)
            entry["onnx_max_abs_err"] = parity.max_abs_err
            entry["ok"] = bool(parity.passed and (abs(plan.keep_achieved - keep) <= 0.005 or plan.note)
                               and entry["real_params_after"] == plan.params_after
                               and entry["real_flops_after"] == plan.flops_after)
        except Exception as error:  # a benchmark records failures instead of stopping
            entry["ok"] = False
            entry["error"] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            entry["traceback"] = traceback.format_exc(limit=3)
        row["keeps"].append(entry)
    return row


def render(rows: list[dict], env: dict, size: int, threads: int, seconds: float) -> str:
    lines = [
        f"# Torchvision zoo at {size} px: exact budget, shrink == gated, ONNX parity",
        "",
        f"Machine: {env.get('cpu_model')} ({env.get('logical_cores')} logical cores, shared), torch "
        f"{env.get('versions', {}).get('torch')}, onnxruntime {env.get('versions', {}).get('onnxruntime')}, "
        f"{threads} torch thread(s). Random weights, 10 classes, randomised BN statistics, layer scales ~1, "
        f"random scores, random gates in [0.5, 1.5]; batch 2 for the checks; tolerance {TOLERANCE:g} "
        f"(shrink check relative to max(1, |output|)). Whole run: {seconds:.0f} s.",
        "",
        "| model | groups | keep | achieved (params) | params after | FLOPs after | shrink diff | ONNX diff | ok |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in rows:
        for e in row["keeps"]:
            if "error" in e and "keep_achieved" not in e:
                lines.append(f"| {row['model']} | {row['groups']} | {e['keep']} | - | - | - | - | - | FAIL: {e['error']} |")
                continue
            lines.append(
                f"| {row['model']} | {row['groups']} | {e['keep']} | {e['keep_achieved']:.4f} | {e['params_after']:,} | "
                f"{e['flops_after']:,} | {e.get('shrink_max_diff', float('nan')):.1e} | "
                f"{e.get('onnx_max_abs_err', float('nan')):.1e} | {'yes' if e['ok'] else 'FAIL ' + e.get('error', '')} |"
            )
    lines += ["", "## Patterns each model needed", "", "| model | patterns | left unpruned (besides the output) |", "| --- | --- | --- |"]
    for row in rows:
        frozen = "; ".join(row["frozen"]) or "-"
        if row["unused_modules"]:
            frozen += f"; unused in eval: {', '.join(row['unused_modules'])}"
        lines.append(f"| {row['model']} | {', '.join(row['patterns'])} | {frozen} |")
    failed = [f"{r['model']}@{e['keep']}" for r in rows for e in r["keeps"] if not e["ok"]]
    lines += ["", f"Verdict: {len(failed)} of {sum(len(r['keeps']) for r in rows)} cases failed"
              + (f": {', '.join(failed)}" if failed else "") + ".", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--models", default=",".join(ZOO))
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: the 2 shared cores are busy; see tests/test_zoo.py)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    rows = []
    for name in args.models.split(","):
        rows.append(check_model(name, args.size))
        print(name, [("ok" if e["ok"] else e.get("error", "FAIL")) for e in rows[-1]["keeps"]], flush=True)
    env = environment()
    seconds = time.perf_counter() - start
    stem = "zoo_224" if args.size == 224 else f"zoo_{args.size}"
    write_json_atomic(RESULTS / f"{stem}.json", {"size": args.size, "threads": args.threads, "tolerance": TOLERANCE,
                                                 "seconds": seconds, "rows": rows, "environment": env})
    write_text_atomic(RESULTS / f"{stem}.md", render(rows, env, args.size, args.threads, seconds))


if __name__ == "__main__":
    main()
