"""How often does `edgeprune gate` cry wolf, and how often does it catch a real 10% slow-down?

Self-contained: builds a small CNN with onnx.helper, runs it with ONNX Runtime (1 thread), and
measures on this machine as it is (shared, noisy) with `edgeprune.measure.bench.benchmark`, then decides
with `edgeprune.measure.regression.compare` at its defaults (5% threshold, alpha 0.01).

Method. `--runs` short, independent bench runs are taken one after another. Each run measures,
interleaved, the model A and a slowed copy S of the same session: S's `run` times the real
inference and then busy-waits until 1.10 x that time has passed, so every S call costs exactly
10% more CPU time than the A call inside it, however fast or slow the machine is at that
moment (a fixed busy-wait would shrink to less than 10% when the machine slows down). A gate
trial compares two different runs, as CI does (baseline measured earlier, current now):

  A/A trial i        baseline = A from run i, current = A from run i+1   -> must pass
  detection trial i  baseline = A from run i, current = S from run i+1   -> must fail

Each run is used once as a baseline and once as a current, so neighbouring trials share a run;
the rates are over `runs - 1` trials of each kind. Secondary figures use lags 2..5 (runs further
apart in time, more drift) with a cheaper bootstrap (the decision does not use the bootstrap).

    .venv/bin/python benchmarks/gate_false_alarms.py            # ~6 minutes on 2 cores
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from scipy.stats import beta

from edgeprune.measure.bench import BenchConfig, benchmark
from edgeprune.measure.environment import environment
from edgeprune.fileio import write_json_atomic, write_text_atomic
from edgeprune.measure.regression import RegressionConfig, compare

RESULTS = Path(__file__).resolve().parent / "results"


def small_cnn(path: Path) -> str:
    """3x64x64 -> conv32 -> conv64/2 -> conv64 -> GAP -> fc10, ReLUs; about 40 M MACs."""
    rng = np.random.default_rng(0)
    inits, nodes, x, c_in = [], [], "x", 3
    for i, (c_out, stride) in enumerate([(32, 1), (64, 2), (64, 1)]):
        w = rng.standard_normal((c_out, c_in, 3, 3)).astype(np.float32) * 0.1
        inits += [numpy_helper.from_array(w, f"w{i}"),
                  numpy_helper.from_array(np.zeros(c_out, np.float32), f"b{i}")]
        nodes += [helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], pads=[1, 1, 1, 1],
                                   strides=[stride, stride]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        x, c_in = f"r{i}", c_out
    inits += [numpy_helper.from_array(rng.standard_normal((10, 64)).astype(np.float32), "fc_w"),
              numpy_helper.from_array(np.zeros(10, np.float32), "fc_b")]
    nodes += [helper.make_node("GlobalAveragePool", [x], ["g"]),
              helper.make_node("Flatten", ["g"], ["f"]),
              helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"], transB=1)]
    graph = helper.make_graph(
        nodes, "small_cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 64, 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return "Conv3x3(3->32) ReLU, Conv3x3/2(32->64) ReLU, Conv3x3(64->64) ReLU, GAP, Gemm(64->10); input 1x3x64x64"


class OrtRunner:
    name, device, precision = "onnxruntime", "cpu", "fp32"

    def __init__(self, path: Path, threads: int) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"x": batch})[0]

    def close(self) -> None:
        self.session = None


class SlowedRunner:
    """The same session, each call stretched to (1 + slowdown) x its own inference time."""

    name, device, precision = "onnxruntime+busywait", "cpu", "fp32"

    def __init__(self, inner: OrtRunner, slowdown: float) -> None:
        self.inner, self.factor = inner, 1.0 + slowdown

    def run(self, batch: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter_ns()
        out = self.inner.run(batch)
        until = t0 + int((time.perf_counter_ns() - t0) * self.factor)
        while time.perf_counter_ns() < until:
            pass
        return out

    def close(self) -> None:
        pass


def single_model_doc(result_dict: dict, model: str) -> dict:
    """One model of a two-model run, renamed so that A and S match as the same entry."""
    doc = dict(result_dict)
    doc["entries"] = [dict(e, model="model") for e in result_dict["entries"] if e["model"] == model]
    doc["comparisons"] = []
    return doc


def rate_summary(failed: list[bool]) -> dict:
    k, n = int(sum(failed)), len(failed)
    low = float(beta.ppf(0.025, k, n - k + 1)) if k > 0 else 0.0
    high = float(beta.ppf(0.975, k + 1, n - k)) if k < n else 1.0
    return {"trials": n, "failed": k, "rate": k / n if n else None, "ci95_clopper_pearson": [low, high]}


def trial_summary(verdicts: list) -> dict:
    checks = [next(c for c in v.checks if c.metric == "p50 ms") for v in verdicts]
    ratios = np.array([c.ratio for c in checks])
    pvals = np.array([c.p_value for c in checks])
    q = [0.0, 0.05, 0.5, 0.95, 1.0]
    return {
        "ratio_quantiles": dict(zip(["min", "p5", "median", "p95", "max"],
                                    np.quantile(ratios, q).round(4).tolist())),
        "ratio_over_threshold": int((ratios > 1.05).sum()),
        "p_below_alpha": int((pvals < 0.01).sum()),
        "p_value_quantiles": dict(zip(["min", "p5", "median", "p95", "max"],
                                      np.quantile(pvals, q).tolist())),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=101)
    parser.add_argument("--min-seconds", type=float, default=1.0)
    parser.add_argument("--min-iterations", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--slowdown", type=float, default=0.10)
    parser.add_argument("--max-lag", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    work = args.out / ".work"
    work.mkdir(parents=True, exist_ok=True)
    model_path = work / "small_cnn.onnx"
    description = small_cnn(model_path)
    base = OrtRunner(model_path, args.threads)
    models = {"A": base, "S": SlowedRunner(base, args.slowdown)}
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
    config = BenchConfig(warmup_s=0.2, min_iterations=args.min_iterations,
                         min_seconds=args.min_seconds, rounds=args.rounds, batch_sizes=(1,),
                         threads=args.threads, memory_iterations=0, bootstrap_resamples=200)
    gate_config = RegressionConfig()
    load_before = [round(v, 2) for v in os.getloadavg()]
    started = time.time()
    runs = []
    for i in range(args.runs):
        result = benchmark(models, {1: x}, dataclasses.replace(config, seed=i), target_name="cpu-x86")
        runs.append(result.to_dict())
        a, s = result.entry("A", 1), result.entry("S", 1)
        print(f"run {i + 1:3d}/{args.runs}: A p50 {a.p50_ms:.3f} ms, S p50 {s.p50_ms:.3f} ms "
              f"(S/A {s.p50_ms / a.p50_ms:.3f}), {a.n} iterations in {a.rounds} rounds, "
              f"CV {a.cv:.1%}, load {os.getloadavg()[0]:.2f}", flush=True)
    measure_s = time.time() - started
    load_after = [round(v, 2) for v in os.getloadavg()]

    lag1_aa, lag1_det = [], []
    for i in range(args.runs - 1):
        baseline = single_model_doc(runs[i], "A")
        lag1_aa.append(compare(baseline, single_model_doc(runs[i + 1], "A"), gate_config))
        lag1_det.append(compare(baseline, single_model_doc(runs[i + 1], "S"), gate_config))
    by_lag = {}
    cheap = dataclasses.replace(gate_config, bootstrap_resamples=100)
    for lag in range(2, args.max_lag + 1):
        aa = [compare(single_model_doc(runs[i], "A"), single_model_doc(runs[i + lag], "A"), cheap)
              for i in range(args.runs - lag)]
        det = [compare(single_model_doc(runs[i], "A"), single_model_doc(runs[i + lag], "S"), cheap)
               for i in range(args.runs - lag)]
        by_lag[str(lag)] = {"false_alarms": rate_summary([v.exit_code == 1 for v in aa]),
                            "detection": rate_summary([v.exit_code == 1 for v in det])}

    env = environment(threads=args.threads)
    within_run = [r["comparisons"][0]["speedup"] for r in runs]  # p50(A)/p50(S)
    report = {
        "command": "python benchmarks/gate_false_alarms.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {k: env.get(k) for k in ("cpu_model", "physical_cores", "logical_cores",
                                            "available_cores", "os", "python")},
        "versions": env["versions"],
        "load_average_1_5_15": {"before": load_before, "after": load_after},
        "note": "machine shared with other engineers during the run; their load is part of the noise",
        "model": description,
        "runner": f"ONNX Runtime CPU, {args.threads} intra-op thread",
        "slowdown_method": f"busy-wait after each inference until {1 + args.slowdown:.2f}x its own "
                           "measured time (proportional, so the slow-down stays 10% under drift)",
        "bench_config": config.to_dict(),
        "gate_config": gate_config.to_dict(),
        "runs": args.runs,
        "measure_seconds": round(measure_s, 1),
        "within_run_S_over_A_p50": dict(zip(["min", "median", "max"], np.quantile(
            1 / np.array(within_run), [0, 0.5, 1]).round(4).tolist())),
        "false_alarms": {**rate_summary([v.exit_code == 1 for v in lag1_aa]), **trial_summary(lag1_aa)},
        "detection": {**rate_summary([v.exit_code == 1 for v in lag1_det]), **trial_summary(lag1_det)},
        "by_lag": by_lag,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "gate_false_alarms.json", report)
    write_text_atomic(args.out / "gate_false_alarms.md", render_markdown(report))
    model_path.unlink(missing_ok=True)
    work.rmdir()
    fa, det = report["false_alarms"], report["detection"]
    print(f"machine: {report['machine']['cpu_model']}, {report['machine']['physical_cores']} cores")
    print(f"A/A false alarms: {fa['failed']}/{fa['trials']} = {fa['rate']:.1%} "
          f"(95% CI {fa['ci95_clopper_pearson'][0]:.1%}-{fa['ci95_clopper_pearson'][1]:.1%}); "
          f"ratios {fa['ratio_quantiles']}; p < alpha in {fa['p_below_alpha']}")
    print(f"+10% detection: {det['failed']}/{det['trials']} = {det['rate']:.1%} "
          f"(95% CI {det['ci95_clopper_pearson'][0]:.1%}-{det['ci95_clopper_pearson'][1]:.1%}); "
          f"ratios {det['ratio_quantiles']}; p < alpha in {det['p_below_alpha']}")
    for lag, rates in by_lag.items():
        print(f"lag {lag}: false alarms {rates['false_alarms']['rate']:.1%}, "
              f"detection {rates['detection']['rate']:.1%}")
    return 0


def _pct(summary: dict) -> str:
    low, high = summary["ci95_clopper_pearson"]
    return f"{summary['failed']}/{summary['trials']} = **{summary['rate']:.1%}** (95% CI {low:.1%}–{high:.1%})"


def render_markdown(r: dict) -> str:
    fa, det = r["false_alarms"], r["detection"]
    lines = [
        "# Gate false-alarm and detection rates",
        "",
        f"Made with `{r['command']}` on {r['created']}.",
        "",
        f"- Machine: {r['machine']['cpu_model']}, {r['machine']['physical_cores']} physical / "
        f"{r['machine']['logical_cores']} logical cores, {r['machine']['os']}, Python "
        f"{r['machine']['python']}, onnxruntime {r['versions']['onnxruntime']}.",
        f"- Load average (1/5/15 min) before {r['load_average_1_5_15']['before']}, after "
        f"{r['load_average_1_5_15']['after']}: {r['note']}.",
        f"- Model: {r['model']}; {r['runner']}.",
        f"- Each of {r['runs']} bench runs: warm-up {r['bench_config']['warmup_s']} s per model, "
        f">= {r['bench_config']['min_seconds']} s and >= {r['bench_config']['min_iterations']} "
        f"iterations and >= {r['bench_config']['rounds']} rounds per model, A and S interleaved "
        f"({r['measure_seconds']} s of measuring in all).",
        f"- Slowed copy S: {r['slowdown_method']}. Within one run, p50(S)/p50(A) was "
        f"{r['within_run_S_over_A_p50']}.",
        f"- Gate at its defaults: fail if p50 ratio > {1 + r['gate_config']['max_regression']:.2f} "
        f"and one-sided Mann-Whitney U on per-round medians p < {r['gate_config']['alpha']}.",
        "- A trial compares two different runs (baseline = run i, current = run i+1), as CI does;"
        " neighbouring trials share a run.",
        "",
        "| trials | failed the gate | ratio current/baseline (min, p5, median, p95, max) | ratio > 1.05 | p < alpha |",
        "| --- | --- | --- | --- | --- |",
        f"| A/A (same model) | {_pct(fa)} | {list(fa['ratio_quantiles'].values())} | "
        f"{fa['ratio_over_threshold']} | {fa['p_below_alpha']} |",
        f"| A vs S (+10%) | {_pct(det)} | {list(det['ratio_quantiles'].values())} | "
        f"{det['ratio_over_threshold']} | {det['p_below_alpha']} |",
        "",
        "Targets: false alarms <= 1%, detection >= 95%.",
        "",
        "Runs further apart in time (more drift between baseline and current):",
        "",
        "| lag (runs apart) | false alarms | detection |",
        "| --- | --- | --- |",
    ]
    for lag, rates in r["by_lag"].items():
        lines.append(f"| {lag} | {_pct(rates['false_alarms'])} | {_pct(rates['detection'])} |")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
