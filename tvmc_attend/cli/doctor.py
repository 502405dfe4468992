"""`tvmc-attend doctor`: check TVM, the cross compiler and the board, each with its fix.

Each check prints one PASS/FAIL/SKIP line as it finishes (the checks are in
``device/doctor.py``); the exit status is 0 only when none fails.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from tvmc_attend.errors import UserError

from . import options

if TYPE_CHECKING:
    from tvmc_attend.device.doctor import Check


def _print(check: Check) -> None:
    from rich.console import Console

    style = {True: "[green]PASS[/]", False: "[red]FAIL[/]", None: "[yellow]SKIP[/]"}[check.ok]
    console = Console(highlight=False)
    console.print(f"{style}  {check.name}: {check.detail}", soft_wrap=True)
    if check.fix:
        console.print(f"      fix: {check.fix}", soft_wrap=True)


def doctor_command(
    target: str = options.TARGET,
    rpc_tracker: str = options.RPC_TRACKER,
    rpc_key: str = options.RPC_KEY,
    rpc_host: str = options.RPC_HOST,
) -> None:
    """Check TVM, the cross compiler and the board; exit 0 only when every check passes."""
    from tvmc_attend.device import RemoteSpec
    from tvmc_attend.device.doctor import run_checks
    from tvmc_attend.targets import get_board

    board = get_board(target)
    spec = RemoteSpec.parse(rpc_tracker=rpc_tracker, rpc_key=rpc_key, rpc_host=rpc_host,
                            default_key=board.rpc_key)
    if spec is not None and not board.is_remote:
        raise UserError(f"target {board.name} runs on this machine: drop the --rpc-* options "
                        "or pick a board target")
    results = run_checks(board, spec, report=_print)
    failed = [r for r in results if r.ok is False]
    print(f"{len(results) - len(failed)} of {len(results)} checks passed or skipped"
          + (f"; {len(failed)} failed" if failed else ""))
    if failed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor_command)
