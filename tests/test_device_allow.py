"""`--allow` on the RPC server and the tracker, and boards that wait for a starting tracker.

Real server/tracker processes on loopback: 127.0.0.1 is allowed, 127.0.0.2 (also loopback on
Linux, so no network is needed) plays the stranger.
"""

from __future__ import annotations

import functools
import os
import select
import socket
import struct
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from helpers import wait_until

from tvmc_attend.device import RemoteSpec, connect, emulator, tracker
from tvmc_attend.device.endpoints import free_port, port_free, stop_process_group
from tvmc_attend.device.server import (
    AllowListSocket,
    is_loopback,
    parse_allow,
    peer_allowed,
)
from tvmc_attend.errors import UserError

CLI = [sys.executable, "-m", "tvmc_attend.cli.main"]
HOST = "127.0.0.1"
STRANGER = "127.0.0.2"
RPC_MAGIC = 0xFF271  # tvm.rpc.base.RPC_MAGIC
CLIENT_HELLO = struct.pack("<i", RPC_MAGIC) + struct.pack("<i", 7) + b"client:"


def start_cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def stop_cli(proc: subprocess.Popen) -> tuple[str, str]:
    """SIGTERM a foreground command, then make sure its whole group is gone; its output."""
    proc.terminate()
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        stop_process_group(proc.pid)  # its popen worker too, whatever happened
    return out, err


def closed_without_answer(port: int, hello: bytes, source: str = STRANGER) -> bool:
    """Connect from ``source``, send ``hello``: True when the peer closes without a byte."""
    with socket.socket() as sock:
        sock.bind((source, 0))
        sock.settimeout(20)
        sock.connect((HOST, port))
        try:
            if hello:
                sock.sendall(hello)
            return sock.recv(64) == b""
        except (ConnectionResetError, BrokenPipeError):
            return True


def first_stderr_line(proc: subprocess.Popen, timeout_s: float) -> str:
    ready, _, _ = select.select([proc.stderr], [], [], timeout_s)
    return proc.stderr.readline() if ready else ""


# ---- the allow list itself ----

def test_parse_allow_and_peer_allowed():
    allow = parse_allow(["127.0.0.1", "10.0.0.0/8", " fd00::/8", "192.168.1.20/24"])
    assert [str(n) for n in allow] == ["127.0.0.1/32", "10.0.0.0/8", "fd00::/8",
                                       "192.168.1.0/24"]
    for peer in ("127.0.0.1", "10.200.3.4", "192.168.1.99", "fd00::1", "::ffff:10.1.2.3"):
        assert peer_allowed(peer, allow), peer
    for peer in ("127.0.0.2", "11.0.0.1", "192.168.2.1", "fe80::1%lo", "::1", "not-an-ip"):
        assert not peer_allowed(peer, allow), peer
    for bad in ("nonsense", "10.0.0.0/33", "300.1.2.3", "", "host.lan"):
        with pytest.raises(ValueError, match=r"--allow expects an IP address or network"):
            parse_allow([bad])


def test_is_loopback():
    assert all(map(is_loopback, ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "192.168.1.2", "board.local"]))


def test_allow_list_socket_refuses_before_reading():
    refused = []
    with socket.socket() as listener:
        listener.bind((HOST, 0))
        listener.listen(4)
        port = listener.getsockname()[1]
        filtered = AllowListSocket(listener, parse_allow([HOST]), refused.append,
                                   placeholder=True)
        assert filtered.fileno() == listener.fileno()  # select() still works on it
        with socket.create_connection((HOST, port), source_address=(STRANGER, 0)) as stranger:
            conn, addr = filtered.accept()
            # TVM's loop gets a placeholder that fails its handshake, so it goes back to select
            assert addr[0] == STRANGER and conn.recv(8) == b"\0\0\0\0"
            conn.close()
            stranger.settimeout(5)
            assert stranger.recv(8) == b""  # closed without a byte
        assert len(refused) == 1 and refused[0].startswith(f"refused connection from {STRANGER}:")
        with socket.create_connection((HOST, port)):
            conn, addr = filtered.accept()
            assert addr[0] == HOST
            conn.close()
        assert len(refused) == 1


# ---- the CLI ----

@pytest.mark.parametrize("verb", [("device", "serve"), ("tracker",)])
@pytest.mark.parametrize("value", ["nonsense", "10.0.0.0/33"])
def test_invalid_allow_is_a_one_line_error(verb, value):
    result = subprocess.run([*CLI, *verb, "--port", str(free_port()), "--allow", HOST,
                             "--allow", value], capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"error: --allow expects an IP address or network (e.g. 192.168.1.20, 192.168.1.0/24 or "
        f"fd00::/8), got '{value}'"], result.stderr


@pytest.mark.parametrize("verb", [("device", "serve"), ("tracker",)])
def test_exposed_bind_without_allow_warns(verb):
    port = free_port("0.0.0.0")
    proc = start_cli(*verb, "--host", "0.0.0.0", "--port", str(port))
    try:
        line = first_stderr_line(proc, 60)  # printed before TVM is even imported
    finally:
        stop_cli(proc)
    assert line.startswith("warning: the RPC ") and f"0.0.0.0:{port}" in line, line
    assert "pass --allow ADDR[/BITS]" in line and "SSH tunnel" in line, line


def test_serve_allow_refuses_other_peers():
    import tvm

    port = free_port()
    proc = start_cli("device", "serve", "--port", str(port), "--allow", HOST)
    try:
        wait_until(lambda: not port_free(HOST, port), 120, "RPC server listening")
        assert proc.poll() is None
        assert closed_without_answer(port, CLIENT_HELLO)  # even a well-formed RPC client
        session = connect(RemoteSpec.parse(rpc_host=f"{HOST}:{port}"), timeout_s=60)
        x = np.arange(6, dtype="float32")
        assert np.array_equal(tvm.runtime.tensor(x, session.cpu()).numpy(), x)
        del session
        assert closed_without_answer(port, b"")  # still refused, after a session
        session = connect(RemoteSpec.parse(rpc_host=f"{HOST}:{port}"), timeout_s=60)
        del session  # and still serving the allowed peer
    finally:
        out, err = stop_cli(proc)
    assert f"only {HOST} may connect" in out, out + err
    assert err.count(f"refused connection from {STRANGER}:") == 2, err
    assert "warning: a TVM RPC server runs any code" in err  # loopback bind: the usual note


def test_tracker_allow_refuses_other_peers(monkeypatch):
    port = free_port()
    proc = start_cli("tracker", "--port", str(port), "--allow", HOST)
    try:
        info = tracker.wait_for_tracker(HOST, port, timeout_s=120, progress=lambda _m: None)
        assert info["server_info"] == []
        assert closed_without_answer(port, struct.pack("<i", tracker.RPC_TRACKER_MAGIC))
        assert closed_without_answer(port, b"")
        assert tracker.summary(HOST, port)["server_info"] == []  # 127.0.0.1 still served

        # what a refused client is told: not "start a tracker", and no 60 s wait for it
        stranger = functools.partial(socket.create_connection, source_address=(STRANGER, 0))
        monkeypatch.setattr(tracker.socket, "create_connection", stranger)
        start = time.monotonic()
        with pytest.raises(UserError, match="closed the connection without answering: its "
                                            "--allow may not include") as refused:
            tracker.wait_for_tracker(HOST, port, progress=lambda _m: None)
        assert not isinstance(refused.value, tracker.TrackerUnreachable)
        assert time.monotonic() - start < 10
    finally:
        monkeypatch.undo()
        out, err = stop_cli(proc)
    assert f"RPC tracker listening on {HOST}:{port} (only {HOST} may connect)" in out, out + err
    assert err.count(f"refused connection from {STRANGER}:") == 3, err


# ---- boards wait for their tracker ----

def test_wait_for_tracker_is_bounded():
    port = free_port()
    messages: list[str] = []
    start = time.monotonic()
    with pytest.raises(tracker.TrackerUnreachable,
                       match=rf"cannot reach RPC tracker at 127\.0\.0\.1:{port}: start one with "
                             r"`tvmc-attend tracker` or check --tracker \(waited 1\.5 s\)"):
        tracker.wait_for_tracker(HOST, port, timeout_s=1.5, progress=messages.append)
    assert 1.5 <= time.monotonic() - start < 5
    assert messages == [f"waiting for RPC tracker at 127.0.0.1:{port} (up to 1.5 s) ..."]


def test_serve_waits_for_a_tracker_started_after_it():
    tracker_port, server_port = free_port(), free_port()
    key = f"pytest-late-tracker-{os.getpid()}"
    proc = start_cli("device", "serve", "--port", str(server_port), "--tracker",
                     f"{HOST}:{tracker_port}", "--key", key)
    own = None
    try:
        time.sleep(3)
        assert proc.poll() is None, "device serve gave up before its tracker started"
        own = tracker.start_tracker(HOST, tracker_port)
        wait_until(lambda: tracker.servers(tracker.summary(HOST, tracker_port), key), 120,
                   "server registered with the late tracker")
        assert tracker.servers(tracker.summary(HOST, tracker_port), key) == [
            (key, HOST, server_port)]
    finally:
        out, err = stop_cli(proc)
        if own is not None:
            own.stop()
    assert out.count(f"waiting for RPC tracker at {HOST}:{tracker_port} (up to 60 s) ...") == 1, \
        out + err


def test_emulate_waits_for_a_tracker_started_after_it(tmp_path, monkeypatch):
    """`device emulate` takes the same wait (stopped at the rootfs step: no qemu needed)."""
    from tvmc_attend.device import rootfs

    def rootfs_reached(progress):
        raise UserError("reached the rootfs step")

    monkeypatch.setenv("TVMC_ATTEND_CACHE", str(tmp_path))
    monkeypatch.setattr(rootfs, "ensure_rootfs", rootfs_reached)
    port = free_port()
    started: list[tracker.TrackerProcess] = []

    def start_late() -> None:
        time.sleep(2)
        started.append(tracker.start_tracker(HOST, port))

    late = threading.Thread(target=start_late, daemon=True)
    late.start()
    messages: list[str] = []
    try:
        with pytest.raises(UserError, match="reached the rootfs step"):
            emulator.start("rpi4", tracker=f"{HOST}:{port}", key="k",
                           name=f"pytest-late-{os.getpid()}", progress=messages.append)
    finally:
        late.join(120)
        for own in started:
            own.stop()
    assert messages == [f"waiting for RPC tracker at {HOST}:{port} (up to 60 s) ..."]
