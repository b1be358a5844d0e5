"""edgeprune over timm's CNN families at keep 0.5 of parameters, with Torch-Pruning beside it.

Per model (random weights, randomised BN statistics, 10 classes): keep achieved, share of the
parameters frozen and the largest reason, shrink == gated (max abs diff), ONNX parity (max abs
diff, ONNX Runtime CPU, batch 2), prune time (analysis + magnitude scores + plan + shrink), and
Torch-Pruning's MagnitudeImportance/MetaPruner bisected onto the same parameter budget (works, or
how it fails). Resumable: rows already in the JSON are kept unless --fresh.

    python benchmarks/timm_zoo.py [--models a,b] [--size 224] [--keep 0.5] [--fresh]
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import signal
import tempfile
import time
import traceback
from pathlib import Path

import torch
from torch import nn

from edgeprune.analysis.graph import analyze
from edgeprune.fileio import write_json_atomic, write_text_atomic
from edgeprune.importance.criteria import score_units
from edgeprune.onnx_export.exporter import check_parity, export_onnx
from edgeprune.plan import PlanConfig, make_plan
from edgeprune.shrink import check_shrink, shrink
from edgeprune.workflows.prune import count_flops

RESULTS = Path(__file__).parent / "results"
TP_LIMIT_S = 60  # Torch-Pruning's whole search per model; its dependency graph can take far longer
MODELS = (
    # ResNet-D, SE/SK/ECA/GC variants, ResNeSt, Res2Net
    "resnet18d", "resnet26d", "resnet10t", "resnet14t", "seresnet18", "skresnet18", "seresnext26d_32x4d",
    "ecaresnet26t", "gcresnet33ts", "resnest14d", "res2net50_14w_8s",
    # RegNet
    "regnetx_002", "regnety_002", "regnetz_b16",
    # EfficientNet / -Lite / -V2 and TF ports ("same" padding)
    "efficientnet_b0", "efficientnet_lite0", "efficientnetv2_rw_t", "tf_efficientnet_b0",
    "tf_efficientnet_lite0", "tf_efficientnetv2_b0",
    # MobileNet V1-V4, MNASNet and relatives
    "mobilenetv1_100", "mobilenetv2_050", "mobilenetv3_small_050", "mobilenetv3_large_100",
    "tf_mobilenetv3_small_075", "mobilenetv4_conv_small", "mnasnet_100", "semnasnet_100", "spnasnet_100",
    # GhostNet, ReXNet, MixNet, FBNet, LCNet, TinyNet, HardCoRe-NAS
    "ghostnet_100", "ghostnetv2_100", "repghostnet_050", "rexnet_100", "mixnet_s", "tf_mixnet_s",
    "fbnetc_100", "fbnetv3_b", "lcnet_050", "lcnet_100", "tinynet_a", "tinynet_e", "hardcorenas_a",
    # HRNet, DLA, CSPNet, DarkNet, DPN
    "hrnet_w18_small", "dla34", "dla46_c", "dla60x_c", "cspresnet50", "cs3darknet_s", "darknet17", "dpn48b",
    # RepVGG, MobileOne, VoVNet, GENet, SelecSLS, HGNetV2
    "repvgg_a0", "mobileone_s0", "ese_vovnet19b_dw", "gernet_s", "selecsls42b", "hgnetv2_b0",
    # ConvNeXt, EdgeNeXt, NFNet
    "convnext_atto", "edgenext_xx_small", "nf_resnet26",
    # classic CNNs as timm builds them
    "densenet121", "vgg11",
    # larger or second members of a family: run last, as time allows
    "inception_v3", "res2next50", "efficientnet_es", "rexnetr_100", "hardcorenas_f", "convnext_femto",
    "eca_nfnet_l0", "vovnet39a", "cspdarknet53", "resnetrs50", "xception41", "mobilenetv4_hybrid_medium",
)
#: The reduced subset CI runs (tests/test_timm_zoo.py) at a small input.
CI_SUBSET = (
    "resnet18d", "seresnet18", "res2net50_14w_8s", "regnetx_002", "efficientnet_b0", "tf_efficientnet_lite0",
    "mobilenetv3_small_050", "ghostnet_100", "mixnet_s", "lcnet_050", "dla46_c", "convnext_atto",
)


def build(name: str, num_classes: int = 10, seed: int = 0) -> nn.Module:
    """A timm model with random weights and randomised BN statistics (so BN is not the identity)."""
    import timm

    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, num_classes=num_classes)
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
            module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
    return model.eval()


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def prune_edgeprune(model: nn.Module, size: int, keep: float) -> tuple[nn.Module, dict]:
    example = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    graph = analyze(model, example)
    analysed = time.perf_counter()
    scores = score_units("magnitude", model, graph)
    plan = make_plan(model, graph, scores, PlanConfig(keep), criterion="magnitude",
                     flops_measured=count_flops(model, example))
    small = shrink(model, graph, plan)
    seconds = time.perf_counter() - start
    batch = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    diff = check_shrink(model, small, graph, plan, batch, tolerance=1e-4)
    top = graph.frozen_params[0] if graph.frozen_params else None
    return small, {
        "keep_achieved": plan.keep_achieved, "params_before": plan.params_before, "params_after": plan.params_after,
        "groups": len(graph.groups), "frozen_fraction": graph.frozen_fraction,
        "frozen_top": (f"{top.where} ({top.op}): {top.reason}" if top else ""),
        "frozen_top_fraction": (top.params / max(1, graph.params_total) if top else 0.0),
        "opaque_modules": graph.opaque_modules, "analysis_s": analysed - start, "prune_s": seconds,
        "shrink_max_diff": diff, "note": plan.note,
    }


def classifier(model: nn.Module, num_classes: int) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == num_classes] or [
        m for m in model.modules() if isinstance(m, nn.Conv2d) and m.out_channels == num_classes]


def prune_torch_pruning(model: nn.Module, size: int, keep: float, steps: int = 6) -> dict:
    """Torch-Pruning steered onto the parameter budget (it has no budget option of its own).

    Remaining parameters fall roughly as (1 - ratio)^2, so each run re-aims the ratio with that
    model from the last result, kept inside the bracket of ratios already tried (bisecting when
    the aim falls outside it); usually two or three MetaPruner runs land within 0.005.
    """
    import torch_pruning as tp

    example = torch.randn(1, 3, size, size)
    total = params(model)
    ratio, best, last_error = 1 - keep ** 0.5, None, ""
    low, high = 0.0, 0.95  # ratios known to keep too much / too little
    start = time.perf_counter()
    for _ in range(steps):
        candidate = copy.deepcopy(model)
        try:
            pruner = tp.pruner.MetaPruner(
                candidate, example, importance=tp.importance.MagnitudeImportance(p=2), global_pruning=True,
                pruning_ratio=ratio, ignored_layers=classifier(candidate, 10), round_to=8,
            )
            pruner.step()
            with torch.no_grad():
                candidate(example)
        except Exception as error:  # a ratio can empty a layer or break the model: record, try less
            last_error = f"{type(error).__name__}: {first_line(error)}"
            high = ratio
            ratio = (low + high) / 2
            continue
        achieved = params(candidate) / total
        if best is None or abs(achieved - keep) < abs(best[1] - keep):
            best = (ratio, achieved)
        if abs(achieved - keep) <= 0.005:
            break
        if achieved > keep:
            low = ratio
        else:
            high = ratio
        aim = 1 - (1 - ratio) * (keep / max(achieved, 1e-6)) ** 0.5
        ratio = aim if low < aim < high else (low + high) / 2
    info = {"search_s": time.perf_counter() - start}
    if best is None:
        return {**info, "error": last_error or "failed at every ratio"}
    return {**info, "keep_achieved": best[1], "pruning_ratio": best[0], "last_error": last_error}


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else ""


def run_model(name: str, size: int, keep: float, tp_size: int) -> dict:
    row: dict = {"model": name}
    try:
        model = build(name)
    except Exception as error:
        return {**row, "error": f"build: {type(error).__name__}: {first_line(error)}"}
    row["params"] = params(model)
    try:
        small, info = prune_edgeprune(model, size, keep)
        row.update(info)
        small.eval()
        batch = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(2))
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.onnx"
            export_onnx(small, (3, size, size), path)
            parity = check_parity(small, path, batch, tolerance=1e-4)
            row["onnx_max_abs_err"] = parity.max_abs_err
            with torch.no_grad():
                row["output_abs_max"] = float(small(batch).abs().max())
    except Exception as error:  # a benchmark records every failure and goes on
        row["error"] = f"{type(error).__name__}: {first_line(error)}"
        row["traceback"] = traceback.format_exc(limit=-3)
    try:
        with time_limit(TP_LIMIT_S):
            row["torch_pruning"] = prune_torch_pruning(model, tp_size, keep)
    except OutOfTime:
        row["torch_pruning"] = {"error": f"did not finish within {TP_LIMIT_S} s (stopped)"}
    except Exception as error:
        row["torch_pruning"] = {"error": f"{type(error).__name__}: {first_line(error)}"}
    return row


class OutOfTime(BaseException):
    """Not an Exception, so that no `except Exception` on the way (ours or the peer's) swallows it."""


@contextlib.contextmanager
def time_limit(seconds: int):
    """Raise OutOfTime in this (main) thread after `seconds`: one peer must not stall the zoo."""
    def expire(signum, frame):
        raise OutOfTime

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def parity_error(row: dict) -> float:
    """ONNX max abs diff relative to max(1, |output|), as the shrink check judges: random weights
    give some models logits of 1e3 to 1e8, where float32 rounding alone exceeds 1e-4 absolute."""
    return row.get("onnx_max_abs_err", float("inf")) / max(1.0, row.get("output_abs_max", 1.0))


def passed(row: dict, keep: float) -> bool:
    return "error" not in row and abs(row["keep_achieved"] - keep) <= 0.005 and parity_error(row) <= 1e-4


def render(rows: list[dict], args, seconds: float) -> str:
    ok = sum(passed(r, args.keep) for r in rows)
    lines = [
        f"# timm CNN zoo at keep {args.keep} of parameters ({args.size} px, random weights, 10 classes)",
        "",
        f"{len(rows)} of {len(MODELS)} models ran; {ok}/{len(rows)} reach keep {args.keep} within 0.005 with ONNX "
        f"parity <= 1e-4. Reproduce: `nice -n 10 python benchmarks/timm_zoo.py --size {args.size}` "
        f"(this run {seconds:.0f} s of model time on a shared 2-core CPU). edgeprune criterion: magnitude; prune "
        f"time = analysis + scores + plan + shrink. Shrink diff: max |shrunk - gated| on a batch of 2. Torch-Pruning: "
        f"MagnitudeImportance + global MetaPruner, round_to 8, classifier ignored, pruning_ratio steered onto the "
        f"budget in at most 6 runs and stopped after {TP_LIMIT_S} s (each row names the limit it ran under) "
        f"({args.tp_size} px example for its tracing: "
        f"parameter counts do not depend on input size).",
        "",
        "ONNX diff is max |ONNX Runtime - PyTorch| over max(1, |output|) (the column beside it is |output|): "
        "random weights give some models logits up to 1e8, where float32 rounding alone is above 1e-4 absolute.",
        "",
        "| model | params | keep achieved | frozen share | largest frozen part | shrink diff | ONNX diff (rel.) | max abs output | prune s | Torch-Pruning |",
        "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        tp = r.get("torch_pruning", {})
        if "error" in tp:
            tp_text = f"FAILED: {tp['error']}"
        else:
            tp_text = f"keep {tp['keep_achieved']:.4f}"
            if abs(tp["keep_achieved"] - args.keep) > 0.005:
                tp_text += " (closest of 6 ratios)" + (f"; failed at others: {tp['last_error']}" if tp.get("last_error") else "")
        if "error" in r:
            lines.append(f"| {r['model']} | {r.get('params', 0):,} | FAILED: {r['error']} | | | | | | | {tp_text} |")
            continue
        frozen = r["frozen_top"].replace("|", "/")
        lines.append(
            f"| {r['model']} | {r['params']:,} | {r['keep_achieved']:.4f}{'' if passed(r, args.keep) else ' (missed)'} "
            f"| {r['frozen_fraction']:.1%} | {frozen[:140]} | {r['shrink_max_diff']:.1e} | "
            f"{parity_error(r):.1e} | {r.get('output_abs_max', float('nan')):.3g} | {r['prune_s']:.2f} | {tp_text} |"
        )
    missed = [r for r in rows if not passed(r, args.keep)]
    if missed:
        lines += ["", "## Models that miss the budget, and why", ""]
        for r in missed:
            if "error" in r:
                why = r["error"]
            elif abs(r["keep_achieved"] - args.keep) > 0.005:
                why = (f"keep {r['keep_achieved']:.4f}: {r['frozen_fraction']:.0%} of the parameters are frozen; "
                       f"largest part {r['frozen_top']}")
            else:
                why = f"ONNX parity {parity_error(r):.1e} relative to the output scale"
            tp = r.get("torch_pruning", {})
            tp_why = tp.get("error") or f"keep {tp.get('keep_achieved', float('nan')):.4f}"
            lines.append(f"- **{r['model']}**: {why}. Torch-Pruning: {tp_why}.")
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--tp-size", type=int, default=64)
    parser.add_argument("--keep", type=float, default=0.5)
    parser.add_argument("--out", default=str(RESULTS / "timm_zoo"))
    parser.add_argument("--fresh", action="store_true", help="ignore rows already in the JSON")
    parser.add_argument("--render-only", action="store_true", help="rewrite the table from the JSON")
    args = parser.parse_args()
    torch.set_num_threads(2)
    json_path, md_path = Path(args.out + ".json"), Path(args.out + ".md")
    done = {} if args.fresh or not json_path.exists() else {
        r["model"]: r for r in json.loads(json_path.read_text()).get("rows", [])}
    seconds = sum(r.get("seconds", 0.0) for r in done.values())
    if args.render_only:
        write_text_atomic(md_path, render([done[m] for m in MODELS if m in done], args, seconds))
        return
    for name in args.models.split(","):
        if name in done:
            continue
        start = time.perf_counter()
        row = run_model(name, args.size, args.keep, args.tp_size)
        row["seconds"] = time.perf_counter() - start
        seconds += row["seconds"]
        done[name] = row
        rows = [done[m] for m in MODELS if m in done] + [r for m, r in done.items() if m not in MODELS]
        write_json_atomic(json_path, {"keep": args.keep, "size": args.size, "rows": rows})
        write_text_atomic(md_path, render(rows, args, seconds))
        print(f"{name}: keep {row.get('keep_achieved', row.get('error'))} frozen {row.get('frozen_fraction', 0):.2f} "
              f"tp {row['torch_pruning'].get('keep_achieved', row['torch_pruning'].get('error'))} "
              f"({row['seconds']:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
