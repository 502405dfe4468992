"""Where the board is (``RemoteSpec``) and how to open a TVM RPC session on it (``connect``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from tvmc_attend.device import tracker
from tvmc_attend.device.endpoints import format_address, parse_address, port_open
from tvmc_attend.errors import UserError

T = TypeVar("T")


@dataclass(frozen=True)
class RemoteSpec:
    """A board reached through a tracker (``tracker_*`` + ``key``) or directly (``host/port``)."""

    tracker_host: str | None = None
    tracker_port: int | None = None
    key: str | None = None
    host: str | None = None
    port: int | None = None

    @property
    def via_tracker(self) -> bool:
        return self.tracker_host is not None

    @property
    def tracker_address(self) -> str | None:
        if self.tracker_host is None or self.tracker_port is None:
            return None
        return format_address(self.tracker_host, self.tracker_port)

    @property
    def address(self) -> str | None:
        """The direct server address, for ``--rpc-host`` specs."""
        if self.host is None or self.port is None:
            return None
        return format_address(self.host, self.port)

    def describe(self) -> str:
        if self.via_tracker:
            return f"key {self.key} at tracker {self.tracker_address}"
        return f"RPC server {self.address}"

    @classmethod
    def parse(
        cls,
        rpc_tracker: str | None = None,
        rpc_key: str | None = None,
        rpc_host: str | None = None,
        *,
        default_key: str | None = None,
        required: bool = False,
    ) -> RemoteSpec | None:
        """Validate the ``--rpc-tracker/--rpc-key/--rpc-host`` flags.

        Returns None when none is given (unless ``required``). ``default_key`` (a board's
        ``rpc_key``) stands in for a missing ``--rpc-key`` when a tracker is given.
        """
        if rpc_tracker and rpc_host:
            raise UserError("give either --rpc-tracker HOST:PORT (with --rpc-key) or "
                            "--rpc-host HOST:PORT, not both")
        if rpc_tracker:
            key = rpc_key or default_key
            if not key:
                raise UserError("--rpc-tracker needs --rpc-key KEY: the key the board registered "
                                "under (see `tvmc-attend targets`, e.g. rpi4)")
            host, port = parse_address(rpc_tracker, "--rpc-tracker")
            return cls(tracker_host=host, tracker_port=port, key=key)
        if rpc_host:
            host, port = parse_address(rpc_host, "--rpc-host")
            return cls(host=host, port=port, key=rpc_key)
        if rpc_key:
            raise UserError("--rpc-key needs --rpc-tracker HOST:PORT (or use --rpc-host HOST:PORT "
                            "for a board without a tracker)")
        if required:
            raise UserError("no board given: pass --rpc-tracker HOST:PORT --rpc-key KEY or "
                            "--rpc-host HOST:PORT (no board? `tvmc-attend device emulate "
                            "--board rpi4`)")
        return None


def board_for_key(key: str) -> str:
    """The preset whose devices register under ``key`` (for hints), else a placeholder."""
    from tvmc_attend.targets import list_boards

    return next((b.name for b in list_boards() if b.rpc_key == key), "BOARD")


def connect(spec: RemoteSpec, timeout_s: float = 60, session_timeout_s: float = 0) -> Any:
    """Open a ``tvm.rpc`` session on the board, or raise a UserError that says what to start.

    Every wait is bounded by ``timeout_s``: an unreachable tracker fails at once, a key without
    servers fails at once (a TVM tracker would queue the request forever), and a busy board
    fails after ``timeout_s``. ``session_timeout_s`` (0 = none) lets the server end the session.
    """
    if spec.via_tracker:
        return _connect_via_tracker(spec, timeout_s, session_timeout_s)
    host, port = spec.host, spec.port
    assert host is not None and port is not None
    if not port_open(host, port, timeout_s=min(timeout_s, 5)):
        raise UserError(
            f"cannot reach RPC server at {spec.address}: run `tvmc-attend device serve` on the "
            "board (or `tvmc-attend device emulate --board BOARD`) or check --rpc-host"
        )
    return call_with_timeout(
        lambda: _tvm_connect(host, port, spec.key or "", session_timeout_s),
        timeout_s,
        f"RPC server at {spec.address} accepted the connection but did not start a session "
        f"within {timeout_s:g} s (busy with another client, or waiting for its tracker): retry "
        "later or restart the server",
    )


def _connect_via_tracker(spec: RemoteSpec, timeout_s: float, session_timeout_s: float) -> Any:
    # Import TVM's RPC client before asking the tracker: the match key it hands out goes stale
    # within seconds, and a first `import tvm` (with torch loaded) can take longer than that.
    from tvm import rpc  # noqa: F401

    assert spec.tracker_host is not None and spec.tracker_port is not None and spec.key
    addr = (spec.tracker_host, spec.tracker_port)
    summary = tracker.summary(*addr, timeout_s=min(timeout_s, 5))
    if tracker.server_count(summary, spec.key) == 0:
        keys = ", ".join(tracker.registered_keys(summary)) or "none"
        raise UserError(
            f"no free device under key {spec.key} at tracker {spec.tracker_address} "
            f"(registered keys: {keys}): start one with `tvmc-attend device emulate --board "
            f"{board_for_key(spec.key)} --tracker {spec.tracker_address} --key {spec.key}` or "
            "`tvmc-attend device serve` on the board"
        )
    deadline = time.monotonic() + timeout_s
    server_host, server_port, matchkey = tracker.request(*addr, spec.key, timeout_s=timeout_s)
    remaining = max(deadline - time.monotonic(), 5.0)
    return call_with_timeout(
        lambda: _tvm_connect(server_host, server_port, matchkey, session_timeout_s),
        remaining,
        f"the device under key {spec.key} (at {format_address(server_host, server_port)}) did "
        f"not start a session within {timeout_s:g} s: check that it is still running",
    )


def _tvm_connect(host: str, port: int, key: str, session_timeout_s: float) -> Any:
    from tvm import rpc

    try:
        return rpc.connect(host, port, key=key, session_timeout=session_timeout_s)
    except Exception as err:  # TVM raises plain errors (RuntimeError, TVMError) with C++ text
        reason = str(err).strip().splitlines()[-1]
        if "matches key" in reason:  # wrong key, or a server that only takes tracker clients
            raise UserError(
                f"the RPC server at {format_address(host, port)} refused the session key: if it "
                "is registered with a tracker, use --rpc-tracker HOST:PORT --rpc-key KEY instead "
                "of --rpc-host; otherwise drop --rpc-key"
            ) from err
        raise UserError(f"RPC connection to {format_address(host, port)} failed: "
                        f"{reason}") from err


def call_with_timeout(fn: Callable[[], T], timeout_s: float, message: str) -> T:
    """Run ``fn`` but give up after ``timeout_s`` with UserError(message).

    TVM's C++ connect has no timeout of its own; on timeout the daemon thread is abandoned
    (its socket closes when the server answers or dies).
    """
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = fn()
        except BaseException as err:  # re-raised in the caller's thread
            result["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise UserError(message)
    if "error" in result:
        raise result["error"]
    return result["value"]
