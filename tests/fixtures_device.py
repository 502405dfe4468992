"""Device fixtures: a real RPC tracker and one emulated rpi4 registered with it, per session.

Both are stopped at session end even when tests fail (try/finally), and at interpreter exit
(atexit) if pytest dies before finalising. The emulated board is shared by every test that asks
for it: a server start costs 20-45 s (the first ever run also builds the rootfs, ~5 min). If
qemu/binfmt cannot work the fixture errors with the reason: it never skips.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tvmc_attend.device import RemoteSpec

__all__ = ["EmulatedDevice", "emulated_rpi4", "rpc_tracker"]


@dataclass(frozen=True)
class EmulatedDevice:
    """What tests need to reach the emulated board."""

    board: str  # the preset it emulates
    name: str  # its instance name (`tvmc-attend device stop --board NAME`)
    tracker: str  # "127.0.0.1:PORT"
    key: str  # unique per test session, so a user's own boards never answer
    host: str  # the RPC server itself (only reachable through the tracker)
    port: int

    @property
    def spec(self) -> RemoteSpec:
        spec = RemoteSpec.parse(rpc_tracker=self.tracker, rpc_key=self.key)
        assert spec is not None
        return spec

    @property
    def tracker_host(self) -> str:
        return self.spec.tracker_host or ""

    @property
    def tracker_port(self) -> int:
        return self.spec.tracker_port or 0


@pytest.fixture(scope="session")
def rpc_tracker() -> Iterator[str]:
    """A real TVM RPC tracker on 127.0.0.1 (free port); yields "127.0.0.1:PORT"."""
    from tvmc_attend.device.tracker import start_tracker

    tracker = start_tracker("127.0.0.1")
    atexit.register(tracker.stop)
    try:
        yield tracker.address
    finally:
        tracker.stop()


@pytest.fixture(scope="session")
def emulated_rpi4(rpc_tracker: str) -> Iterator[EmulatedDevice]:
    """An emulated rpi4 (qemu cortex-a72) registered with ``rpc_tracker`` under a unique key."""
    from tvmc_attend.device import emulator

    name = key = f"pytest-rpi4-{os.getpid()}"
    atexit.register(emulator.stop, name, missing_ok=True)
    try:
        state = emulator.start("rpi4", tracker=rpc_tracker, key=key, name=name)
        yield EmulatedDevice("rpi4", name, rpc_tracker, key, state.host, state.port)
    finally:
        emulator.stop(name, missing_ok=True)
