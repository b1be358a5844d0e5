"""Sweep: statistics, the operating point, CSV and plots, resume after an interruption, the CLI."""
from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from edgeprune.measure.results import BenchConfig
from edgeprune.errors import InputError, OutputExistsError
from edgeprune.importance.gates import GateConfig
from edgeprune.workflows.sweep import DenseModel, SweepConfig, sweep_command, sweep_dense
from edgeprune.report.sweep_plots import PLOT_FILES
from edgeprune.workflows.sweep_stats import CSV_COLUMNS, aggregate, csv_text, operating_point, pareto_front, summarize

INPUT_SHAPE = (1, 8, 8)
TINY_BENCH = BenchConfig(warmup_s=0.01, min_iterations=6, min_seconds=0.02, rounds=3, memory_iterations=0,
                         bootstrap_resamples=100)


# --- statistics --------------------------------------------------------------------------------------


def test_summary_is_mean_sample_std_and_t_interval():
    s = summarize([80.0, 82.0, 84.0])
    # mean 82, sample std 2, t(0.975, df=2) = 4.302653 -> half width 4.302653 * 2 / sqrt(3) = 4.968275
    assert s.n == 3 and s.mean == pytest.approx(82.0) and s.std == pytest.approx(2.0)
    assert s.ci95_low == pytest.approx(82.0 - 4.968275, abs=1e-5)
    assert s.ci95_high == pytest.approx(82.0 + 4.968275, abs=1e-5)


def test_summary_of_two_values_uses_the_wide_t_quantile():
    s = summarize([1.0, 3.0])  # std sqrt(2), t(0.975, 1) = 12.706205 -> half 12.706205
    assert s.std == pytest.approx(math.sqrt(2.0))
    assert s.ci95_high - s.mean == pytest.approx(12.706205, abs=1e-5)


def test_summary_of_one_value_has_no_spread():
    s = summarize([91.5])
    assert (s.n, s.mean, s.std, s.ci95_low, s.ci95_high) == (1, 91.5, None, None, None)


def _record(criterion, seed, keep, accuracy, *, dense=90.0, latency=None):
    return {"criterion": criterion, "seed": seed, "keep": keep, "keep_achieved": keep + 0.001,
            "params_after": 1000 * keep, "flops_after": 5000 * keep, "accuracy_pct": accuracy,
            "accuracy_before_finetune_pct": accuracy - 10, "dense_accuracy_pct": dense, "latency": latency}


def test_aggregate_groups_by_criterion_and_keep_over_seeds():
    records = [_record("gate", s, k, acc) for k, accs in ((0.5, (88, 89, 90)), (0.3, (80, 84, 82)))
               for s, acc in enumerate(accs)]
    records += [_record("magnitude", s, 0.5, 85 + s) for s in range(3)]
    rows = aggregate(records)
    assert [(r.criterion, r.keep) for r in rows] == [("gate", 0.5), ("gate", 0.3), ("magnitude", 0.5)]
    assert rows[1].seeds == (0, 1, 2)
    assert rows[1].accuracy_pct.mean == pytest.approx(82.0) and rows[1].accuracy_pct.std == pytest.approx(2.0)
    assert rows[0].sparsity == pytest.approx(0.499)
    assert rows[0].speedup is None


def test_aggregate_summarises_latency_when_timed():
    lat = lambda p, s: {"pruned_p50_ms": p, "dense_p50_ms": 2.0, "speedup": s}
    rows = aggregate([_record("gate", 0, 0.5, 88, latency=lat(1.0, 2.0)),
                      _record("gate", 1, 0.5, 88, latency=lat(1.2, 1.6))])
    assert rows[0].pruned_p50_ms.mean == pytest.approx(1.1)
    assert rows[0].speedup.mean == pytest.approx(1.8)


# --- the operating point -----------------------------------------------------------------------------


def _rows(cells):
    return aggregate([_record(c, s, k, acc) for c, k, accs in cells for s, acc in enumerate(accs)])


def test_operating_point_is_the_lowest_keep_within_tolerance():
    rows = _rows([("gate", 0.7, (90, 90)), ("gate", 0.5, (89.5, 89.1)), ("gate", 0.3, (85, 86))])
    point = operating_point(rows, dense_accuracy_pct=90.0, tolerance_points=1.0)
    assert (point.criterion, point.keep) == ("gate", 0.5)
    assert point.drop_points == pytest.approx(0.7)


def test_operating_point_counts_a_mean_exactly_at_the_tolerance():
    rows = _rows([("gate", 0.5, (89.0, 89.0)), ("gate", 0.3, (88.9, 88.9))])
    assert operating_point(rows, 90.0, 1.0).keep == 0.5


def test_operating_point_breaks_ties_at_one_keep_by_accuracy():
    rows = _rows([("gate", 0.3, (89.2, 89.4)), ("magnitude", 0.3, (89.8, 89.6)), ("random", 0.5, (90, 90))])
    point = operating_point(rows, 90.0, 1.0)
    assert (point.criterion, point.keep) == ("magnitude", 0.3)


def test_operating_point_is_none_when_nothing_is_within_tolerance():
    rows = _rows([("gate", 0.9, (85, 86)), ("gate", 0.5, (80, 81))])
    assert operating_point(rows, 90.0, 1.0) is None
    assert operating_point(rows, 90.0, 5.0).keep == 0.9


def test_operating_point_per_criterion_ignores_the_other_criteria():
    rows = _rows([("gate", 0.3, (89.5, 89.5)), ("magnitude", 0.3, (70, 71)), ("magnitude", 0.7, (89.9, 89.9))])
    assert operating_point(rows, 90.0, 1.0, criterion="magnitude").keep == 0.7
    assert operating_point(rows, 90.0, 1.0, criterion="random") is None


def test_pareto_front_keeps_only_undominated_points_sorted_by_latency():
    latency = [1.0, 2.0, 1.5, 3.0, None, 2.5]
    accuracy = [80.0, 90.0, 79.0, 91.0, 99.0, 89.0]
    # 2 is beaten by 0 (faster and better), 5 by 1; 4 has no latency
    assert pareto_front(latency, accuracy) == [0, 1, 3]


# --- CSV layout --------------------------------------------------------------------------------------


def test_csv_has_one_row_per_run_then_one_mean_row_per_cell():
    records = [_record("gate", s, k, 80.0 + 2 * s) for k in (0.5, 0.3) for s in range(3)]
    rows = aggregate(records)
    lines = csv_text(records, rows).splitlines()
    assert lines[0].split(",") == list(CSV_COLUMNS)
    body = [dict(zip(CSV_COLUMNS, line.split(","))) for line in lines[1:]]
    assert [b["row"] for b in body] == ["run"] * 6 + ["mean"] * 2
    mean = body[6]
    assert (mean["criterion"], float(mean["keep"]), mean["n"], mean["seed"]) == ("gate", 0.5, "3", "")
    assert float(mean["accuracy_pct"]) == pytest.approx(82.0)
    assert float(mean["accuracy_std_pct"]) == pytest.approx(2.0)
    assert float(mean["accuracy_ci95_low_pct"]) == pytest.approx(82.0 - 4.968275, abs=1e-3)
    assert body[0]["accuracy_std_pct"] == "" and body[0]["seed"] == "0"


# --- config ------------------------------------------------------------------------------------------


def test_config_takes_a_seed_count_or_list_and_sorts_keeps():
    config = SweepConfig(keeps=(0.3, 0.9, 0.5), seeds=3, criteria=("gate", "magnitude"))
    assert config.seeds == (0, 1, 2) and config.keeps == (0.9, 0.5, 0.3)
    assert SweepConfig(seeds=(4, 7)).seeds == (4, 7)
    assert SweepConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


@pytest.mark.parametrize("bad", [
    {"keeps": (0.5, 1.5)}, {"keeps": (0.5, 0.5)}, {"seeds": 0}, {"seeds": ()}, {"criteria": ("gates",)},
    {"finetune_epochs": -1}, {"tolerance_points": -0.5}, {"budget": "latency"},
])
def test_config_rejects_bad_values_with_input_error(bad):
    with pytest.raises(InputError):
        SweepConfig(**bad)


def test_every_criterion_spends_the_same_epochs_when_compute_is_equal():
    """The gate phase and Network Slimming's sparsity training count: a criterion that scores the
    dense model as it is fine-tunes that much longer; gradual recovery comes out of the fine-tune."""
    config = SweepConfig(criteria=("gate", "magnitude", "slimming", "taylor", "random"), finetune_epochs=4,
                         gate=GateConfig(max_epochs=2))
    totals = {}
    for criterion in config.criteria:
        epochs = config.epochs_for(criterion)
        totals[criterion] = sum(epochs.values())
        assert config.finetune_recipe_for(criterion).epochs == epochs["finetune"]
    assert set(totals.values()) == {6}
    assert config.epochs_for("gate") == {"gate_phase_max": 2, "sparsity_training": 0, "recovery": 0, "finetune": 4}
    assert config.epochs_for("magnitude")["finetune"] == 6
    assert config.epochs_for("slimming")["sparsity_training"] == 2
    gradual = SweepConfig(criteria=("gate", "magnitude"), finetune_epochs=4, gate=GateConfig(max_epochs=2), steps=3)
    assert gradual.epochs_for("gate") == {"gate_phase_max": 2, "sparsity_training": 0, "recovery": 2, "finetune": 2}
    assert sum(gradual.epochs_for("magnitude").values()) == 6
    unequal = SweepConfig(criteria=("gate", "magnitude"), finetune_epochs=4, equal_compute=False)
    assert unequal.epochs_for("magnitude")["finetune"] == 4
    assert "--no-equal-compute" in sweep_command(Path("r"), Path("o"), unequal)
    assert unequal.settings() != SweepConfig(criteria=("gate", "magnitude"), finetune_epochs=4).settings()
    with pytest.raises(InputError, match="recovery epochs"):
        SweepConfig(criteria=("gate",), finetune_epochs=0, gate=GateConfig(max_epochs=1), steps=4)


def test_sweep_command_reproduces_the_config():
    config = SweepConfig(keeps=(0.5, 0.25), seeds=(3, 4), criteria=("gate", "random"), finetune_epochs=2,
                         round_to=4, bench=None)
    command = sweep_command(Path("runs/x"), Path("out/y"), config)
    assert command.startswith("edgeprune sweep --run runs/x --keep 0.5,0.25 --seeds 3,4 --criterion gate,random")
    assert "--finetune-epochs 2" in command and "--round-to 4" in command and "--bench-seconds 0" in command
    assert "--seeds 2 " in sweep_command(Path("r"), Path("o"), SweepConfig(seeds=2))
    assert SweepConfig(finetune_lr=0.01).settings() != SweepConfig().settings()


# --- end to end on a tiny model ----------------------------------------------------------------------


def _tiny_task():
    """Three classes: which third of an 8x8 image holds a bright bar. Learnable in a second."""
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(240) % 3
    images = torch.randn(240, *INPUT_SHAPE, generator=g) * 0.5
    for i, y in enumerate(labels.tolist()):
        images[i, 0, :, 3 * y: 3 * y + 2] += 1.5
    return SimpleNamespace(train=TensorDataset(images[:180], labels[:180]),
                           test=TensorDataset(images[180:], labels[180:]))


@pytest.fixture(scope="module")
def tiny_dense():
    from edgeprune.training.train import TrainConfig, train_model

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 3))
    splits = _tiny_task()
    train_model(model, splits, TrainConfig(epochs=6, batch_size=32, lr=0.05, schedule="cosine"))
    return model.eval(), splits


def _config(**changes):
    base = SweepConfig(keeps=(0.7, 0.4), seeds=2, criteria=("gate", "magnitude"), finetune_epochs=1,
                       gate=GateConfig(max_epochs=1, batch_size=64), round_to=1, min_channels=1, bench=None)
    return SweepConfig.from_dict({**base.to_dict(), **changes}) if changes else base


def _sweep(tiny_dense, out, config, **kwargs):
    model, splits = tiny_dense
    dense = DenseModel("tiny", model, splits, INPUT_SHAPE, Path(out) / "gates.pt")
    return sweep_dense(lambda seed: dense, out, config, source={"fingerprint": "tiny-v1"}, **kwargs)


def test_tiny_sweep_end_to_end_writes_records_csv_json_and_plots(tiny_dense, tmp_path):
    config = SweepConfig.from_dict({**_config().to_dict(), "keeps": [0.6], "bench": TINY_BENCH.to_dict()})
    result = _sweep(tiny_dense, tmp_path, config)
    assert result.runs_done == 4 and result.runs_reused == 0
    assert result.dense_accuracy_pct > 60.0  # the dense model learned the task (chance is 33%)
    assert len(list((tmp_path / "runs").glob("*.json"))) == 4
    for record in result.records:
        assert abs(record.keep_achieved - 0.6) < 0.15
        assert record.onnx_parity["passed"]
        assert record.latency["pruned_p50_ms"] > 0 and record.latency["speedup"] > 0
    for name in PLOT_FILES:
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    document = json.loads((tmp_path / "sweep.json").read_text())
    assert document["schema_version"] == 1 and len(document["records"]) == 4
    assert document["command"] is None and document["config"]["criteria"] == ["gate", "magnitude"]
    assert "cpu_model" in document["environment"]
    assert [a["criterion"] for a in document["aggregates"]] == ["gate", "magnitude"]
    assert (tmp_path / "gates.pt").is_file()  # learned once, saved with the dense model
    lines = (tmp_path / "sweep.csv").read_text().splitlines()
    assert len(lines) == 1 + 4 + 2
    # the judgement the terminal prints is in the file: verdict, findings, chance from the model's 3 logits
    assert document["chance_accuracy_pct"] == pytest.approx(100 / 3)
    assert document["verdict"] == result.judgement.verdict.to_dict()
    assert {f["rule_id"] for f in document["findings"]} >= {"dense_untrained", "operating_point", "sweep_timing_noise"}


def test_plot_captions_carry_the_verdict_and_every_warning():
    from edgeprune.report.findings import Finding, verdict
    from edgeprune.report.sweep_plots import caption_lines
    from edgeprune.report.sweep_rules import SweepJudgement

    findings = (Finding("dense_untrained", "fail", "the dense model looks untrained", "Dense accuracy 12.7%."),
                Finding("sweep_timing_noise", "ok", "timings stable", "Largest CV 2%."),
                Finding("operating_point", "info", "no operating point recommended", "none recommended: x."))
    result = SimpleNamespace(judgement=SweepJudgement(findings, verdict(findings), False))
    text = "\n".join(caption_lines(result, 60))
    assert text.startswith("verdict (fail): FAIL: the dense model looks untrained")
    assert "- fail: the dense model looks untrained: Dense accuracy\n  12.7%." in text
    assert "none recommended" in text and "timings stable" not in text
    assert max(len(line) for line in caption_lines(result, 60)) <= 60


def test_records_written_before_the_sweep_rules_still_load():
    from edgeprune.workflows.sweep_run import SweepRecord

    old = {"criterion": "gate", "seed": 0, "keep": 0.5, "dense": "d", "fingerprint": "f", "keep_achieved": 0.5,
           "params_before": 2, "params_after": 1, "flops_before": 2, "flops_after": 1, "plan_note": "",
           "channels_after": {}, "dense_accuracy_pct": 90.0, "accuracy_before_finetune_pct": 80.0,
           "accuracy_pct": 89.0, "shrink_max_diff": 0.0, "onnx_parity": None, "latency": None,
           "finetune_seconds": 0.0, "seconds": 1.0, "created": "2026-01-01T00:00:00+00:00", "schema_version": 1}
    assert SweepRecord.from_dict(old).num_classes is None


class _Interrupt(Exception):
    pass


def test_an_interrupted_sweep_resumes_without_redoing_finished_runs(tiny_dense, tmp_path, monkeypatch):
    config = _config()
    total = len(config.seeds) * len(config.criteria) * len(config.keeps)

    def stop_after_three(task, completed, total_):
        if task == "sweep runs" and completed >= 3:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        _sweep(tiny_dense, tmp_path, config, progress=stop_after_three)
    finished = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "runs").glob("*.json")}
    assert len(finished) == 3

    calls = []
    from edgeprune.workflows import sweep_executors

    real_run_one = sweep_executors.run_one
    monkeypatch.setattr(sweep_executors, "run_one", lambda *a, **k: calls.append(a[1:4]) or real_run_one(*a, **k))
    result = _sweep(tiny_dense, tmp_path, config)
    assert (result.runs_reused, result.runs_done, len(calls)) == (3, total - 3, total - 3)
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "runs").glob("*.json") if p.name in finished} == finished
    assert len(result.records) == total

    calls.clear()
    again = _sweep(tiny_dense, tmp_path, config)
    assert calls == [] and again.runs_reused == total


def test_changed_settings_are_refused_unless_forced(tiny_dense, tmp_path):
    config = SweepConfig.from_dict({**_config().to_dict(), "seeds": [0], "keeps": [0.5], "criteria": ["magnitude"]})
    _sweep(tiny_dense, tmp_path, config)
    changed = SweepConfig.from_dict({**config.to_dict(), "finetune_epochs": 2})
    with pytest.raises(OutputExistsError, match="finetune_epochs"):
        _sweep(tiny_dense, tmp_path, changed)
    result = _sweep(tiny_dense, tmp_path, changed, force=True)
    assert (result.runs_done, result.runs_reused) == (1, 0)
    # a wider grid under the same settings reuses what is there
    wider = SweepConfig.from_dict({**changed.to_dict(), "keeps": [0.5, 0.3]})
    assert _sweep(tiny_dense, tmp_path, wider).runs_reused == 1


# --- the command line --------------------------------------------------------------------------------


@pytest.fixture
def fake_run(tiny_dense, tmp_path, monkeypatch):
    """A run folder whose loading is stubbed, so the CLI test does not depend on training a run."""
    import sys

    model, splits = tiny_dense
    run_dir = tmp_path / "runs" / "tiny"
    run_dir.mkdir(parents=True)
    torch.save(model.state_dict(), run_dir / "dense.pt")
    spec = SimpleNamespace(model="tiny", data="tiny", input_shape=list(INPUT_SHAPE))
    stub = SimpleNamespace(
        load_run=lambda path: SimpleNamespace(spec=spec, model=model, metrics={}, path=Path(path)),
        load_splits=lambda spec_: splits,
        train_run=None,
    )
    monkeypatch.setitem(sys.modules, "edgeprune.training.runs", stub)
    return run_dir


def test_cli_sweep_prints_the_table_and_the_operating_point(fake_run, tmp_path):
    from click.testing import CliRunner

    from edgeprune.cli import main

    out = tmp_path / "sweep-out"
    args = ["sweep", "--run", str(fake_run), "--keep", "0.6", "--seeds", "2", "--criterion", "magnitude,random",
            "--finetune-epochs", "1", "--round-to", "1", "--min-channels", "1", "--bench-seconds", "0",
            "--tolerance", "50", "-o", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "magnitude" in result.output and "random" in result.output
    assert "operating point:" in result.output and "keep 0.6" in result.output
    assert "verdict (" in result.output
    document = json.loads((out / "sweep.json").read_text())
    assert document["command"].startswith(f"edgeprune sweep --run {fake_run} --keep 0.6 --seeds 2")
    assert len(document["records"]) == 4

    changed = CliRunner().invoke(main, [*args[:-2], "--finetune-epochs", "2", "-o", str(out)])
    assert changed.exit_code == 1 and "--force" in changed.output


def test_cli_sweep_rejects_a_bad_keep_list(fake_run):
    from click.testing import CliRunner

    from edgeprune.cli import main

    result = CliRunner().invoke(main, ["sweep", "--run", str(fake_run), "--keep", "0.5,1.5"])
    assert result.exit_code == 2 and "1.5" in result.output


def test_gate_penalty_prices_each_unit_by_the_parameters_it_removes(tiny_dense):
    from edgeprune.importance.gates import unit_costs
    from edgeprune.analysis.graph import analyze
    from edgeprune.workflows.prune import example_input

    model, _ = tiny_dense
    costs = unit_costs(model, analyze(model, example_input(INPUT_SHAPE)))
    # conv1 channel: 9 weights + bias + BN gamma/beta + 16x9 conv2 inputs = 156; conv2 channel:
    # 72 weights + bias + BN gamma/beta + 3 fc inputs = 78; mean over 8 + 16 units = 104
    assert costs.shape == (24,)
    assert torch.allclose(costs, torch.tensor([1.5] * 8 + [0.75] * 16))
