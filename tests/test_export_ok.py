"""One export that is good end to end, so the suite also shows the verdict saying so.

A deliberately over-wide CNN (tests/wide_model.py) trained on scikit-learn's digits at 8x8 keeps
its accuracy at half its parameters and runs measurably faster; every rule about the model must
pass. Channels are rounded to multiples of 4: at round_to=1 the odd widths ran slower than dense
on this project's AMD EPYC machine (0.87x), a real finding the speedup rule reported.
"""
from __future__ import annotations

import pytest

from edgeprune.measure.results import BenchConfig
from edgeprune.report import evaluate, verdict
from edgeprune.training.runs import train_run
from edgeprune.training.train import TrainConfig
from edgeprune.workflows.export import ExportConfig, export_pipeline

pytestmark = pytest.mark.slow


def test_a_good_export_ends_with_an_ok_verdict(tmp_path):
    run_dir = tmp_path / "runs" / "wide"
    run = train_run(run_dir, "wide_model:wide_cnn", "digits",
                    TrainConfig(epochs=6, batch_size=32, lr=0.1), image_size=8)
    assert run.metrics["dense"]["test_accuracy"] > 0.95
    bench = BenchConfig(warmup_s=0.1, min_iterations=100, min_seconds=1.0, rounds=20, memory_iterations=1,
                        bootstrap_resamples=500)
    # The gate and fine-tune recipes are the library's defaults, as a user would run them.
    result = export_pipeline(ExportConfig(keep=0.5, run_dir=run_dir, out_root=tmp_path / "dist", round_to=4,
                                          bench=bench, parity_samples=128))
    findings = evaluate(result.manifest)
    final = verdict(findings)
    by_rule = {f.rule_id: f.severity for f in findings}
    # Every rule about the model is OK. The timing-noise rule judges the machine, not the export:
    # on a shared runner it may warn (per-round CV over 10% at these sub-millisecond latencies),
    # and then it must be the only reason the verdict is not OK.
    not_ok = [f for f in findings if f.rule_id != "timing_noise" and f.severity != "ok"]
    assert not_ok == []
    assert {"untrained_model", "budget_met", "accuracy_drop", "shrink_check", "onnx_parity", "speedup"} <= set(by_rule)
    assert by_rule["timing_noise"] in ("ok", "info", "warn")
    expected = "warn" if by_rule["timing_noise"] == "warn" else "ok"
    assert final.status == expected, [f"{f.severity}: {f.title}" for f in findings if f.severity != "ok"]
    if expected == "ok":
        assert "**Verdict: OK:" in (result.out_dir / "report.md").read_text()
