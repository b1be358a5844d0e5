"""`edgeprune prune` and `edgeprune inspect` end to end through click's CliRunner."""
from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from edgeprune.cli import main


class DataDependent(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(16, 16, 1)

    def forward(self, x):
        if x.sum() > 0:
            return self.conv(x)
        return x


class Untraceable(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 32, 3, padding=1)
        self.b = nn.Conv2d(32, 16, 3, padding=1)
        self.odd = DataDependent()
        self.c = nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        x = self.odd(torch.relu(self.b(torch.relu(self.a(x)))))
        return self.fc(torch.relu(self.c(x)).mean((2, 3)))


class RootUntraceable(Untraceable):
    def forward(self, x):  # data-dependent control flow in the model's own forward
        x = torch.relu(self.b(torch.relu(self.a(x))))
        if x.sum() > 0:
            x = x * 2
        return self.fc(torch.relu(self.c(x)).mean((2, 3)))


def untraceable_model(num_classes: int = 10, **_: object) -> nn.Module:
    return Untraceable(num_classes)


def root_untraceable_model(num_classes: int = 10, **_: object) -> nn.Module:
    return RootUntraceable(num_classes)


UNTRACEABLE = f"{__name__}:untraceable_model"
ROOT_UNTRACEABLE = f"{__name__}:root_untraceable_model"


def _run(*args: str):
    return CliRunner().invoke(main, list(args))


def _error_lines(result) -> list[str]:
    return [line for line in result.output.splitlines() if line.strip()]


def test_prune_writes_plan_and_weights_within_half_a_point(tmp_path):
    out = tmp_path / "pruned"
    result = _run("prune", "--model", "resnet20", "--keep", "0.5", "--input-size", "16", "-o", str(out))
    assert result.exit_code == 0, result.output
    plan = json.loads((out / "plan.json").read_text())
    assert abs(plan["keep_achieved"] - 0.5) <= 0.005
    assert plan["criterion"] == "magnitude" and plan["model"] == "resnet20"
    assert (out / "model.safetensors").stat().st_size > 0
    assert "achieved" in result.output and "shrink check" in result.output


def test_prune_json_summary_and_flops_budget(tmp_path):
    out = tmp_path / "pruned"
    result = _run("prune", "--model", "resnet20", "--keep", "0.6", "--budget", "flops", "--criterion", "bn",
                  "--input-size", "16", "-o", str(out), "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["budget"] == "flops" and summary["criterion"] == "bn"
    assert abs(summary["flops_after"] / summary["flops_before"] - 0.6) <= 0.005
    assert summary["shrink_max_diff"] <= summary["shrink_tolerance"]


def test_prune_refuses_an_existing_output_without_force(tmp_path):
    out = tmp_path / "pruned"
    out.mkdir()
    result = _run("prune", "--model", "resnet20", "--keep", "0.5", "-o", str(out))
    assert result.exit_code == 1 and "--force" in result.output
    result = _run("prune", "--model", "resnet20", "--keep", "0.5", "--input-size", "16", "-o", str(out), "--force")
    assert result.exit_code == 0, result.output
    assert (out / "plan.json").is_file()


@pytest.mark.parametrize("keep", ["0", "1.5", "-1"])
def test_prune_with_keep_out_of_range_fails_with_one_line(keep, tmp_path):
    result = _run("prune", "--model", "resnet20", "--keep", keep, "-o", str(tmp_path / "out"))
    assert result.exit_code == 1
    lines = _error_lines(result)
    assert len(lines) == 1 and "--keep must be in (0, 1]" in lines[0]
    assert not (tmp_path / "out").exists()


def test_prune_needs_exactly_one_of_model_and_run(tmp_path):
    result = _run("prune", "--keep", "0.5", "-o", str(tmp_path / "out"))
    assert result.exit_code == 2 and "exactly one of --model" in result.output


def test_prune_gate_criterion_without_a_run_is_a_clear_error(tmp_path):
    result = _run("prune", "--model", "resnet20", "--keep", "0.5", "--criterion", "gate", "-o", str(tmp_path / "o"))
    assert result.exit_code == 1 and "needs learned gates" in result.output


def test_untraceable_model_fails_with_one_unsupported_model_line(tmp_path):
    result = _run("prune", "--model", ROOT_UNTRACEABLE, "--keep", "0.5", "-o", str(tmp_path / "out"))
    assert result.exit_code == 1
    lines = _error_lines(result)
    assert len(lines) == 1 and "torch.fx cannot trace" in lines[0] and "--ignore" in lines[0]


def test_untraceable_submodule_is_kept_whole_and_listed_in_plan_json_and_inspect(tmp_path):
    out = tmp_path / "out"
    result = _run("prune", "--model", UNTRACEABLE, "--keep", "0.7", "--round-to", "1", "--min-channels", "1",
                  "--input-size", "8", "-o", str(out))
    assert result.exit_code == 0, result.output
    plan = json.loads((out / "plan.json").read_text())
    assert list(plan["opaque_modules"]) == ["odd"] and "cannot be traced" in plan["opaque_modules"]["odd"]
    assert any(part["where"] == "odd" for part in plan["frozen_params"]) and 0 < plan["frozen_fraction"] < 0.5
    assert abs(plan["keep_achieved"] - 0.7) <= 0.005
    shown = _run("inspect", UNTRACEABLE, "--input-size", "8")
    assert shown.exit_code == 0 and "kept whole:" in shown.output and "odd" in shown.output


def test_ignoring_the_untraceable_module_makes_prune_work(tmp_path):
    out = tmp_path / "out"
    result = _run("prune", "--model", UNTRACEABLE, "--keep", "0.7", "--ignore", "odd", "--round-to", "1",
                  "--min-channels", "1", "--input-size", "8", "-o", str(out), "--json")
    assert result.exit_code == 0, result.output
    plan = json.loads((out / "plan.json").read_text())
    assert plan["ignore"] == ["odd"] and abs(plan["keep_achieved"] - 0.7) <= 0.005


def test_inspect_prints_groups_and_frozen_parts():
    result = _run("inspect", "resnet20", "--input-size", "16")
    assert result.exit_code == 0, result.output
    assert "12 channel groups" in result.output and "conv1" in result.output
    assert "left unpruned" in result.output and "model output" in result.output


def test_inspect_json_is_the_graph_dict():
    result = _run("inspect", "resnet20", "--input-size", "16", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["model"] == "resnet20" and len(data["groups"]) == 12
    assert data["input_shape"] == [3, 16, 16]
    assert {"where", "op", "reason", "channels"} <= set(data["frozen"][0])


def test_inspect_names_the_ignored_module_as_left_unpruned():
    result = _run("inspect", UNTRACEABLE, "--ignore", "odd", "--input-size", "8", "--json")
    assert result.exit_code == 0, result.output
    frozen = json.loads(result.stdout)["frozen"]
    assert any(f["where"] == "odd" and "--ignore" in f["reason"] for f in frozen)


def test_inspect_of_an_untraceable_model_fails_with_one_line():
    result = _run("inspect", ROOT_UNTRACEABLE)
    assert result.exit_code == 1 and len(_error_lines(result)) == 1


def test_prune_from_a_trained_run_meets_the_budget(tmp_path):
    import json

    from pipeline_fixture import make_tiny_run

    run_dir = make_tiny_run(tmp_path)
    out = tmp_path / "pruned"
    result = _run("prune", "--run", str(run_dir), "--keep", "0.5", "--criterion", "magnitude", "-o", str(out))
    assert result.exit_code == 0, result.output
    plan = json.loads((out / "plan.json").read_text())
    assert abs(plan["keep_achieved"] - 0.5) <= 0.005 and plan["note"] == ""
    missing_gates = _run("prune", "--run", str(run_dir), "--keep", "0.5", "--criterion", "gate", "-o", str(tmp_path / "g"))
    assert missing_gates.exit_code == 1
    assert "gates.pt" in missing_gates.output
