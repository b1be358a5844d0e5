"""`edgeprune profile`: the model's per-layer latency table on a target, measured and cached."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import click

from edgeprune.targets import DEFAULT_TARGET


@click.command("profile")
@click.option("--run", "run_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run folder from `edgeprune train` (its model and input shape).")
@click.option("--model", "model_spec", default=None, metavar="SPEC",
              help="Model with random weights instead of a run: resnet18, tv:NAME, module:function.")
@click.option("--input-size", type=click.IntRange(min=1), default=None, help="Square input size for --model (default 224).")
@click.option("--target", default=DEFAULT_TARGET, show_default=True, help="Target profile name or YAML path.")
@click.option("--round-to", type=click.IntRange(min=1), default=None,
              help="Channel step the table samples [default: the target's].")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where measured points are cached [default: $EDGEPRUNE_CACHE_DIR/latency or ~/.cache/edgeprune/latency].")
@click.option("--ignore", multiple=True, metavar="MODULE", help="Module to leave unpruned (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the table summary and every layer as JSON.")
def profile(run_dir: Optional[Path], model_spec: Optional[str], input_size: Optional[int], target: str,
            round_to: Optional[int], cache_dir: Optional[Path], ignore: tuple[str, ...], as_json: bool) -> None:
    """Measure (or reuse) the latency of every prunable layer at the channel counts a plan may choose."""
    from edgeprune.latency.profile import profiler_for
    from edgeprune.targets import load_target

    if (model_spec is None) == (run_dir is None):
        raise click.UsageError("give exactly one of --run RUN_DIR or --model SPEC")
    resolved = load_target(target)
    profiler = profiler_for(resolved)  # one line where the target's runtime cannot run here
    if run_dir is not None:
        from edgeprune.training.runs import load_run

        run = load_run(run_dir)
        model, input_shape, name = run.model, tuple(run.spec.input_shape), str(run_dir)
    else:
        from edgeprune.training.models import build_model

        input_shape = (3, input_size or 224, input_size or 224)
        model, name = build_model(model_spec, 1000, input_shape=input_shape), model_spec
    from edgeprune.workflows.latency import profile_model

    if as_json:
        result = profile_model(model.eval(), input_shape, resolved, round_to=round_to, cache_dir=cache_dir,
                               ignore=ignore, profiler=profiler)
        import json

        click.echo(json.dumps({"model": name, "target": resolved.name, **result.table.summary(),
                               "layer_count": len(result.sites), "layers": [{"module": s.module, **t.to_dict()}
                                          for s, t in zip(result.sites, result.table.layers)]}, indent=2))
        return
    from edgeprune.cli.console import console, progress_bars

    with progress_bars() as progress:
        result = profile_model(model.eval(), input_shape, resolved, round_to=round_to, cache_dir=cache_dir,
                               ignore=ignore, profiler=profiler, progress=progress)
    _print(name, resolved.name, result, console)


def _print(name: str, target: str, result, console) -> None:
    from rich.table import Table

    summary = result.table.summary()
    table = Table(title=f"latency table of {name} on {target} (batch {result.sites[0].spec.batch if result.sites else '-'})")
    for column in ("layer", "cin x cout", "input", "full (ms)", "min (ms)", "sampled cin / cout"):
        table.add_column(column, justify="left" if column == "layer" else "right")
    for site, layer in zip(result.sites, result.table.layers):
        spec = site.spec
        smallest = min(layer.cout_ms + layer.cin_ms)
        table.add_row(site.module, f"{spec.cin} x {spec.cout}" + (f" /{spec.groups}" if spec.groups > 1 else ""),
                      "x".join(map(str, spec.spatial)) or "-", f"{layer.full_ms:.3f}", f"{smallest:.3f}",
                      f"{len(layer.cin_points)} / {len(layer.cout_points)}")
    console.print(table)
    console.print(
        f"dense model {summary['dense_ms']:.2f} ms (median); layers alone {summary['layers_ms']:.2f} ms; "
        f"{summary['measured_points']} points measured, {summary['cached_points']} reused from the cache, "
        f"{summary['seconds']:.1f} s; cache {summary['cache']}", highlight=False)
    if summary["cache_note"]:
        console.print(f"[yellow]note:[/] {summary['cache_note']}", highlight=False)
