"""How often does `edgeprune gate` cry wolf, and how often does it catch a real slow-down, when
every trial is made of separate `edgeprune` processes the way CI runs them?

Model: the demo export's model.onnx (`edgeprune export --keep 0.5`), at default settings.
Slower copies: the same graph with a chain of identity 1x1 convolutions inserted after one ReLU
(outputs unchanged, cost added where the model computes), the chain's length calibrated here by
measuring the copy against the original, interleaved in one process at one thread (at the default
two threads the timings of this sub-millisecond model were too erratic to calibrate on); the
paired trials measure each copy's slow-down again every time, and the stored mode's is measured
over the whole run from its bench files.

Blocks repeat until --until (UTC) or --blocks:

  paired mode   `edgeprune gate --baseline-model A --current-model X --json V` for X = A' (a
                byte copy of A: the A/A trial), +10% and (every --slow5-every blocks) +5%;
                one process per trial, gate defaults (threads pinned to 1).
  stored mode   `edgeprune bench X --batch 1 --json B` for X = A (the history a CI keeps: one
                bench file per main-branch job), A' (the A/A trial's current build), +10% and
                (every --slow5-every blocks) +5%, at bench defaults otherwise (the target's runtime-default
                threads). A stored trial judges the current build's bench file of one block
                against the A files of the `--runs` blocks before it with `compare_runs` (the
                function `edgeprune gate --baseline ... --current ...` calls; the decision is
                deterministic given the files, so it runs in this process), so neighbouring
                stored trials share baseline processes (sliding windows).

Every process's command, exit code, wall time and the load average before it are logged to
`<work>/trials.jsonl`; `--analyse` re-reads that log and writes the tables.

    nice -n 5 .venv/bin/python benchmarks/gate_false_alarms.py --export dist/demo-keep0.50 \
        --until 02:40            # then, or after an interruption:
    .venv/bin/python benchmarks/gate_false_alarms.py --analyse
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper
from scipy.stats import beta

from edgeprune.fileio import write_json_atomic, write_text_atomic
from edgeprune.measure.bench import BenchConfig, benchmark
from edgeprune.measure.environment import environment
from edgeprune.measure.regression import RegressionConfig, compare_runs

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
WORK = ROOT / "runs" / "gate-bench"
EDGEPRUNE = Path(sys.executable).parent / "edgeprune"
SLOWDOWNS = {"slow10": 0.10, "slow5": 0.05}
DEFAULT_SETTINGS = "the gate's defaults of the recorded commit (60 rounds, >= 1.5 s and 100 iterations, 1 thread)"


# --- slower copies ------------------------------------------------------------------------


def insertion_point(model: onnx.ModelProto) -> tuple[str, int, int]:
    """(tensor, channels, cost) of the ReLU output whose identity 1x1 conv costs least
    (channels^2 x H x W multiply-adds), so that the chain's length sets the slow-down finely."""
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {}
    for value in list(inferred.graph.value_info) + list(inferred.graph.output):
        dims = [d.dim_value for d in value.type.tensor_type.shape.dim]
        if len(dims) == 4 and all(d > 0 for d in dims[1:]):
            shapes[value.name] = dims
    best = None
    for node in model.graph.node:
        if node.op_type == "Relu" and node.output[0] in shapes:
            _, c, h, w = shapes[node.output[0]]
            if best is None or c * c * h * w < best[2]:
                best = (node.output[0], c, c * c * h * w)
    if best is None:
        raise SystemExit("no ReLU with a known 4-D output shape to insert the slow-down after")
    return best


def slowed_copy(src: Path, dst: Path, convs: int) -> None:
    """`src` with `convs` identity 1x1 convolutions chained after the cheapest ReLU output."""
    model = onnx.load(str(src))
    tensor, channels, _ = insertion_point(model)
    eye = np.eye(channels, dtype=np.float32).reshape(channels, channels, 1, 1)
    model.graph.initializer.append(numpy_helper.from_array(eye, "slowdown_eye"))
    previous, nodes = tensor, []
    for i in range(convs):
        out = f"slowdown_{i}"
        nodes.append(helper.make_node("Conv", [previous, "slowdown_eye"], [out],
                                      name=f"slowdown_conv_{i}"))
        previous = out
    for node in model.graph.node:
        for j, name in enumerate(node.input):
            if name == tensor:
                node.input[j] = previous
    for output in model.graph.output:
        if output.name == tensor:
            raise SystemExit("the insertion point is a graph output")
    producer = next(i for i, n in enumerate(model.graph.node) if tensor in n.output)
    for k, node in enumerate(nodes):
        model.graph.node.insert(producer + 1 + k, node)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))


def measured_ratio(base: Path, other: Path, threads: int | None, seconds: float = 2.0) -> float:
    """p50(other) / p50(base), interleaved in this process (40 rounds), at `threads`."""
    from edgeprune.measure.bench import benchmark_files

    config = BenchConfig(min_seconds=seconds, min_iterations=200, rounds=40, batch_sizes=(1,),
                         threads=threads, memory_iterations=0, bootstrap_resamples=200)
    from edgeprune.measure.bench import onnx_input_dims

    result = benchmark_files({"base": base, "other": other}, onnx_input_dims(base)[1:],
                             "cpu-x86", config, None, {}, base)
    return 1.0 / result.comparisons[0].speedup


def calibrate(base: Path, dst: Path, slowdown: float, threads: int | None, log: list) -> dict:
    """Find the chain length whose measured slow-down is nearest `slowdown`; write it to `dst`."""
    probe = dst.with_suffix(".probe.onnx")
    convs = 4
    slowed_copy(base, probe, convs)
    per_conv = max((measured_ratio(base, probe, threads) - 1.0) / convs, 1e-4)
    convs = max(1, round(slowdown / per_conv))
    best = None
    for _ in range(4):
        slowed_copy(base, probe, convs)
        ratio = measured_ratio(base, probe, threads)
        log.append({"threads": threads, "convs": convs, "ratio": ratio})
        if best is None or abs(ratio - 1.0 - slowdown) < abs(best[1] - 1.0 - slowdown):
            best = (convs, ratio)
        if abs(ratio - 1.0 - slowdown) <= 0.01:
            break
        convs = max(1, round(convs * slowdown / max(ratio - 1.0, 1e-3)))
    slowed_copy(base, dst, best[0])  # the chain length whose measurement came nearest
    probe.unlink(missing_ok=True)
    check = measured_ratio(base, dst, threads, seconds=4.0)
    return {"convs": best[0], "calibration": log, "check_ratio": check, "threads": threads}


# --- the trials ---------------------------------------------------------------------------


def run(cmd: list[str], env: dict, log_path: Path, record: dict) -> int:
    load = [round(v, 2) for v in os.getloadavg()]
    t0 = time.time()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    record.update(cmd=cmd, rc=done.returncode, wall_s=round(time.time() - t0, 2), load_before=load,
                  utc=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    if done.returncode not in (0, 1):
        record["stderr_tail"] = (done.stderr or done.stdout)[-400:]
    with log_path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
    return done.returncode


def measure(args: argparse.Namespace) -> None:
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    src = args.export / "model.onnx"
    models = {"A": work / "A.onnx", "A_copy": work / "A_copy.onnx"}
    shutil.copyfile(src, models["A"])
    shutil.copyfile(src, models["A_copy"])
    setup_path = work / "setup.json"
    setup = json.loads(setup_path.read_text()) if setup_path.exists() else {}
    if not setup:
        setup = {"export": str(args.export), "model_sha_source": str(src), "slowed": {},
                 "insertion": None}
        tensor, channels, cost = insertion_point(onnx.load(str(src)))
        setup["insertion"] = {"after": tensor, "channels": channels, "macs_per_conv": cost}
        for name, slowdown in SLOWDOWNS.items():
            # Calibrated at one thread: at the runtime's default two threads this sub-millisecond
            # model's timings were too erratic to calibrate on (7 convs measured 1.03 and 1.12 a
            # minute apart). The stored mode uses the same copies; what they cost at its threads is
            # measured over the whole run (`stored_copies_measured_over_the_run`).
            setup["slowed"][f"{name}_paired"] = calibrate(models["A"], work / f"{name}_paired.onnx", slowdown, 1, [])
            shutil.copyfile(work / f"{name}_paired.onnx", work / f"{name}_stored.onnx")
            setup["slowed"][f"{name}_stored"] = dict(setup["slowed"][f"{name}_paired"], note="the paired copy")
            print(f"calibrated {name}: {setup['slowed'][f'{name}_paired']}", flush=True)
        write_json_atomic(setup_path, setup)
    env = dict(os.environ)
    if args.src:
        env["PYTHONPATH"] = str(args.src)
    log_path = work / "trials.jsonl"
    block = (max(json.loads(line)["block"] for line in log_path.open()) + 1
             if log_path.exists() and log_path.stat().st_size else 0)
    deadline = _deadline(args.until)
    while (args.blocks is None or block < args.blocks) and time.time() < deadline:
        arms = ["aa", "slow10"] + (["slow5"] if block % args.slow5_every == 0 else [])
        for arm in arms:
            current = models["A_copy"] if arm == "aa" else work / f"{arm}_paired.onnx"
            verdict = work / "verdicts" / f"{block:04d}-{arm}.json"
            verdict.parent.mkdir(exist_ok=True)
            pair = work / "pairs" / f"{block:04d}-{arm}.json"
            pair.parent.mkdir(exist_ok=True)
            run([str(EDGEPRUNE), "gate", "--baseline-model", str(models["A"]),
                 "--current-model", str(current), "--json", str(verdict),
                 "--bench-json", str(pair), *args.gate_args.split()], env, log_path,
                {"mode": "paired", "arm": arm, "block": block, "verdict": str(verdict),
                 "settings": args.gate_args or DEFAULT_SETTINGS})
        for arm in ["history", "aa"] + arms[1:]:
            model = {"history": models["A"], "aa": models["A_copy"]}.get(arm, work / f"{arm}_stored.onnx")
            out = work / "bench" / f"{block:04d}-{arm}.json"
            out.parent.mkdir(exist_ok=True)
            run([str(EDGEPRUNE), "bench", str(model), "--batch", "1", "--json", str(out)], env,
                log_path, {"mode": "stored", "arm": arm, "block": block, "bench": str(out)})
        print(f"block {block} done at {datetime.now(timezone.utc):%H:%M:%S}, load "
              f"{os.getloadavg()[0]:.2f}", flush=True)
        block += 1


def _deadline(until: str | None) -> float:
    if not until:
        return float("inf")
    now = datetime.now(timezone.utc)
    hh, mm = (int(x) for x in until.split(":"))
    stop = now.replace(hour=hh, minute=mm, second=0, microsecond=0)
    return stop.timestamp() if stop > now else stop.timestamp() + 86400


# --- analysis -----------------------------------------------------------------------------


def rate(failed: int, n: int) -> dict:
    low = float(beta.ppf(0.025, failed, n - failed + 1)) if failed > 0 else 0.0
    high = float(beta.ppf(0.975, failed + 1, n - failed)) if failed < n else 1.0
    return {"trials": n, "failed": failed, "rate": failed / n if n else None,
            "ci95_clopper_pearson": [round(low, 4), round(high, 4)]}


def arm_summary(verdicts: list[dict], limit: float) -> dict:
    outcomes = [v["outcome"] for v in verdicts]
    checks = [next(c for c in v["checks"] if c["metric"] == "p50 ms") for v in verdicts]
    ratios = np.array([c["ratio"] for c in checks if c["ratio"] is not None])
    lows = np.array([c["interval"][0] for c in checks if c["interval"]])
    q = [0.0, 0.05, 0.5, 0.95, 1.0]
    summary = {**rate(outcomes.count("regression"), len(outcomes)),
               "outcomes": {k: outcomes.count(k) for k in sorted(set(outcomes))},
               "ratio_quantiles": np.quantile(ratios, q).round(4).tolist() if ratios.size else None}
    if lows.size:
        # A uniform slow-down s scales every current figure by 1 + s, so this trial would have
        # failed for every s with low x (1 + s) > limit: s > limit / low - 1.
        detectable = limit / lows - 1.0
        summary["slowdown_detected_in_95pct"] = round(float(np.quantile(detectable, 0.95)), 4)
    return summary


def analyse(args: argparse.Namespace) -> dict:
    work = args.work
    records = [json.loads(line) for line in (work / "trials.jsonl").open()]
    setup = json.loads((work / "setup.json").read_text())
    gate_config = RegressionConfig()
    limit = 1.0 + gate_config.max_regression
    errors = [r for r in records if r["rc"] not in (0, 1)]
    paired = {}
    for r in records:
        # Logs before 2026-12-03 carry no label (the gate's first defaults) or called the gate's
        # defaults of their commit "30 rounds, 1 s (the first defaults)" whatever those were.
        r.setdefault("settings", "30 rounds, 1 s (the first defaults)")
        if r["settings"] == "30 rounds, 1 s (the first defaults)" and r.get("utc", "") >= "2026-12-03":
            r["settings"] = DEFAULT_SETTINGS
    for settings in sorted({r["settings"] for r in records if r["mode"] == "paired"}):
        paired[settings] = {}
        for arm in ("aa", "slow10", "slow5"):
            docs = [json.loads(Path(r["verdict"]).read_text()) for r in records
                    if r["mode"] == "paired" and r["arm"] == arm and r["rc"] in (0, 1)
                    and r["settings"] == settings and Path(r["verdict"]).exists()]
            if docs:
                paired[settings][arm] = arm_summary(docs, limit)
    bench = {}
    for r in records:
        if r["mode"] == "stored" and r["rc"] == 0 and Path(r["bench"]).exists():
            doc = json.loads(Path(r["bench"]).read_text())
            for e in doc["entries"]:
                e["model"] = "model"  # the same model name on both sides, as in CI
            bench[(r["block"], r["arm"])] = doc
    blocks = sorted({b for b, _ in bench})
    stored = {}
    for k in sorted({args.runs, 10}):
        stored[str(k)] = {}
        for arm in ("aa", "slow10", "slow5"):
            verdicts = []
            for i, block in enumerate(blocks):
                base = [bench[(b, "history")] for b in blocks[max(0, i - k):i] if (b, "history") in bench]
                if len(base) == k and (block, arm) in bench:
                    verdicts.append(compare_runs(base, [bench[(block, arm)]], gate_config).to_dict())
            if verdicts:
                stored[str(k)][arm] = arm_summary(verdicts, limit)
    # The slow-down each copy really had over the whole run, at the stored mode's settings:
    # the geometric mean of its bench p50s over that of the A runs of the same blocks.
    true_stored = {}
    for arm in ("aa", "slow10", "slow5"):
        pairs = [(bench[(b, "history")], bench[(b, arm)]) for b in blocks
                 if (b, arm) in bench and (b, "history") in bench]
        if pairs:
            logs = [np.log(x["entries"][0]["p50_ms"] / a["entries"][0]["p50_ms"]) for a, x in pairs]
            true_stored[arm] = {"runs": len(pairs), "geomean_ratio": round(float(np.exp(np.mean(logs))), 4),
                                "run_ratio_sd": round(float(np.std(logs, ddof=1)), 4) if len(logs) > 1 else None}
    walls = [r["wall_s"] for r in records]
    loads = np.array([r["load_before"][0] for r in records])
    env = environment()
    report = {
        "command": "python benchmarks/gate_false_alarms.py --export EXPORT --until HH:MM; then --analyse",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {k: env.get(k) for k in ("cpu_model", "physical_cores", "logical_cores", "os",
                                            "python")},
        "versions": env["versions"],
        "setup": setup,
        "first_utc": records[0]["utc"] if records else None,
        "last_utc": records[-1]["utc"] if records else None,
        "processes": len(records),
        "process_errors": len(errors),
        "process_wall_s_total": round(float(sum(walls)), 1),
        "load_average_1min_quantiles": np.quantile(loads, [0, 0.5, 0.95, 1]).round(2).tolist(),
        "gate_config": gate_config.to_dict(),
        "stored_runs_per_side": sorted(int(k) for k in stored),
        "paired": paired,
        "stored": stored,
        "stored_copies_measured_over_the_run": true_stored,
        "note": args.note,
        "code": (args.src.parent / "COMMIT").read_text().strip()
        if args.src and (args.src.parent / "COMMIT").exists() else None,
    }
    write_json_atomic(args.out / "gate_false_alarms.json", report)
    write_text_atomic(args.out / "gate_false_alarms.md", render(report))
    print(render(report))
    return report


def _cell(s: dict) -> str:
    low, high = s["ci95_clopper_pearson"]
    return f"{s['failed']}/{s['trials']} = **{s['rate']:.1%}** (95% CI {low:.1%}–{high:.1%})"


def render(r: dict) -> str:
    m = r["machine"]
    lines = [
        "# Gate false-alarm and detection rates, trials of separate `edgeprune` processes",
        "",
        f"Made with `{r['command']}` (edgeprune processes ran commit {r.get('code')}); processes from {r['first_utc']} to {r['last_utc']}, "
        f"analysed {r['created']}.",
        "",
        *([r["note"], ""] if r.get("note") else []),
        f"- Machine: {m['cpu_model']}, {m['physical_cores']} physical / {m['logical_cores']} logical "
        f"cores, {m['os']}, Python {m['python']}, onnxruntime {r['versions'].get('onnxruntime')}.",
        f"- 1-minute load average before each process (min, median, p95, max): "
        f"{r['load_average_1min_quantiles']} on 2 cores.",
        f"- {r['processes']} `edgeprune` processes ({r['process_errors']} exited with an error), "
        f"{r['process_wall_s_total']} s of process wall time.",
        f"- Model: `{r['setup']['export']}/model.onnx`. Slower copies: identity 1x1 conv chain after "
        f"`{r['setup']['insertion']['after']}` ({r['setup']['insertion']['channels']} channels); "
        "measured slow-down of each copy, interleaved in one process at its mode's threads: "
        + ", ".join(f"{name} {v['check_ratio']:.3f} ({v['convs']} convs)"
                    for name, v in r["setup"]["slowed"].items()) + ".",
        f"- Gate defaults: fail when the {1 - 2 * r['gate_config']['alpha']:.0%} interval's low "
        f"end is over {1 + r['gate_config']['max_regression']:.2f}, pass when its high end is "
        "under, else inconclusive (exit 0 unless --strict).",
        "",
    ]
    names = {"aa": "A/A (byte copy)", "slow10": "+10% copy", "slow5": "+5% copy"}
    names_over_run = {"aa": "A/A byte copy", "slow10": "+10% copy", "slow5": "+5% copy"}
    for settings, arms in r["paired"].items():
        lines += ["", f"## Paired mode (`edgeprune gate --baseline-model A --current-model X`, "
                      f"threads pinned to 1): {settings}", "",
                  "| arm | failed (exit 1) | outcomes | ratio (min, p5, median, p95, max) |",
                  "| --- | --- | --- | --- |"]
        for arm, s in arms.items():
            lines.append(f"| {names[arm]} | {_cell(s)} | {s['outcomes']} | {s['ratio_quantiles']} |")
        if "aa" in arms:
            lines += ["", f"Smallest uniform slow-down this paired gate would fail in 95% of these "
                          f"A/A trials (each trial's interval low end scaled): "
                          f"**{arms['aa']['slowdown_detected_in_95pct']:+.1%}**."]
    for k, arms in r["stored"].items():
        lines += [
            "",
            f"## Stored-baseline mode: the current build's one `edgeprune bench X --batch 1` process against "
            f"the A runs of the {k} blocks before it (bench defaults otherwise: the target's runtime-default threads)",
            "",
            "| arm | failed (exit 1) | outcomes | ratio (min, p5, median, p95, max) |",
            "| --- | --- | --- | --- |",
        ]
        for arm, s in arms.items():
            lines.append(f"| {names[arm]} | {_cell(s)} | {s['outcomes']} | {s['ratio_quantiles']} |")
        if "aa" in arms:
            lines += ["", f"Smallest uniform slow-down this stored gate would fail in 95% of these "
                          f"A/A trials: **{arms['aa']['slowdown_detected_in_95pct']:+.1%}**. "
                          "Neighbouring stored trials share baseline processes (sliding windows)."]
    if r.get("stored_copies_measured_over_the_run"):
        lines += ["", "Slow-down of the stored mode's copies over the whole run (geometric mean of "
                      "their bench p50 over the A runs' of the same blocks): "
                  + ", ".join(f"{names_over_run[a]} {v['geomean_ratio']:.3f} over {v['runs']} runs "
                              f"(run-to-run SD of the log ratio {v['run_ratio_sd']})"
                              for a, v in r["stored_copies_measured_over_the_run"].items()) + "."]
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--export", type=Path, default=None, help="export folder with model.onnx")
    parser.add_argument("--until", default=None, help="stop starting blocks at this UTC HH:MM")
    parser.add_argument("--blocks", type=int, default=None)
    parser.add_argument("--runs", type=int, default=5, help="stored mode: baseline (history) runs per trial")
    parser.add_argument("--slow5-every", type=int, default=1, help="run the +5%% arms every N-th block")
    parser.add_argument("--src", type=Path, default=None,
                        help="PYTHONPATH of the edgeprune processes (a frozen copy of src/)")
    parser.add_argument("--work", type=Path, default=WORK)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--analyse", action="store_true", help="only re-read the log")
    parser.add_argument("--note", default=None, help="a paragraph for the top of the tables")
    parser.add_argument("--gate-args", default="",
                        help="extra `edgeprune gate` options of the paired trials (recorded)")
    args = parser.parse_args(argv)
    if not args.analyse:
        if args.export is None or not (args.export / "model.onnx").is_file():
            parser.error("--export must name an export folder with model.onnx")
        measure(args)
        if args.blocks == 0:  # calibration only (the copies are kept for the runs that follow)
            return 0
    analyse(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
