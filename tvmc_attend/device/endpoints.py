"""Local endpoints: addresses, ports, and the processes that serve them (helpers the RPC client,
the tracker and the emulated boards share)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time

from tvmc_attend.errors import UserError


def parse_address(text: str, flag: str) -> tuple[str, int]:
    """``HOST:PORT`` (IPv6 as ``[::1]:PORT``) -> (host, port), or a UserError naming the flag."""
    host, sep, port = text.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"{flag} expects HOST:PORT (e.g. 127.0.0.1:9190), got '{text}'")
    return host, int(port)


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def port_open(host: str, port: int, timeout_s: float = 2.0) -> bool:
    """True when something accepts TCP connections at host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def port_free(host: str, port: int) -> bool:
    """True when this machine can bind host:port now (what a new server needs)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as TVM's servers do
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1", first: int | None = None, last: int = 9199) -> int:
    """The first bindable port in [first, last], or any free port the OS picks."""
    for port in range(first, last + 1) if first else ():
        if port_free(host, port):
            return port
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def process_alive(pid: int, create_time: float | None = None) -> bool:
    """True when ``pid`` runs and is the process we started (not a reused pid)."""
    import psutil

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return create_time is None or abs(proc.create_time() - create_time) < 1.0
    except psutil.NoSuchProcess:
        return False


def stop_process_group(pid: int, create_time: float | None = None, timeout_s: float = 10) -> None:
    """Stop a server started in its own session: its whole process group and descendants.

    TVM servers keep the listening socket in a popen-worker child, so stopping only the parent
    would leave the port taken. SIGTERM first; SIGKILL whatever is left after ``timeout_s``.
    Also cleans up after a leader that died alone (its children still hold the group id).
    """
    import psutil

    if not _still_ours(pid, create_time):
        return
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
        procs = _group_members(pid)
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(sig)
        _gone, alive = psutil.wait_procs(procs, timeout=wait_s)
        if not alive:
            break
    _reap(pid)


def _still_ours(pid: int, create_time: float | None) -> bool:
    """False when ``pid`` now names an unrelated process (pid reuse).

    Linux never reuses a pid while a process group of that id exists, so once the leader is
    gone any group with its id is still ours.
    """
    import psutil

    try:
        proc = psutil.Process(pid)
        return create_time is None or abs(proc.create_time() - create_time) < 1.0
    except psutil.NoSuchProcess:
        return True


def _group_members(pgid: int) -> list:
    import psutil

    members = {}
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                members[proc.pid] = proc
    with contextlib.suppress(psutil.Error):  # descendants that moved to another group
        for child in psutil.Process(pgid).children(recursive=True):
            members.setdefault(child.pid, child)
    return list(members.values())


def _reap(pid: int) -> None:
    """Collect the exit status if the process is our child, so no zombie is left behind."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def wait_port_free(host: str, port: int, timeout_s: float = 10) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if port_free(host, port):
            return True
        time.sleep(0.2)
    return port_free(host, port)
