"""`edgeprune prune`: plan to --keep, physically shrink, check, and write plan.json + weights."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import click

from edgeprune.cli.options import CRITERION


@click.command("prune")
@click.option("--model", "model_spec", default=None, metavar="SPEC",
              help="Model to prune with random weights: resnet20, resnet56, resnet18, tv:NAME, module:function.")
@click.option("--run", "run_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run folder from `edgeprune train` or `edgeprune import` (its dense weights, input shape and gates).")
@click.option("--keep", type=float, required=True,
              help="Fraction of parameters (or FLOPs with --budget flops) that remains, in (0, 1].")
@click.option("--budget", type=click.Choice(["params", "flops", "latency"]), default="params", show_default=True,
              help="What --keep is a fraction of; latency is measured on --target (table, plan, closed loop).")
@click.option("--target", default="cpu-x86", show_default=True,
              help="Target whose latency --budget latency measures (name or YAML path).")
@click.option("--round-to", type=int, default=8, show_default=True,
              help="Round every group's channel count to a multiple of this.")
@click.option("--min-channels", type=int, default=8, show_default=True,
              help="Keep at least this many channels in every group.")
@click.option("--criterion", type=CRITERION, default=None,
              help="Channel importance. Default: gate when the run has gates.pt, otherwise magnitude "
                   "(always magnitude with --model). taylor needs --run (it uses the run's data).")
@click.option("--ignore", multiple=True, metavar="MODULE",
              help="Leave this module unpruned and treat it as opaque (repeatable); see `edgeprune inspect`.")
@click.option("--input-size", type=click.IntRange(min=1), default=None,
              help="Square input size for --model (default 32); --run uses the run's input shape.")
@click.option("--num-classes", type=click.IntRange(min=1), default=None,
              help="Classes of --model (default 10); --run uses the run's.")
@click.option("-o", "--out", "out_dir", type=click.Path(path_type=Path), required=True,
              help="Folder to write plan.json and model.safetensors to.")
@click.option("--force", is_flag=True, help="Overwrite an existing output folder.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON instead of a table.")
def prune(model_spec: Optional[str], run_dir: Optional[Path], keep: float, budget: str, target: str, round_to: int,
          min_channels: int, criterion: Optional[str], ignore: tuple[str, ...], input_size: Optional[int],
          num_classes: Optional[int], out_dir: Path, force: bool, as_json: bool) -> None:
    """Prune a model to exactly --keep of its parameters (or FLOPs) and write the shrunk weights."""
    from edgeprune.errors import InputError, OutputExistsError
    from edgeprune.plan import PlanConfig

    config = PlanConfig(keep=keep, budget=budget, round_to=round_to, min_channels=min_channels)
    if (model_spec is None) == (run_dir is None):
        raise click.UsageError("give exactly one of --model SPEC or --run RUN_DIR")
    if out_dir.exists() and not force:
        raise OutputExistsError(f"{out_dir} already exists; pass --force to overwrite it or choose another -o")
    if budget == "latency":
        from edgeprune.latency.profile import profiler_for
        from edgeprune.targets import load_target

        profiler_for(load_target(target))  # one line where the target's runtime cannot run here

    if run_dir is not None:
        spec, model, input_shape, classes, gates, gate_config, data = _from_run(run_dir, criterion)
        criterion = criterion or ("gate" if gates is not None else "magnitude")
    else:
        from edgeprune.training.models import build_model

        if criterion == "gate":
            raise InputError("criterion 'gate' needs learned gates: use --run RUN_DIR with a gates.pt")
        if criterion == "taylor":
            raise InputError("criterion 'taylor' needs training data: use --run RUN_DIR")
        spec, classes = model_spec, num_classes or 10
        input_shape = (3, input_size or 32, input_size or 32)
        model = build_model(spec, classes, input_shape=input_shape)
        criterion, gates, gate_config, data = criterion or "magnitude", None, None, None

    result = _prune(model, input_shape, config, criterion, gates, gate_config, data, ignore, target)
    from edgeprune.workflows.checkpoint import save_pruned

    save_pruned(out_dir, result, spec, classes, force=force)
    summary = _summary(result, spec, out_dir)
    _print(summary, as_json)


def _prune(model: Any, input_shape: tuple[int, ...], config: Any, criterion: str, gates: Any, gate_config: Any,
           data: Any, ignore: tuple[str, ...], target: str = "cpu-x86") -> Any:
    from edgeprune.analysis.graph import analyze
    from edgeprune.importance.gates import GateConfig
    from edgeprune.workflows.prune import example_input, prune_model
    from edgeprune.workflows.recipe import importance_from

    graph = analyze(model, example_input(input_shape), ignore=ignore)
    importance = importance_from(criterion, model, graph, gates=gates, gate_config=gate_config or GateConfig(),
                                 data=data)
    if config.budget == "latency":
        from dataclasses import replace

        from edgeprune.cli.console import progress_bars
        from edgeprune.workflows.latency import prune_to_latency

        with progress_bars() as progress:
            outcome = prune_to_latency(model, input_shape, importance.scores, config, target, criterion=criterion,
                                       gates=importance.fold, graph=graph, ignore=ignore, progress=progress)
        return replace(outcome.prune, latency_budget=outcome.record())
    return prune_model(model, input_shape, importance.scores, config, criterion=criterion,
                       gates=importance.fold, graph=graph, ignore=ignore)


def _from_run(run_dir: Path, criterion: Optional[str]) -> tuple:
    """(spec, model, input_shape, num_classes, gates, their GateConfig, data) of a run folder."""
    from edgeprune.errors import InputError, RunError
    from edgeprune.importance.gates import GateConfig, read_saved_gates
    from edgeprune.training.runs import load_run

    run = load_run(run_dir)
    spec_obj = run.spec
    spec = _field(spec_obj, run_dir, "model", "model_spec")
    input_shape = tuple(int(d) for d in _field(spec_obj, run_dir, "input_shape"))
    class_names = getattr(spec_obj, "class_names", None)
    classes = getattr(spec_obj, "num_classes", None) or (len(class_names) if class_names else None)
    if not classes:
        raise RunError(f"{run_dir}/run.json records neither num_classes nor class_names; re-run `edgeprune train`")
    gates, gate_config = None, GateConfig()
    gates_path = Path(run_dir) / "gates.pt"
    if criterion in (None, "gate") and gates_path.is_file():
        gates, gate_config = read_saved_gates(gates_path)
    elif criterion == "gate":
        raise InputError(f"criterion 'gate' needs {gates_path}, which does not exist; "
                         "run the gate phase or choose --criterion magnitude")
    data = None
    if criterion == "taylor":
        from edgeprune.training.data import load_dataset

        data_spec = _field(spec_obj, run_dir, "data", "data_spec")
        data = load_dataset(data_spec, seed=getattr(spec_obj, "seed", 0), image_size=input_shape[-1]).train
    return spec, run.model, input_shape, int(classes), gates, gate_config, data


def _field(spec: Any, run_dir: Path, *names: str) -> Any:
    from edgeprune.errors import RunError

    for name in names:
        value = getattr(spec, name, None)
        if value is not None:
            return value
    raise RunError(f"{run_dir}/run.json has no {names[0]}; re-run `edgeprune train`")


def _summary(result: Any, spec: str, out_dir: Path) -> dict:
    plan = result.plan
    return {
        "model": spec,
        "out": str(out_dir),
        "criterion": plan.criterion,
        "budget": plan.budget,
        "keep_requested": plan.keep_requested,
        "keep_achieved": plan.keep_achieved,
        "params_before": plan.params_before,
        "params_after": plan.params_after,
        "flops_before": plan.flops_before,
        "flops_after": plan.flops_after,
        "groups": len(plan.groups),
        "shrink_max_diff": result.shrink_max_diff,
        "shrink_tolerance": result.shrink_tolerance,
        "note": plan.note,
        "latency_budget": {k: v for k, v in result.latency_budget.items() if k not in ("history", "table")},
    }


def _print(summary: dict, as_json: bool) -> None:
    from edgeprune.cli.console import console

    if as_json:
        import json

        click.echo(json.dumps(summary, indent=2))
        return
    from rich.table import Table

    table = Table(title=f"pruned {summary['model']} -> {summary['out']}", show_header=True)
    table.add_column("")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    table.add_column("kept", justify="right")
    for label, key in (("parameters", "params"), ("FLOPs (batch 1)", "flops")):
        before, after = summary[f"{key}_before"], summary[f"{key}_after"]
        table.add_row(label, f"{before:,}", f"{after:,}", f"{after / before:.4f}" if before else "-")
    console.print(table)
    console.print(
        f"keep ({summary['budget']}): requested {summary['keep_requested']:.4f}, achieved "
        f"{summary['keep_achieved']:.4f}; criterion {summary['criterion']}; {summary['groups']} channel groups",
        highlight=False,
    )
    console.print(
        f"shrink check: max |shrunk - gated| = {summary['shrink_max_diff']:.2e} "
        f"(tolerance {summary['shrink_tolerance']:g}, relative to max(1, |output|))",
        highlight=False,
    )
    if summary["note"]:
        console.print(f"[yellow]note:[/] {summary['note']}", highlight=False)
    latency = summary["latency_budget"]
    if latency:
        low, high = latency["measured_ratio_ci95"]
        console.print(
            f"latency on the target (pruned / dense, median): requested {latency['requested_ratio']:.3f}, "
            f"predicted {latency['predicted_ratio']:.3f}, measured {latency['measured_ratio']:.3f} "
            f"(95% CI {low:.3f}-{high:.3f}) after {latency['rounds']} closed-loop round(s)"
            + ("" if latency["met"] else f"; [red]missed the ±{100 * latency['tolerance']:.0f}-point tolerance[/]"),
            highlight=False)
