"""The TVM RPC tracker: run one (foreground or background) and talk to one with bounded waits.

The client side speaks the tracker's small JSON protocol (``tvm.rpc.base``) over a plain socket
instead of ``tvm.rpc.connect_tracker``: that one retries an unreachable tracker for 60 s and
blocks forever on a key without servers, and importing TVM costs 5-13 s.

A tracker run here (``run_tracker``) can take ``--allow``: connections from other peers are
closed right after accept(), as the RPC server does (``server.AllowListSocket``).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tvmc_attend.device.endpoints import (
    format_address,
    free_port,
    port_free,
    process_alive,
    stop_process_group,
    wait_port_free,
)
from tvmc_attend.errors import UserError

DEFAULT_PORT = 9190
# From tvm.rpc.base (the wire protocol; stable since TVM 0.6).
RPC_TRACKER_MAGIC = 0x2F271
CODE_SUCCESS = 0
CODE_REQUEST = 4
CODE_SUMMARY = 6
WAIT_S = 60.0  # how long a board waits for its tracker to come up, as TVM's own server does


class TrackerUnreachable(UserError):
    """Nothing answers at the tracker's address (yet): the one error worth waiting out."""


def _unreachable(host: str, port: int, flag: str) -> TrackerUnreachable:
    return TrackerUnreachable(f"cannot reach RPC tracker at {format_address(host, port)}: start "
                              f"one with `tvmc-attend tracker` or check {flag}")


def _open(host: str, port: int, timeout_s: float, flag: str) -> socket.socket:
    try:
        sock = socket.create_connection((host, port), timeout=timeout_s)
    except OSError as err:
        raise _unreachable(host, port, flag) from err
    try:
        sock.sendall(struct.pack("<i", RPC_TRACKER_MAGIC))
        magic = struct.unpack("<i", _recv(sock, 4))[0]
    except ConnectionError as err:  # accepted, then closed without a byte: an --allow list
        sock.close()
        raise UserError(f"RPC tracker at {format_address(host, port)} closed the connection "
                        "without answering: its --allow may not include this machine's address "
                        f"(or it is not a TVM RPC tracker); check {flag}") from err
    except OSError as err:
        sock.close()
        raise _unreachable(host, port, flag) from err
    if magic != RPC_TRACKER_MAGIC:
        sock.close()
        raise UserError(f"{format_address(host, port)} answers but is not a TVM RPC tracker: "
                        f"check {flag}")
    return sock


def _recv(sock: socket.socket, nbytes: int) -> bytes:
    data = b""
    while len(data) < nbytes:
        chunk = sock.recv(nbytes - len(data))
        if not chunk:
            raise ConnectionError("tracker closed the connection")
        data += chunk
    return data


def _call(sock: socket.socket, message: list[Any]) -> Any:
    payload = json.dumps(message).encode()
    sock.sendall(struct.pack("<i", len(payload)) + payload)
    size = struct.unpack("<i", _recv(sock, 4))[0]
    return json.loads(_recv(sock, size))


def summary(host: str, port: int, timeout_s: float = 5.0, flag: str = "--rpc-tracker") -> dict:
    """The tracker's ``{"queue_info": {key: {free, pending}}, "server_info": [...]}``."""
    with _open(host, port, timeout_s, flag) as sock:
        try:
            code, info = _call(sock, [CODE_SUMMARY])
        except (OSError, ValueError) as err:
            raise _unreachable(host, port, flag) from err
    if code != CODE_SUCCESS:
        raise UserError(f"RPC tracker at {format_address(host, port)} refused a summary")
    return info


def wait_for_tracker(host: str, port: int, flag: str = "--tracker", timeout_s: float = WAIT_S,
                     progress: Callable[[str], Any] = print) -> dict:
    """Wait until the tracker answers (at most ``timeout_s``) and return its summary.

    Boards are often started right after their tracker, which needs seconds to come up (it
    imports TVM): failing at once would make every such script racy. Only "nothing answers" is
    waited out; a tracker that refuses this machine fails at once.
    """
    deadline = time.monotonic() + timeout_s
    waiting = False
    while True:
        try:
            return summary(host, port, timeout_s=min(5.0, timeout_s), flag=flag)
        except TrackerUnreachable as err:
            if time.monotonic() >= deadline:
                raise TrackerUnreachable(f"{err} (waited {timeout_s:g} s)") from err
        if not waiting:
            progress(f"waiting for RPC tracker at {format_address(host, port)} "
                     f"(up to {timeout_s:g} s) ...")
            waiting = True
        time.sleep(0.5)


def servers(info: dict, key: str | None = None) -> list[tuple[str, str, int]]:
    """(key, host, port) of every registered server (``server_info``), optionally for one key."""
    found = []
    for entry in info.get("server_info", []):
        server_key = entry.get("key", "").split(":", 1)[-1]
        host, port = entry.get("addr", [None, None])
        if key is None or server_key == key:
            found.append((server_key, str(host), int(port)))
    return found


def server_count(info: dict, key: str) -> int:
    return len(servers(info, key))


def free_count(info: dict, key: str) -> int:
    return int(info.get("queue_info", {}).get(key, {}).get("free", 0))


def registered_keys(info: dict) -> list[str]:
    return sorted({key for key, _host, _port in servers(info)})


def request(host: str, port: int, key: str, timeout_s: float) -> tuple[str, int, str]:
    """Ask the tracker for a free server under ``key``: (host, port, matchkey) to connect to."""
    with _open(host, port, min(timeout_s, 5), "--rpc-tracker") as sock:
        sock.settimeout(timeout_s)
        try:
            code, value = _call(sock, [CODE_REQUEST, key, "", 1])
        except TimeoutError as err:
            raise UserError(
                f"no free device under key {key} at tracker {format_address(host, port)} within "
                f"{timeout_s:g} s: all are busy; wait for the running job or add a board"
            ) from err
        except (OSError, ValueError) as err:
            raise _unreachable(host, port, "--rpc-tracker") from err
    if code != CODE_SUCCESS:
        raise UserError(f"RPC tracker at {format_address(host, port)} refused a device for {key}")
    server_host, server_port, matchkey = value
    return server_host, int(server_port), matchkey


@dataclass
class TrackerProcess:
    """A tracker running in the background (its own process group); stop() it when done."""

    host: str
    port: int
    pid: int
    create_time: float
    log: Path
    _popen: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        return format_address(self.host, self.port)

    def alive(self) -> bool:
        return process_alive(self.pid, self.create_time)

    def stop(self) -> None:
        """Idempotent; safe from atexit."""
        stop_process_group(self.pid, self.create_time)
        if self._popen is not None:
            self._popen.wait(timeout=10)
        wait_port_free(self.host, self.port)
        self.log.unlink(missing_ok=True)


def start_tracker(host: str = "127.0.0.1", port: int | None = None,
                  timeout_s: float = 90) -> TrackerProcess:
    """Start ``python -m tvm.exec.rpc_tracker`` in the background and wait until it answers."""
    import psutil

    port = port or free_port(host)
    _check_port(host, port)
    fd, log_name = tempfile.mkstemp(prefix=f"tvmc-attend-tracker-{port}-", suffix=".log")
    os.close(fd)
    log = Path(log_name)
    with open(log, "w") as out:
        popen = subprocess.Popen(
            [sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", host, "--port", str(port),
             "--port-end", str(port + 1)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,  # one process group: stop() takes its popen worker too
        )
    tracker = TrackerProcess(host, port, popen.pid, psutil.Process(popen.pid).create_time(), log,
                             popen)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            summary(host, port, timeout_s=2)
            return tracker
        except UserError:
            pass
        if popen.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
            tracker.stop()
            raise UserError(f"the RPC tracker did not start on {tracker.address}: {tail[0]}")
        time.sleep(0.5)


def run_tracker(host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                allow: Iterable[str] = ()) -> None:
    """Run a tracker in the foreground until Ctrl-C.

    ``allow`` (``--allow`` values): only peers in these networks may connect; others are closed
    right after accept() and logged. Loopback is not implied.
    """
    from tvmc_attend.device.server import is_loopback, parse_allow

    allow = tuple(allow)
    try:
        parse_allow(allow)
    except ValueError as err:
        raise UserError(str(err)) from None
    if not allow and not is_loopback(host):
        print(f"warning: the RPC tracker on {format_address(host, port)} answers anyone who can "
              "reach it and hands out your boards (which run any code uploaded to them): pass "
              "--allow ADDR[/BITS] for the machines that may use it, or keep it on 127.0.0.1 "
              "and use SSH tunnels", file=sys.stderr, flush=True)
    _check_port(host, port)
    from tvm.support.popen_pool import PopenWorker

    # TVM's Tracker class, but with our start function in its worker process (to filter peers).
    worker = PopenWorker()
    worker.send(_start_tracker_in_worker, [host, port, port + 1, allow])
    bound_port, _stop_key = worker.recv()
    address = format_address(host, bound_port)
    only = f" (only {', '.join(allow)} may connect)" if allow else ""
    print(f"RPC tracker listening on {address}{only} (Ctrl-C to stop)", flush=True)
    print(f"  register a board:  tvmc-attend device serve --tracker {address} --key rpi4  "
          f"(on the board), or tvmc-attend device emulate --board rpi4 --tracker {address}")
    print(f"  use it:            tvmc-attend tune --target rpi4 --rpc-tracker {address} "
          "--rpc-key rpi4")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # `kill` cleans up like Ctrl-C
    try:
        worker.join()
    except KeyboardInterrupt:
        print("stopping the tracker")
    finally:
        # kill, not TVM's stop request: that connects from 127.0.0.1, which --allow may refuse
        worker.kill()


def _start_tracker_in_worker(host: str, port: int, port_end: int,
                             allow: tuple[str, ...]) -> tuple[int, str]:
    """Runs in the tracker's popen worker: TVM's tracker, refusing peers outside ``allow``."""
    from tvm.rpc import tracker as rpc_tracker

    from tvmc_attend.device.server import AllowListSocket, parse_allow

    if allow:
        networks = parse_allow(allow)
        original = rpc_tracker._tracker_server

        def tracker_server(listen_sock, stop_key):
            def log(message: str) -> None:
                rpc_tracker.logger.warning("%s", message)

            original(AllowListSocket(listen_sock, networks, log), stop_key)

        rpc_tracker._tracker_server = tracker_server  # the thread target, looked up at start
    return rpc_tracker._popen_start_tracker_server(host, port, port_end)


def _check_port(host: str, port: int) -> None:
    if not port_free(host, port):
        raise UserError(f"port {port} on {host} is in use: pick another with --port")
