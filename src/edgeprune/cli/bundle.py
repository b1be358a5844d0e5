"""`edgeprune bundle DIR -o NAME.tar.gz` packs an export; `edgeprune bundle verify NAME.tar.gz`
checks one.

`bundle` is a group whose default subcommand is `pack`: anything that is not a subcommand name
or a help flag is passed to `pack`, so both spellings work and `bundle --help` lists both.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import click


class _PackByDefault(click.Group):
    """Dispatch `bundle ARGS` to `bundle pack ARGS` unless ARGS starts with a subcommand."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        help_flags = set(ctx.help_option_names)
        if args and args[0] not in self.commands and args[0] not in help_flags:
            args = ["pack", *args]
        return super().parse_args(ctx, args)


@click.group("bundle", cls=_PackByDefault)
def bundle() -> None:
    """Pack an export into a verified tarball (`bundle DIR -o NAME.tar.gz`), or verify one
    (`bundle verify NAME.tar.gz`)."""


@bundle.command("pack")
@click.argument("export_dir", type=click.Path(path_type=Path, file_okay=False))
@click.option("-o", "--output", "output", type=click.Path(path_type=Path, dir_okay=False),
              default=None, help="Bundle file to write [default: EXPORT_DIR.tar.gz beside it].")
@click.option("--force", is_flag=True, help="Overwrite an existing bundle file.")
def pack_command(export_dir: Path, output: Optional[Path], force: bool) -> None:
    """Pack EXPORT_DIR with the sha256 of every file and the model's input spec."""
    from rich.markup import escape
    from rich.table import Table

    from edgeprune.workflows.bundle import pack
    from edgeprune.cli.console import console

    out_path = output or export_dir.parent / f"{export_dir.name}.tar.gz"
    info = pack(export_dir, out_path, force=force)
    table = Table(title=f"bundle {escape(str(info.path))}", title_justify="left")
    table.add_column("file")
    table.add_column("sha256", no_wrap=True)
    for name, digest in info.files.items():
        table.add_row(escape(name), digest[:16])
    console.print(table)
    spec = info.input
    console.print(f"{len(info.files)} files, {info.size_bytes / 1e6:.2f} MB; input "
                  f"{list(spec.shape)} {spec.dtype} {spec.layout}, {info.num_classes} classes",
                  highlight=False)


@bundle.command("verify")
@click.argument("bundle_path", metavar="BUNDLE", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--strict", is_flag=True, help="Also exit 1 when the bundled export's own verdict is fail.")
@click.pass_context
def verify_command(ctx: click.Context, bundle_path: Path, strict: bool) -> None:
    """Check BUNDLE's checksums and manifest, run its model once, and show the export's verdict;
    exit 1 on any failed check (and, with --strict, on a failing verdict)."""
    from rich.markup import escape
    from rich.table import Table

    from edgeprune.workflows.bundle import VERIFY_CHECKS, verify
    from edgeprune.cli.console import console

    result = verify(bundle_path)
    table = Table(title=f"verify {escape(str(bundle_path))}", title_justify="left")
    table.add_column("check", no_wrap=True)
    table.add_column("result", no_wrap=True)
    table.add_column("detail")
    ran = {check.name: check for check in result.checks}
    for name in (*VERIFY_CHECKS, *(c for c in ran if c not in VERIFY_CHECKS)):
        check = ran.get(name)
        if check is None:
            table.add_row(name, "[dim]not run[/]", "an earlier check failed")
        else:
            status = "[green]pass[/]" if check.passed else "[bold red]FAIL[/]"
            table.add_row(name, status, escape(check.detail))
    final = result.verdict
    if final is not None:
        colour = {"fail": "red", "warn": "yellow"}.get(final.status, "green")
        table.add_row("export verdict", f"[bold {colour}]{final.status}[/]", escape(final.summary))
    console.print(table)
    if not result.ok:
        console.print("[bold red]bundle failed verification[/]")
        ctx.exit(1)
    if final is not None and final.status == "fail":
        console.print("[bold red]bundle intact, but the export it holds failed its own report[/]"
                      + ("" if strict else " (pass --strict to exit 1 on this)"))
        if strict:
            ctx.exit(1)
        return
    console.print("[green]bundle verified[/]")
