"""Emulated boards: TVM's RPC server in the arm64 rootfs under qemu-user with the board's CPU.

Each running board has a state file (pids, port, key, tracker) under the cache dir, so that
``device list`` and ``device stop`` work from any later command. The server runs in its own
process group: stopping the group also stops the popen-worker child that holds the port.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from tvmc_attend.cache import cache_dir
from tvmc_attend.device import rootfs
from tvmc_attend.device.endpoints import (
    format_address,
    free_port,
    parse_address,
    port_free,
    port_open,
    process_alive,
    stop_process_group,
    wait_port_free,
)
from tvmc_attend.device.server import EMULATED_ENV
from tvmc_attend.errors import UserError

HOST = "127.0.0.1"  # emulated boards never listen beyond this machine
FIRST_PORT = 9090  # TVM's customary RPC server ports: 9090-9199
START_TIMEOUT_S = 300.0  # usually 20-45 s; generous for a loaded 2-core CI machine
SERVER_IN_ROOTFS = "/opt/tvmc-attend/rpc_server.py"


@dataclass(frozen=True)
class EmulatedBoard:
    """The recorded state of one emulated board (the JSON state file)."""

    name: str
    board: str
    qemu_cpu: str
    host: str
    port: int
    tracker: str | None
    key: str | None
    pid: int
    create_time: float
    started: float
    log: str

    @property
    def address(self) -> str:
        return format_address(self.host, self.port)

    def alive(self) -> bool:
        return process_alive(self.pid, self.create_time)


def state_dir() -> Path:
    return cache_dir() / "emulated"


def _state_file(name: str) -> Path:
    return state_dir() / f"{name}.json"


def _save(state: EmulatedBoard) -> None:
    # temp file + os.replace: a reader never sees a half-written state file
    path = _state_file(state.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".json.tmp{os.getpid()}")
    tmp.write_text(json.dumps(asdict(state), indent=2))
    os.replace(tmp, path)


def _load(path: Path) -> EmulatedBoard | None:
    try:
        return EmulatedBoard(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def running() -> list[EmulatedBoard]:
    """The emulated boards that are running; state files of dead ones are removed."""
    boards = []
    for path in sorted(state_dir().glob("*.json")):
        state = _load(path)
        if state is not None and state.alive():
            boards.append(state)
            continue
        if state is not None:  # the server died: its children may still hold the port
            stop_process_group(state.pid, state.create_time)
        path.unlink(missing_ok=True)
    return boards


def get(name: str) -> EmulatedBoard | None:
    return next((b for b in running() if b.name == name), None)


def start(
    board_name: str,
    *,
    port: int | None = None,
    tracker: str | None = None,
    key: str | None = None,
    name: str | None = None,
    timeout_s: float = START_TIMEOUT_S,
    progress: Callable[[str], None] = print,
) -> EmulatedBoard:
    """Start an emulated board in the background and return once its RPC server is up.

    ``tracker`` ("HOST:PORT") registers it under ``key`` (default: the board's rpc_key).
    ``name`` (default: the board name) identifies it for ``stop``; tests use unique names.
    """
    from tvmc_attend.device import tracker as tracker_client
    from tvmc_attend.targets import get_board

    board = get_board(board_name)
    if not board.qemu_cpu:
        raise UserError(f"'{board.name}' is this machine, nothing to emulate: pick a board, "
                        "e.g. --board rpi4 (see `tvmc-attend targets`)")
    name = name or board.name
    if (existing := get(name)) is not None:
        raise UserError(f"{name} is already emulated at {existing.address} (pid {existing.pid}): "
                        f"stop it with `tvmc-attend device stop --board {name}`")
    tracker_addr = parse_address(tracker, "--tracker") if tracker else None
    if key and not tracker_addr:
        raise UserError("--key needs --tracker HOST:PORT (without a tracker, clients connect "
                        "with --rpc-host)")
    key = (key or board.rpc_key) if tracker_addr else None
    if tracker_addr:  # fail now, not after a 45 s start; but give a starting tracker time
        tracker_client.wait_for_tracker(*tracker_addr, flag="--tracker", progress=progress)
    if port is None:
        port = free_port(HOST, FIRST_PORT)
    elif not port_free(HOST, port):
        raise UserError(f"port {port} on {HOST} is in use: pick another with --port")

    root = rootfs.ensure_rootfs(progress)
    rootfs.check_host()
    rootfs.install_interpreter(root)  # cheap; covers binfmt entries registered since the build
    _install_server(root)

    argv = ["/usr/bin/python3", SERVER_IN_ROOTFS, "--host", HOST, "--port", str(port)]
    if tracker_addr:
        argv += ["--tracker", format_address(*tracker_addr), "--key", str(key)]
    # Threads: the board's count, but not more than this machine has (qemu runs them natively).
    threads = min(board.thread_count(), len(os.sched_getaffinity(0)))
    env = rootfs.rootfs_env(board.qemu_cpu, {"TVM_NUM_THREADS": str(threads),
                                             EMULATED_ENV: board.name})
    log = state_dir() / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    progress(f"starting emulated {board.name} (qemu-aarch64 -cpu {board.qemu_cpu}) on "
             f"{format_address(HOST, port)}; the server takes 20-45 s to start ...")
    with open(log, "w") as out:
        proc = subprocess.Popen(
            rootfs.in_rootfs_argv(root, argv), stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, env=env,
            start_new_session=True,  # its own process group, so stop() gets every child
        )
    import psutil

    state = EmulatedBoard(
        name=name, board=board.name, qemu_cpu=board.qemu_cpu, host=HOST, port=port,
        tracker=format_address(*tracker_addr) if tracker_addr else None, key=key,
        pid=proc.pid, create_time=psutil.Process(proc.pid).create_time(), started=time.time(),
        log=str(log),
    )
    _save(state)  # saved before waiting, so an interrupted start can still be stopped
    try:
        _wait_until_up(state, proc, timeout_s)
    except BaseException:
        stop(name, missing_ok=True, keep_log=True)  # the error message points at the log
        raise
    return state


def _install_server(root: Path) -> None:
    """Copy server.py (stdlib + TVM only) into the rootfs; refreshed on every start."""
    dest = root / SERVER_IN_ROOTFS.lstrip("/")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(f".tmp{os.getpid()}")
    shutil.copyfile(Path(__file__).with_name("server.py"), tmp)
    os.replace(tmp, dest)


def _wait_until_up(state: EmulatedBoard, proc: subprocess.Popen, timeout_s: float) -> None:
    """Up = the server accepts connections and, with a tracker, is registered there."""
    from tvmc_attend.device import tracker as tracker_client

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise UserError(f"emulated {state.board} exited during start-up "
                            f"(exit code {proc.returncode}): {_log_tail(state.log)} "
                            f"(log: {state.log})")
        if state.tracker is None:
            if port_open(state.host, state.port, timeout_s=1):
                return
        else:
            # Registration alone proves the server listens (TVM's server binds before it
            # registers). A bare TCP probe would be worse than useless: the server reads it as a
            # dropped tracker link, deregisters and re-registers, which takes seconds under qemu.
            with contextlib.suppress(UserError):  # the tracker may be briefly busy
                info = tracker_client.summary(*parse_address(state.tracker, "--tracker"))
                if any(port == state.port for _k, _h, port in
                       tracker_client.servers(info, state.key)):
                    return
        time.sleep(1)
    raise UserError(f"emulated {state.board} did not come up within {timeout_s:.0f} s "
                    f"(last log line: {_log_tail(state.log)}); see {state.log}")


def _log_tail(log: str) -> str:
    with contextlib.suppress(OSError):
        lines = Path(log).read_text(errors="replace").strip().splitlines()
        if lines:
            return lines[-1][:300]
    return "(no output)"


def stop(name: str, *, missing_ok: bool = False, keep_log: bool = False) -> EmulatedBoard | None:
    """Stop an emulated board (its whole process group) and wait until its port is free."""
    path = _state_file(name)
    state = _load(path)
    if state is None:
        if missing_ok:
            return None
        names = ", ".join(b.name for b in running()) or "none"
        raise UserError(f"no emulated board named '{name}' is running (running: {names}); "
                        "see `tvmc-attend device list`")
    stop_process_group(state.pid, state.create_time)
    path.unlink(missing_ok=True)
    if not keep_log:
        Path(state.log).unlink(missing_ok=True)
    if not wait_port_free(state.host, state.port):
        raise UserError(f"emulated {name} stopped but port {state.port} is still taken: find "
                        f"the holder with `ss -ltnp 'sport = :{state.port}'` and stop it")
    return state


def stop_all() -> list[EmulatedBoard]:
    return [s for b in running() if (s := stop(b.name, missing_ok=True)) is not None]
