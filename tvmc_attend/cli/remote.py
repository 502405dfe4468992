"""Turn the --rpc-* / --emulate flags of tune, run and benchmark into a device to measure on."""

from __future__ import annotations

from typing import Any

from tvmc_attend.errors import UserError
from tvmc_attend.targets import Board


def _is_emulated(spec: Any) -> bool:
    """True when the flags point at an emulated board started by `device emulate`."""
    from tvmc_attend.device import emulator

    for em in emulator.running():
        if spec.via_tracker and em.tracker == spec.tracker_address and em.key == spec.key:
            return True
        if not spec.via_tracker and em.address == spec.address:
            return True
    return False


def _emulated_board(board: Board) -> Any:
    """Reuse a running emulated board for ``board`` or start one (a direct RPC server)."""
    from tvmc_attend.device import RemoteSpec, emulator

    for em in emulator.running():
        if em.board == board.name and em.alive():
            return RemoteSpec.parse(rpc_host=em.address)
    em = emulator.start(board.name, progress=lambda msg: print(msg, flush=True))
    return RemoteSpec.parse(rpc_host=em.address)


def resolve_remote(board: Board, rpc_tracker: str | None, rpc_key: str | None,
                   rpc_host: str | None, emulate: bool) -> tuple[Any, bool]:
    """(RemoteSpec or None, emulated?) for the flags; None means run on this host."""
    from tvmc_attend.device import RemoteSpec

    if emulate:
        if rpc_tracker or rpc_host:
            raise UserError("--emulate starts its own board: drop --rpc-tracker/--rpc-host, "
                            "or drop --emulate to use that device")
        if not board.is_remote:
            raise UserError("--emulate needs a board target (e.g. --target rpi4); the host "
                            "runs natively")
        return _emulated_board(board), True
    spec = RemoteSpec.parse(rpc_tracker=rpc_tracker, rpc_key=rpc_key, rpc_host=rpc_host,
                            default_key=board.rpc_key)
    if spec is None:
        return None, False
    return spec, _is_emulated(spec)


def measurement_device(board: Any, rpc_tracker: str | None, rpc_key: str | None,
                       rpc_host: str | None, emulate: bool) -> tuple[Any, Any, bool, str]:
    """(RemoteSpec, RPC session, emulated?, device description) to measure on; a board target
    without a device is an error, the host measures locally."""
    remote, emulated = resolve_remote(board, rpc_tracker, rpc_key, rpc_host, emulate)
    if remote is None:
        if board.is_remote:
            raise UserError(f"target {board.name} is a board: pass --rpc-tracker/--rpc-key, "
                            "--rpc-host or --emulate to measure on one")
        return None, None, False, "local"
    from tvmc_attend.device import connect

    return remote, connect(remote), emulated, remote.describe()
