"""The `edgeprune` command line: parses options, calls the library, prints.

Subcommands live in `edgeprune.cli.*` and are imported only when run (click's LazyGroup
recipe), so `edgeprune --help` does not pay for importing torch or tensorrt. Library errors
(`EdgepruneError`) become one red line and a non-zero exit, never a stack trace.
"""
from __future__ import annotations

import importlib
import sys

import click

#: command name -> "module:attribute" of its click command, in help order.
COMMANDS: dict[str, str] = {
    "export": "edgeprune.cli.export:export",
    "train": "edgeprune.cli.train:train",
    "import": "edgeprune.cli.importing:import_model",
    "prune": "edgeprune.cli.prune:prune",
    "profile": "edgeprune.cli.profile:profile",
    "inspect": "edgeprune.cli.inspect:inspect_model",
    "sweep": "edgeprune.cli.sweep:sweep",
    "bench": "edgeprune.cli.bench:bench",
    "gate": "edgeprune.cli.gate:gate",
    "report": "edgeprune.cli.report:report",
    "bundle": "edgeprune.cli.bundle:bundle",
    "targets": "edgeprune.cli.targets:targets",
}

COMMAND_HELP: dict[str, str] = {
    "export": "Prune to --keep, fine-tune, export ONNX and engines, benchmark, report.",
    "train": "Train a dense model into a run folder.",
    "import": "Import a model trained elsewhere (weights + your images) into a run folder.",
    "prune": "Plan and physically shrink a model; write plan.json and weights.",
    "profile": "Per-layer latency table of a model on a target, measured and cached.",
    "inspect": "Show a model's channel groups and what stays unpruned.",
    "sweep": "Accuracy and latency vs sparsity over seeds and criteria.",
    "bench": "Latency percentiles and memory of an ONNX model, export or bundle.",
    "gate": "CI gate: fail on a significant latency, accuracy or memory regression.",
    "report": "Re-render report.md and report.html of an export folder.",
    "bundle": "Pack an export into a verified tarball, or verify one.",
    "targets": "List the target profiles.",
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attribute = target.split(":")
        return getattr(importlib.import_module(module_name), attribute)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMAND_HELP.get(name, "")) for name in COMMANDS]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context):
        from edgeprune.errors import EdgepruneError

        from edgeprune.cli.console import print_error

        try:
            return super().invoke(ctx)
        except EdgepruneError as error:
            print_error(str(error))
            ctx.exit(error.exit_code)
        except OSError as error:  # the machine's state (full disk, read-only), not a bug: one line
            from edgeprune.fileio import as_storage_error

            storage = as_storage_error(error)
            if storage is None:
                raise
            print_error(str(storage))
            ctx.exit(storage.exit_code)
        except click.UsageError as error:  # one line, exit 2, like every other error
            hint = f" (see `{error.ctx.command_path} --help`)" if error.ctx is not None else ""
            print_error(error.format_message() + hint)
            ctx.exit(2)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edgeprune")
def main() -> None:
    """edgeprune: structured channel pruning from a dense CNN to engines an edge team can ship."""


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
