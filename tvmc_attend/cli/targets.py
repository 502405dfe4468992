"""`tvmc-attend targets`: list the board presets."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table


def targets_command(
    as_json: bool = typer.Option(False, "--json", help="Print the presets as JSON."),
) -> None:
    """List the board presets (target, cross compiler, RPC key, threads)."""
    from tvmc_attend.targets import list_boards

    boards = list_boards()
    if as_json:
        print(json.dumps([b.summary() for b in boards], indent=2))
        return
    table = Table(title="Board presets")
    for col in ("name", "cpu", "features", "threads", "rpc key", "description"):
        table.add_column(col)
    for b in boards:
        table.add_row(
            b.name,
            str(b.target.get("mcpu", "")),
            ",".join(b.target.get("mattr", [])) or "-",
            str(b.threads or "all"),
            b.rpc_key or "- (local)",
            b.description,
        )
    Console().print(table)


def register(app: typer.Typer) -> None:
    app.command("targets")(targets_command)
