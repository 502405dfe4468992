"""Tuning databases: one MetaSchedule JSON database per (target, model), with its identity.

MetaSchedule's database ignores the target when it looks records up (upstream issue 15549),
so a database tuned for one board would silently be applied to another. We keep one database
directory per (target, model) under ``tuning_logs/<target>/<model>/`` and record, in
``tuning.json`` beside MetaSchedule's two files, which target, model and input shapes it was
tuned for, whether the measurements came from an emulated board, and whether they are
timings at all: ``measured_by: counted`` marks a database tuned by counting on an emulated core
(``tune --counted``), whose "seconds" are counted cycles x 1e-9. The two never mix: a timed run
on a counted database sets the counted records aside (``counted/``) and starts afresh, and a
counted run refuses a timed database.

A writer (``tune``) holds the directory's lock (``lock.py``) for its whole run. Opening checks
every line of MetaSchedule's two files (``database_check.py``); under the lock the files are
repaired (atomically); readers (``compile``) never rewrite them, they load a checked copy.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from tvmc_attend.errors import UserError
from tvmc_attend.files import write_json_atomic
from tvmc_attend.targets import Board
from tvmc_attend.timestamps import utc_timestamp

from .database_check import RECORD_FILE, WORKLOAD_FILE, DatabaseCheck, check_files
from .lock import DatabaseLock

INFO_FILE = "tuning.json"
DEFAULT_LOG_DIR = "tuning_logs"
COUNTED, TIMED = "counted", "timed"
COUNTED_ASIDE = "counted"  # where a timed run moves the counted records it takes over from


def _canonical(target: dict[str, Any]) -> str:
    return json.dumps(target, sort_keys=True)


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


@dataclass
class DatabaseInfo:
    """What a database was tuned for; stored as ``tuning.json``."""

    model: str
    target_name: str
    target: dict[str, Any]
    emulated: bool = False
    tvm_version: str = ""
    created: str = field(default_factory=utc_timestamp)
    updated: str = field(default_factory=utc_timestamp)
    devices: list[str] = field(default_factory=list)
    # every input shape a run tuned it for (a run at a new size appends its own); empty in
    # databases written before it was recorded
    input_shapes: list[list[int]] = field(default_factory=list)
    # how the model was lowered into tasks (compile.prepare: layout and version); its records
    # apply only to a build lowered alike. Empty: written before it was recorded.
    lowering: str = ""
    # "timed" (a device's clock) or "counted" (counted cost on an emulated core, a unit of
    # its own); with "counted", the board's core model it was counted with
    measured_by: str = "timed"
    core_model: dict[str, Any] | None = None
    # host databases: the CPU class (targets/cpu_class.py) whose every CPU can apply them, and
    # the machines that measured them ("<cpu> (<llvm cpu>), <n> TVM threads"); empty: written
    # before classes, keyed by the exact target
    cpu_class: str = ""
    tuned_on: list[str] = field(default_factory=list)

    def describe_origin(self) -> str:
        """Where the records were measured, in one phrase."""
        if self.counted:
            cpu = (self.core_model or {}).get("qemu_cpu", "?")
            return f"counted on an emulated {cpu} core"
        where = "; ".join(self.tuned_on) or ", ".join(self.devices) or "an unrecorded machine"
        return f"timed on {where}"

    @property
    def counted(self) -> bool:
        return self.measured_by == COUNTED


def counted_identity(board: Board) -> dict[str, Any]:
    """What a counted database records of the model it was counted under (JSON-shaped, so it
    compares equal to what ``tuning.json`` reads back), and the formula its counts were weighed
    by."""
    from tvmc_attend.device.counting.cost import COST_VERSION

    return json.loads(json.dumps({"qemu_cpu": board.qemu_cpu, **asdict(board.core_model),
                                  "cost_version": COST_VERSION}))


class TuningDatabase:
    """A database directory for one (target, model)."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)

    @classmethod
    def for_model(cls, log_dir: str | None, board: Board, model: str) -> TuningDatabase:
        """Where ``tune`` writes: ``log_dir``, else ``./tuning_logs``."""
        return cls(os.path.join(log_dir or DEFAULT_LOG_DIR, board.database_name, model))

    @classmethod
    def to_apply(cls, log_dir: str | None, board: Board, model: str) -> TuningDatabase:
        """Where ``compile`` looks: ``log_dir`` when given; else the user's own
        ``./tuning_logs`` database when there is one, else the one shipped with the package
        (found wherever the user stands)."""
        own = cls.for_model(log_dir, board, model)
        if log_dir or own.exists():
            return own
        from tvmc_attend.tuning_logs import SHIPPED_DIR

        return cls.for_model(str(SHIPPED_DIR), board, model)

    @classmethod
    def named(cls, path: str, board: Board, lowering: str | None) -> TuningDatabase:
        """A database asked for by name (--database): it must exist and match the target and
        the lowering, since refusing is the only safe answer for it."""
        named = cls(path)
        if not named.exists():
            raise UserError(f"no tuning database at {path}; tune first or drop --database")
        named.check_target(board, lowering)
        return named

    @property
    def info_path(self) -> str:
        return os.path.join(self.path, INFO_FILE)

    def exists(self) -> bool:
        return os.path.isfile(self.info_path) and os.path.isfile(
            os.path.join(self.path, RECORD_FILE))

    def read_info(self) -> DatabaseInfo:
        try:
            with open(self.info_path) as f:
                data = json.load(f)
            known = {f.name for f in fields(DatabaseInfo)}  # a newer version may add fields
            return DatabaseInfo(**{k: v for k, v in data.items() if k in known})
        except FileNotFoundError:
            raise UserError(f"'{self.path}' is not a tvmc-attend tuning database (no "
                            f"{INFO_FILE}); tune with `tvmc-attend tune` first") from None
        except (ValueError, TypeError, AttributeError) as err:
            raise UserError(f"{self.info_path} is damaged ({err}); delete the directory and "
                            "tune again") from None

    def check_target(self, board: Board, lowering: str | None = None) -> DatabaseInfo:
        """Refuse a database tuned for another target (its schedules would be wrong there) or,
        given ``lowering``, for other tasks (another layout, an older compiler)."""
        info = self.read_info()
        wanted = board.resolved_target_dict()
        cls = board.isa_class
        if cls is not None and info.cpu_class and "mtriple" not in info.target:
            # host CPUs: any CPU of the class applies the class's records
            if info.cpu_class != cls.name:
                raise UserError(
                    f"tuning database {self.path} was tuned for the {info.cpu_class} CPU "
                    f"class, not {board.name}'s {cls.name}; tune with --target "
                    f"{cls.preset} or pass --untuned")
        elif info.target_name != board.name or _canonical(info.target) != _canonical(wanted):
            raise UserError(
                f"tuning database {self.path} was tuned for target {info.target_name} "
                f"{_canonical(info.target)}, not {board.name} {_canonical(wanted)}; tune for "
                f"{board.name} or pass --untuned"
            )
        if lowering is not None and info.lowering != lowering:
            had = info.lowering or "nchw-v0, before channel layouts and fast math"
            layout = info.lowering.rsplit("-v", 1)[0] if info.lowering else None
            hint = f" or pass --layout {layout}" if layout and \
                not lowering.startswith(f"{layout}-v") else ""
            raise UserError(
                f"tuning database {self.path} holds tasks lowered as {had}, not {lowering}: "
                f"its records would not apply; retune into a new --log-dir{hint}")
        return info

    def check_measured_by(self, measured_by: str, board: Board | None = None) -> None:
        """A counted run may not write into a database of timings, nor into one counted
        under another core model (the units would mix)."""
        if measured_by != COUNTED or not self.exists():
            return
        info = self.read_info()
        if not info.counted:
            raise UserError(f"tuning database {self.path} holds timings from a device; counted "
                            "costs are another unit and must not mix with them: tune by "
                            "counting into another --log-dir")
        if board is not None and board.core_model is not None and info.core_model and \
                info.core_model != counted_identity(board):
            raise UserError(f"tuning database {self.path} was counted under another core model "
                            f"or cost formula than {board.name}'s preset now has (its counts do "
                            "not compare): "
                            "move it away, or tune into another --log-dir")

    def _set_aside_counted(self, warn: Callable[[str], None]) -> None:
        """A timed run takes over a counted database: move its files into ``counted/``."""
        aside = os.path.join(self.path, COUNTED_ASIDE)
        os.makedirs(aside, exist_ok=True)
        for name in (WORKLOAD_FILE, RECORD_FILE, INFO_FILE):
            if os.path.exists(os.path.join(self.path, name)):
                os.replace(os.path.join(self.path, name), os.path.join(aside, name))
        warn(f"{self.path} was tuned by counting; this run's timings on a device replace it "
             f"(the counted records are kept in {aside})")

    def open(self, board: Board, model: str, create: bool = False,
             emulated: bool = False, device: str | None = None,
             input_shape: tuple[int, ...] | None = None, lowering: str | None = None,
             measured_by: str = TIMED, machine: str | None = None,
             warn: Callable[[str], None] = _warn) -> Any:
        """Open the MetaSchedule JSONDatabase.

        ``create``: to write to (tune). The directory and identity are created if needed,
        ``device`` and ``input_shape`` added to the identity, and the files repaired, all
        under the lock (taken here unless the caller holds it; a writer should hold it for as
        long as it appends). Otherwise read-only (compile): nothing is written, the database
        is loaded from a checked copy of the files and must not be committed to.
        ``lowering``: what the tasks must have been lowered as (see ``check_target``); a new
        database records it. ``measured_by``: what the writer measures with (see the module
        docstring for how timed and counted databases meet). ``machine``: what measures this
        run (CPU and threads), recorded in ``tuned_on``."""
        import tvm
        from tvm.s_tir import meta_schedule as ms

        if not create:
            if not self.exists():
                raise UserError(f"no tuning database at {self.path}; run `tvmc-attend tune "
                                f"--model {model} --target {board.name}` first, or compile "
                                "with --untuned")
            self.check_target(board, lowering)
            check = check_files(self.path)
            # An unterminated torn last line is what a tune appending right now looks like.
            if check.problems > check.unterminated:
                warn(f"{self.path} has {check.describe(done=False)} (not used here); "
                     f"`tvmc-attend db check --repair {self.path}` repairs the files")
            return check.load()

        with self.lock():
            self.check_measured_by(measured_by, board)
            if self.exists() and measured_by == TIMED and self.read_info().counted:
                self._set_aside_counted(warn)
            if self.exists():
                info = self.check_target(board, lowering)
            else:
                os.makedirs(self.path, exist_ok=True)
                info = DatabaseInfo(model=model, target_name=board.name,
                                    target=board.resolved_target_dict(), emulated=emulated,
                                    tvm_version=tvm.__version__, lowering=lowering or "",
                                    measured_by=measured_by)
                if measured_by == COUNTED and board.core_model is not None:
                    info.core_model = counted_identity(board)
                if board.isa_class is not None:
                    info.cpu_class = board.isa_class.name
            info.emulated = info.emulated or emulated
            if device and device not in info.devices:
                info.devices.append(device)
            if machine and machine not in info.tuned_on:
                info.tuned_on.append(machine)
            if input_shape and list(input_shape) not in info.input_shapes:
                info.input_shapes.append(list(input_shape))
            info.updated = utc_timestamp()
            write_json_atomic(self.info_path, asdict(info), sort_keys=True)
            check = self.check(repair=True)
            if check.problems:
                warn(f"repaired {self.path}: {check.describe()}")
            return ms.database.JSONDatabase(
                path_workload=os.path.join(self.path, WORKLOAD_FILE),
                path_tuning_record=os.path.join(self.path, RECORD_FILE),
                allow_missing=True,
            )

    def check(self, deep: bool = False, repair: bool = False, wait: bool = True,
              notify: Callable[[str], None] | None = None) -> DatabaseCheck:
        """Check every line of the database (see ``check_files``); with ``repair``, under the
        lock, rewrite the files without what is wrong."""
        if not repair:
            return check_files(self.path, deep=deep)
        with self.lock(wait=wait, notify=notify):
            check = check_files(self.path, deep=deep)
            check.write()
            return check

    def lock(self, wait: bool = True, notify: Callable[[str], None] | None = None,
             poll_s: float = 0.5, timeout_s: float | None = None,
             ) -> AbstractContextManager[None]:
        """Hold the database's write lock (see ``DatabaseLock.hold``)."""
        return DatabaseLock(self.path).hold(wait=wait, notify=notify, poll_s=poll_s,
                                            timeout_s=timeout_s)

    def in_use_by(self) -> str | None:
        """Who holds the lock (for a report), or None when nobody does."""
        return DatabaseLock(self.path).in_use_by()


FAILED_SECS = 1e9  # MetaSchedule records a candidate that failed to build or run with 1e10 s


def measured_secs(record: Any) -> list[float] | None:
    """A tuning record's run times in seconds, or None if its candidate failed."""
    secs = [float(s) for s in record.run_secs or ()]
    return secs if secs and min(secs) < FAILED_SECS else None


def count_records(database: Any, task_mods: list[Any]) -> list[int]:
    """How many measured records the database holds for each task's workload.

    Failed candidates do not count: when the device is lost, every candidate of the last
    batches fails and is recorded so, and a rerun must measure those again, not skip them."""
    from tvm_ffi import structural_hash

    counts_by_hash: dict[int, int] = {}
    for record in database.get_all_tuning_records():
        if measured_secs(record) is None:
            continue
        key = structural_hash(record.workload.mod)
        counts_by_hash[key] = counts_by_hash.get(key, 0) + 1
    return [counts_by_hash.get(structural_hash(mod), 0) for mod in task_mods]
