"""`tvmc-attend tracker`: run a TVM RPC tracker in the foreground."""

from __future__ import annotations

from typing import Annotated

import typer


def tracker_command(
    host: str = typer.Option("127.0.0.1", help="Address to bind; 0.0.0.0 lets LAN boards in."),
    port: int = typer.Option(9190, help="Port to bind."),
    allow: Annotated[list[str] | None, typer.Option(
        "--allow", metavar="ADDR[/BITS]",
        help="Only peers in this IPv4/IPv6 network may connect (repeatable; loopback is not "
             "implied). Default: anyone who can reach the bound address.")] = None,
) -> None:
    """Run an RPC tracker: boards register under a key, tuning asks it for a free board."""
    from tvmc_attend.device.tracker import run_tracker

    run_tracker(host, port, allow or ())


def register(app: typer.Typer) -> None:
    app.command("tracker")(tracker_command)
