"""`edgeprune export`: the main command (see workflows.export.export_pipeline)."""
from __future__ import annotations

from pathlib import Path

import click

from edgeprune.cli.options import CRITERION, DEVICE, DEVICE_HELP, KEEP
from edgeprune.targets import DEFAULT_TARGET

#: The library's defaults (workflows.recipe.FinetuneRecipe, importance.gates.GateConfig), kept
#: here as numbers so `--help` does not import torch.
FINETUNE_EPOCHS = 5
GATE_EPOCHS = 1


@click.command()
@click.option("--keep", type=KEEP, default=0.5, show_default=True,
              help="Fraction of parameters (or FLOPs, or the target's measured latency) to keep.")
@click.option("--run", "run_dir", type=click.Path(path_type=Path), default=Path("runs/demo"), show_default=True,
              help="Run folder from `edgeprune train` or `edgeprune import`; runs/demo is trained on first use.")
@click.option("--target", default=DEFAULT_TARGET, show_default=True, help="Target profile name or YAML path (see `edgeprune targets`).")
@click.option("--budget", type=click.Choice(["params", "flops", "latency"]), default="params", show_default=True,
              help="What --keep is a fraction of; latency is planned from per-layer timings on the target.")
@click.option("--round-to", type=click.IntRange(min=1), default=None, help="Round channel counts to multiples of this [default: the target's].")
@click.option("--min-channels", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--criterion", type=CRITERION, default="gate", show_default=True)
@click.option("--ignore", multiple=True, help="Module to leave unpruned (repeatable).")
@click.option("--finetune-epochs", type=click.IntRange(min=0), default=FINETUNE_EPOCHS, show_default=True)
@click.option("--distill-weight", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Weight of distillation from the dense model while fine-tuning; 0 trains on labels only.")
@click.option("--steps", type=click.IntRange(min=1), default=1, show_default=True,
              help="Prune gradually in this many steps (cubic schedule, one recovery epoch between); 1 is one-shot.")
@click.option("--budget-aware-gates", is_flag=True,
              help="Learn the gates for this --keep (only units below the budget's cut are penalised); "
                   "the gates are then learned again for every keep ratio.")
@click.option("--gate-epochs", type=click.IntRange(min=1), default=GATE_EPOCHS, show_default=True,
              help="Most epochs of the gate phase.")
@click.option("--bench-seconds", type=click.FloatRange(min=0.1), default=3.0, show_default=True, help="Least timed seconds per model.")
@click.option("-o", "--out", "out_root", type=click.Path(path_type=Path), default=Path("dist"), show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", type=DEVICE, default="cpu", show_default=True, help=DEVICE_HELP)
@click.option("--force", is_flag=True, help="Replace an existing export folder.")
def export(keep, run_dir, target, budget, round_to, min_channels, criterion, ignore, finetune_epochs, distill_weight,
           steps, budget_aware_gates, gate_epochs,
           bench_seconds, out_root, seed, device, force):
    """Prune to --keep, fine-tune, export ONNX and engines, benchmark and report."""
    from dataclasses import replace

    from edgeprune.cli.summary import print_export_summary
    from edgeprune.cli.console import console, progress_bars
    from edgeprune.workflows.export import ExportConfig, export_pipeline
    from edgeprune.workflows.recipe import DEMO_DATA, DEMO_MODEL, is_demo_run

    base = ExportConfig()
    config = ExportConfig(
        keep=keep, run_dir=run_dir, out_root=out_root, target=target, budget=budget, round_to=round_to,
        min_channels=min_channels, criterion=criterion, ignore=tuple(ignore), finetune_epochs=finetune_epochs,
        distill_weight=distill_weight, steps=steps, gate=replace(base.gate, max_epochs=gate_epochs, seed=seed,
                     budget_keep=keep if budget_aware_gates else None),
        bench=replace(base.bench, min_seconds=bench_seconds), force=force, seed=seed, device=device,
    )
    if config.out_dir.exists() and not force:
        from edgeprune.errors import OutputExistsError

        raise OutputExistsError(f"{config.out_dir} already exists; pass --force to replace it")
    if not run_dir.exists() and is_demo_run(run_dir):
        console.print(f"[bold]{run_dir} does not exist yet:[/] training the built-in demo first "
                      f"({DEMO_MODEL} on the built-in '{DEMO_DATA}' data set).")
    from edgeprune.training.distributed import launched_as_rank_zero

    with progress_bars() as progress:
        result = export_pipeline(config, progress)
    if not launched_as_rank_zero():  # under torchrun rank 0 alone speaks
        return
    print_export_summary(result)
    if result.replaced:
        console.print(f"replaced the previous export at {result.out_dir}/ (--force)")
