"""Where to run or measure: this host, or a board over TVM RPC (real or emulated).

``choose_device`` turns the --rpc-tracker/--rpc-key, --rpc-host and --emulate flags into one
``DeviceChoice``; tuning, benchmark, compare and explore take it as it is, and refuse a board
target without a device (``require_for``, the one place that says so).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tvmc_attend.device.rpc import RemoteSpec, connect
from tvmc_attend.errors import UserError
from tvmc_attend.targets import Board


@dataclass(frozen=True)
class DeviceChoice:
    """This host (``spec`` None) or the board ``spec`` reaches; ``emulated``: a qemu board
    started by `device emulate` (its timings are labelled so); ``counted``: no board at all,
    candidates are counted on an emulated core of the target (``device.counting``)."""

    spec: RemoteSpec | None = None
    emulated: bool = False
    counted: bool = False

    @property
    def is_local(self) -> bool:
        return self.spec is None

    @property
    def description(self) -> str:
        """"local", "counted", or the board's address as the reports and databases name it."""
        if self.counted:
            return "counted"
        return "local" if self.spec is None else self.spec.describe()

    def require_for(self, board: Board, purpose: str) -> None:
        """A board target needs a board: refuse (before any work) when none is chosen."""
        if board.is_remote and self.spec is None and not self.counted:
            raise UserError(
                f"target {board.name} is a board: {purpose} needs one. Pass --rpc-tracker "
                "HOST:PORT --rpc-key KEY or --rpc-host HOST:PORT (start an emulated board with "
                f"`tvmc-attend device emulate --board {board.name}`), or use --emulate")

    def connect(self, timeout_s: float = 60) -> Any:
        """An RPC session on the board (a one-line UserError when it cannot be had); None for
        this host."""
        return None if self.spec is None else connect(self.spec, timeout_s=timeout_s)

    def parallel_workers(self) -> int:
        """Connect once (failing fast with advice), then count the devices that can measure
        in parallel: every one registered under the key at a tracker, else one."""
        from tvmc_attend.device import tracker

        if self.spec is None:
            return 1
        self.connect()  # the session is dropped at once: this only fails fast
        if not self.spec.via_tracker:
            return 1
        info = tracker.summary(self.spec.tracker_host, self.spec.tracker_port)
        return max(1, tracker.server_count(info, self.spec.key))


LOCAL = DeviceChoice()


@dataclass(frozen=True)
class DeviceRequest:
    """The device asked for, as the --rpc-tracker, --rpc-key, --rpc-host and --emulate options
    (or the API's ``device=``) give it; ``choose`` resolves it for a board."""

    rpc_tracker: str | None = None
    rpc_key: str | None = None
    rpc_host: str | None = None
    emulate: bool = False

    @property
    def given(self) -> bool:
        return bool(self.rpc_tracker or self.rpc_host or self.emulate)

    def choose(self, board: Board) -> DeviceChoice:
        """The device they name for ``board`` (see ``device.choice.choose_device``)."""
        return choose_device(board, self.rpc_tracker, self.rpc_key, self.rpc_host,
                             self.emulate)


def counting_device(board: Board, rpc_tracker: str | None = None, rpc_host: str | None = None,
                    ) -> DeviceChoice:
    """Tuning by counting on an emulated core of ``board`` (``tune --counted``)."""
    if rpc_tracker or rpc_host:
        raise UserError("--counted counts on an emulated core, not on a device: drop "
                        "--rpc-tracker/--rpc-host (or drop --counted to time on that device)")
    if not board.is_remote:
        raise UserError("--counted is for a board you do not have (e.g. --target rpi4); this "
                        "host times its candidates natively")
    if board.core_model is None or not board.qemu_cpu:  # fail before importing TVM
        from tvmc_attend.device.counting import CountingCore

        CountingCore.for_board(board)  # raises the one message that names the boards
    return DeviceChoice(counted=True)


def choose_device(board: Board, rpc_tracker: str | None = None, rpc_key: str | None = None,
                  rpc_host: str | None = None, emulate: bool = False) -> DeviceChoice:
    """The device the flags name: ``emulate`` reuses (or starts) an emulated board for
    ``board``; otherwise the --rpc-* flags, or this host when none is given."""
    if emulate:
        if rpc_tracker or rpc_host:
            raise UserError("--emulate starts its own board: drop --rpc-tracker/--rpc-host, "
                            "or drop --emulate to use that device")
        if not board.is_remote:
            raise UserError("--emulate needs a board target (e.g. --target rpi4); the host "
                            "runs natively")
        return DeviceChoice(_emulated_board(board), emulated=True)
    spec = RemoteSpec.parse(rpc_tracker=rpc_tracker, rpc_key=rpc_key, rpc_host=rpc_host,
                            default_key=board.rpc_key)
    if spec is None:
        return LOCAL
    return DeviceChoice(spec, emulated=_is_emulated(spec))


def _is_emulated(spec: RemoteSpec) -> bool:
    """True when ``spec`` points at an emulated board started by `device emulate`: one this
    machine's registry knows, else one that says so itself (its server answers
    ``server.EMULATED_FUNC``; a real board's has no such function)."""
    from tvmc_attend.device import emulator
    from tvmc_attend.device.server import EMULATED_FUNC

    for em in emulator.running():
        if spec.via_tracker and em.tracker == spec.tracker_address and em.key == spec.key:
            return True
        if not spec.via_tracker and em.address == spec.address:
            return True
    try:
        session = connect(spec, timeout_s=60)
    except UserError:  # unreachable: the command's own connection says so, with advice
        return False
    try:
        return bool(session.get_function(EMULATED_FUNC)())
    except Exception:  # no such function: a board, not an emulation
        return False


def _emulated_board(board: Board) -> RemoteSpec:
    """Reuse a running emulated board for ``board`` or start one (a direct RPC server)."""
    from tvmc_attend.device import emulator

    for em in emulator.running():
        if em.board == board.name and em.alive():
            return RemoteSpec.parse(rpc_host=em.address)
    em = emulator.start(board.name, progress=lambda msg: print(msg, flush=True))
    return RemoteSpec.parse(rpc_host=em.address)
