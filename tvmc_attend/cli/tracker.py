"""`tvmc-attend tracker`: run a TVM RPC tracker in the foreground."""

from __future__ import annotations

import typer


def tracker_command(
    host: str = typer.Option("127.0.0.1", help="Address to bind; 0.0.0.0 lets LAN boards in."),
    port: int = typer.Option(9190, help="Port to bind."),
) -> None:
    """Run an RPC tracker: boards register under a key, tuning asks it for a free board."""
    from tvmc_attend.device.tracker import run_tracker

    run_tracker(host, port)


def register(app: typer.Typer) -> None:
    app.command("tracker")(tracker_command)
