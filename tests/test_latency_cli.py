"""`--budget latency` and `edgeprune profile` through the CLI, and the params-budget tie-break."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from edgeprune.cli import main


def _invoke(*args):
    return CliRunner().invoke(main, list(args))


def test_latency_budget_on_a_target_whose_runtime_is_not_here_is_one_line(tmp_path):
    result = _invoke("export", "--budget", "latency", "--target", "gpu-trt-fp16", "--run", str(tmp_path / "runs" / "x"),
                     "-o", str(tmp_path / "dist"))
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "latency" in lines[0] and "gpu-trt-fp16" in lines[0]
    assert "Traceback" not in result.output
    assert not (tmp_path / "dist").exists() and not (tmp_path / "runs").exists(), "nothing trained or written"


def test_latency_budget_on_an_int8_target_says_what_to_use(tmp_path):
    result = _invoke("prune", "--model", "resnet20", "--keep", "0.5", "--budget", "latency", "--target", "cpu-x86-int8",
                     "-o", str(tmp_path / "out"))
    assert result.exit_code != 0
    assert "--budget params or flops" in result.output.replace("\n", " ")
    assert not (tmp_path / "out").exists()


def test_profile_refuses_a_tensorrt_target_in_one_line():
    result = _invoke("profile", "--model", "resnet20", "--target", "gpu-trt-fp16")
    assert result.exit_code != 0
    assert len([line for line in result.output.splitlines() if line.strip()]) == 1


@pytest.mark.slow
def test_profile_measures_then_reuses_the_cache(tmp_path):
    args = ("profile", "--model", "resnet20", "--input-size", "16", "--cache-dir", str(tmp_path), "--json")
    first = _invoke(*args)
    assert first.exit_code == 0, first.output
    summary = json.loads(first.output)
    assert summary["measured_points"] > 0 and summary["dense_ms"] > 0
    assert all(layer["cout_points"] for layer in summary["layers"])
    second = json.loads(_invoke(*args).output)
    assert second["measured_points"] == 0
    assert second["cached_points"] == summary["measured_points"]


def test_params_budget_prefers_the_faster_plan_when_a_table_exists():
    import torch

    from edgeprune.analysis.graph import analyze
    from edgeprune.importance.criteria import score_units
    from edgeprune.plan import PlanConfig, make_plan
    from edgeprune.training.models import build_model

    torch.manual_seed(0)
    model = build_model("resnet20", 10).eval()
    graph = analyze(model, torch.randn(1, 3, 32, 32))
    scores = score_units("magnitude", model, graph)
    weight = np.random.default_rng(0).random(sum(g.size for g in graph.groups)) * 10.0

    def latency(kept: np.ndarray) -> float:  # a made-up target on which some channels cost far more
        return float(weight[kept].sum())

    config = PlanConfig(keep=0.5, round_to=1, min_channels=1, tolerance=0.01)
    plain = make_plan(model, graph, scores, config)
    faster = make_plan(model, graph, scores, config, latency=latency)
    assert abs(faster.keep_achieved - 0.5) <= config.tolerance
    assert faster.latency_after_ms < latency(_kept(graph, plain))
    assert faster.latency_before_ms == pytest.approx(latency(np.ones(weight.size, dtype=bool)))
    assert plain.latency_after_ms is None


def _kept(graph, plan) -> np.ndarray:
    offsets = np.cumsum([0] + [g.size for g in graph.groups])
    kept = np.zeros(int(offsets[-1]), dtype=bool)
    for gp in plan.groups:
        kept[offsets[gp.id] + np.array(gp.kept_units, dtype=np.int64)] = True
    return kept


def test_latency_budget_without_a_table_is_an_input_error():
    import torch

    from edgeprune.analysis.graph import analyze
    from edgeprune.errors import InputError
    from edgeprune.plan import PlanConfig, make_plan
    from edgeprune.training.models import build_model

    model = build_model("resnet20", 10).eval()
    graph = analyze(model, torch.randn(1, 3, 32, 32))
    scores = {g.id: np.ones(g.size) for g in graph.groups}
    with pytest.raises(InputError, match="latency table"):
        make_plan(model, graph, scores, PlanConfig(keep=0.5, budget="latency"))


def _latency_manifest(measured: float, half_width: float = 0.01):
    from edgeprune.report.manifest import Manifest

    record = {"requested_ratio": 0.5, "predicted_ratio": 0.49, "measured_ratio": measured,
              "measured_ratio_ci95": [measured - half_width, measured + half_width], "rounds": 2, "tolerance": 0.03,
              "met": True}
    return Manifest(name="x", budget="latency", keep_requested=0.5, keep_achieved=measured, latency_budget=record)


def test_manifest_keeps_the_latency_record_and_the_report_shows_it():
    from edgeprune.report.manifest import Manifest
    from edgeprune.report.render import _pruning_rows

    manifest = Manifest.from_dict(_latency_manifest(0.52).to_dict())
    assert manifest.latency_budget["rounds"] == 2
    rows = dict(_pruning_rows(manifest))
    assert rows["Latency measured on the target (95% CI)"].startswith("0.52")
    assert rows["Closed-loop rounds"].startswith("2")


@pytest.mark.parametrize("measured, half_width, severity", [(0.52, 0.01, "ok"), (0.56, 0.01, "fail"),
                                                             (0.52, 0.02, "info"), (0.49, 0.05, "info")])
def test_latency_budget_is_judged_by_the_closed_loop_tolerance_and_its_interval(measured, half_width, severity):
    """Median outside the ±3-point band: missed. Inside, with the 95% interval inside too: met.
    Inside, with the interval reaching past the band: met by the median, not confirmed."""
    from edgeprune.report.rules import Evidence, budget_met

    findings = budget_met(Evidence(_latency_manifest(measured, half_width)))
    assert [f.severity for f in findings] == [severity]
    if severity == "info":
        assert "not confirmed" in findings[0].title


def test_the_export_judges_the_latency_budget_on_its_own_longer_benchmark():
    """The loop keeps its best round (a lucky short measurement is favoured); the export's bench
    re-measures the chosen model against dense, and that figure is the one judged."""
    from types import SimpleNamespace

    from edgeprune.targets import load_target
    from edgeprune.workflows.export import final_latency_budget, latency_budget_note

    record = _latency_manifest(0.52).latency_budget
    target = load_target("cpu-x86")
    comparison = SimpleNamespace(candidate="pruned", baseline="dense", batch=target.opt_batch, speedup=1 / 0.56,
                                 speedup_ci95=(1 / 0.565, 1 / 0.555))
    final = final_latency_budget(dict(record), SimpleNamespace(comparisons=[comparison]), target)
    assert final["measured_ratio"] == pytest.approx(0.56) and final["loop_measured_ratio"] == 0.52
    assert final["measured_ratio_ci95"] == pytest.approx([0.555, 0.565])
    assert final["met"] is False and final["confirmed"] is False and "export's benchmark" in final["measured_by"]
    assert final_latency_budget(dict(record), None, target) == dict(record)
    # the note speaks of the figure judged, not of the loop's round (which was within tolerance)
    note = latency_budget_note(final, plan_note="")
    assert "measured a latency ratio of 0.560" in note and "chosen round had measured 0.520" in note
    assert latency_budget_note(dict(final, met=True), plan_note="a loop note") == ""
    assert latency_budget_note(dict(record), plan_note="a loop note") == "a loop note"  # not re-judged
    from edgeprune.plan import FLOOR_BOUND

    assert latency_budget_note(final, plan_note=f"closest found; {FLOOR_BOUND}").endswith(FLOOR_BOUND)
