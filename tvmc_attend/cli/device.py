"""`tvmc-attend device emulate|stop|list|serve`: boards to measure on, real or emulated."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

device_app = typer.Typer(
    help="Emulated boards (qemu) for tests and users without a board; the RPC server for real "
         "boards.",
    no_args_is_help=True,
)


@device_app.command("emulate")
def emulate_command(
    board: str = typer.Option(..., "--board", help="Board preset to emulate, e.g. rpi4."),
    port: int = typer.Option(None, help="RPC server port on 127.0.0.1 (default: first free "
                                        "from 9090)."),
    tracker: str = typer.Option(None, help="HOST:PORT of an RPC tracker to register with."),
    key: str = typer.Option(None, help="Key to register under (default: the board's rpc key)."),
    name: str = typer.Option(None, help="Instance name, to run a board twice (default: the "
                                        "board name)."),
) -> None:
    """Start an emulated board in the background (first use builds a ~0.6 GB rootfs, ~5 min)."""
    from tvmc_attend.device import emulator

    started = time.monotonic()
    state = emulator.start(board, port=port, tracker=tracker, key=key, name=name)
    print(f"emulated {state.board} (qemu-aarch64 -cpu {state.qemu_cpu}) is up after "
          f"{time.monotonic() - started:.0f} s")
    print(f"  RPC server: {state.address}")
    if state.tracker:
        print(f"  registered: key {state.key} at tracker {state.tracker}")
        print(f"  use it:     --rpc-tracker {state.tracker} --rpc-key {state.key}")
    else:
        print(f"  use it:     --rpc-host {state.address}")
    print(f"  stop it:    tvmc-attend device stop --board {state.name}")
    print(f"  log:        {state.log}")
    print("  note: emulated timings are 60-160x slower than the board and vary 30-50 % between "
          "runs: label them, and never tune or publish speed on them")


@device_app.command("stop")
def stop_command(
    board: str = typer.Option(None, "--board", help="The emulated board (instance name) to stop."),
    all_boards: bool = typer.Option(False, "--all", help="Stop every emulated board."),
) -> None:
    """Stop an emulated board: the server, its worker children, and free its port."""
    from tvmc_attend.device import emulator
    from tvmc_attend.errors import UserError

    if all_boards:
        stopped = emulator.stop_all()
    elif board:
        stopped = [emulator.stop(board)]
    else:
        boards = emulator.running()
        if len(boards) > 1:
            names = ", ".join(b.name for b in boards)
            raise UserError(f"several emulated boards run ({names}): pick one with --board NAME "
                            "or use --all")
        stopped = [emulator.stop(b.name) for b in boards]
    for state in stopped:
        if state is not None:
            print(f"stopped emulated {state.name} ({state.address})")
    if not stopped:
        print("no emulated board is running")


@device_app.command("list")
def list_command(
    as_json: bool = typer.Option(False, "--json", help="Print the state as JSON."),
) -> None:
    """Show the running emulated boards."""
    from tvmc_attend.device import emulator

    boards = emulator.running()
    if as_json:
        print(json.dumps([asdict(b) for b in boards], indent=2))
        return
    if not boards:
        print("no emulated board is running (start one: tvmc-attend device emulate --board rpi4)")
        return
    table = Table(title="Emulated boards")
    for col in ("name", "board", "cpu", "address", "tracker / key", "pid", "up"):
        table.add_column(col)
    for b in boards:
        registration = f"{b.tracker} / {b.key}" if b.tracker else "- (--rpc-host)"
        table.add_row(b.name, b.board, b.qemu_cpu, b.address, registration, str(b.pid),
                      f"{(time.time() - b.started) / 60:.0f} min")
    Console().print(table)


@device_app.command("serve")
def serve_command(
    host: str = typer.Option("127.0.0.1", help="Address to bind (0.0.0.0: the whole network)."),
    port: int = typer.Option(9090, help="Port to bind."),
    tracker: str = typer.Option(None, help="HOST:PORT of an RPC tracker to register with."),
    key: str = typer.Option(None, help="Key to register under at the tracker, e.g. rpi4."),
    allow: Annotated[list[str] | None, typer.Option(
        "--allow", metavar="ADDR[/BITS]",
        help="Only peers in this IPv4/IPv6 network may connect (repeatable; loopback is not "
             "implied). Default: anyone who can reach the bound address.")] = None,
    threads: int | None = typer.Option(
        None, "--threads", min=1,
        help="TVM threads per session (default: TVM_NUM_THREADS if set, else every core)."),
) -> None:
    """Run TVM's RPC server on this board in the foreground (Ctrl-C stops it)."""
    from tvmc_attend.device.endpoints import parse_address, port_free
    from tvmc_attend.device.server import (
        SECURITY_WARNING,
        exposed_warning,
        is_loopback,
        parse_allow,
        serve,
    )
    from tvmc_attend.device.tracker import wait_for_tracker
    from tvmc_attend.errors import UserError

    allow = allow or []
    try:
        parse_allow(allow)
    except ValueError as err:
        raise UserError(str(err)) from None
    tracker_addr = parse_address(tracker, "--tracker") if tracker else None
    if tracker_addr and not key:
        raise UserError("--tracker needs --key KEY: the key clients will ask for (the board's "
                        "preset rpc key, e.g. rpi4; see `tvmc-attend targets`)")
    if key and not tracker_addr:
        raise UserError("--key needs --tracker HOST:PORT (without a tracker, clients connect "
                        "with --rpc-host)")
    if not port_free(host, port):
        raise UserError(f"port {port} on {host} is in use: pick another with --port")
    exposed = not allow and not is_loopback(host)
    print(exposed_warning(host, port) if exposed else SECURITY_WARNING, file=sys.stderr,
          flush=True)
    if tracker_addr:  # started right after its tracker: wait for it, as emulated boards do
        wait_for_tracker(*tracker_addr, flag="--tracker", progress=lambda m: print(m, flush=True))
    serve(host, port, tracker_addr, key or "", allow=allow, threads=threads)


def register(app: typer.Typer) -> None:
    app.add_typer(device_app, name="device")
