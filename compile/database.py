"""Tuning databases: one MetaSchedule JSON database per (target, model), with its identity.

MetaSchedule's database ignores the target when it looks records up (upstream issue 15549),
so a database tuned for one board would silently be applied to another. We keep one database
directory per (target, model) under ``tuning_logs/<target>/<model>/`` and record, in
``tuning.json`` beside MetaSchedule's two files, which target and model it was tuned for and
whether the measurements came from an emulated board.

MetaSchedule appends one JSON line per measured candidate, so an interrupted run keeps every
record measured so far; a run killed mid-write can leave a torn last line, which ``open``
drops (atomically) before MetaSchedule reads the file.
"""

from __future__ import annotations

import datetime
import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from tvmc_attend.errors import UserError
from tvmc_attend.files import write_json_atomic, write_text_atomic
from tvmc_attend.targets import Board

INFO_FILE = "tuning.json"
WORKLOAD_FILE = "database_workload.json"
RECORD_FILE = "database_tuning_record.json"
DEFAULT_LOG_DIR = "tuning_logs"


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")



def _canonical(target: dict[str, Any]) -> str:
    return json.dumps(target, sort_keys=True)


@dataclass
class DatabaseInfo:
    """What a database was tuned for; stored as ``tuning.json``."""

    model: str
    target_name: str
    target: dict[str, Any]
    emulated: bool = False
    tvm_version: str = ""
    created: str = field(default_factory=_now)
    updated: str = field(default_factory=_now)
    devices: list[str] = field(default_factory=list)


class TuningDatabase:
    """A database directory for one (target, model)."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)

    @classmethod
    def for_model(cls, log_dir: str | None, board: Board, model: str) -> TuningDatabase:
        return cls(os.path.join(log_dir or DEFAULT_LOG_DIR, board.name, model))

    @property
    def info_path(self) -> str:
        return os.path.join(self.path, INFO_FILE)

    def exists(self) -> bool:
        return os.path.isfile(self.info_path) and os.path.isfile(
            os.path.join(self.path, RECORD_FILE))

    def read_info(self) -> DatabaseInfo:
        try:
            with open(self.info_path) as f:
                return DatabaseInfo(**json.load(f))
        except FileNotFoundError:
            raise UserError(f"'{self.path}' is not a tvmc-attend tuning database (no "
                            f"{INFO_FILE}); tune with `tvmc-attend tune` first") from None
        except (ValueError, TypeError) as err:
            raise UserError(f"{self.info_path} is damaged ({err}); delete the directory and "
                            "tune again") from None

    def check_target(self, board: Board) -> DatabaseInfo:
        """Refuse a database tuned for another target: its schedules would be wrong there."""
        info = self.read_info()
        wanted = board.resolved_target_dict()
        if info.target_name != board.name or _canonical(info.target) != _canonical(wanted):
            raise UserError(
                f"tuning database {self.path} was tuned for target {info.target_name} "
                f"{_canonical(info.target)}, not {board.name} {_canonical(wanted)}; tune for "
                f"{board.name} or pass --untuned"
            )
        return info

    def open(self, board: Board, model: str, create: bool = False,
             emulated: bool = False, device: str | None = None) -> Any:
        """Open the MetaSchedule JSONDatabase, creating the directory and identity if asked."""
        import tvm
        from tvm.s_tir import meta_schedule as ms

        if self.exists():
            info = self.check_target(board)
        elif create:
            os.makedirs(self.path, exist_ok=True)
            info = DatabaseInfo(model=model, target_name=board.name,
                                target=board.resolved_target_dict(), emulated=emulated,
                                tvm_version=tvm.__version__)
        else:
            raise UserError(f"no tuning database at {self.path}; run `tvmc-attend tune --model "
                            f"{model} --target {board.name}` first, or compile with --untuned")
        if create:
            info.emulated = info.emulated or emulated
            if device and device not in info.devices:
                info.devices.append(device)
            info.updated = _now()
            write_json_atomic(self.info_path, asdict(info), sort_keys=True)
        for name in (WORKLOAD_FILE, RECORD_FILE):
            _drop_torn_lines(os.path.join(self.path, name))
        return ms.database.JSONDatabase(
            path_workload=os.path.join(self.path, WORKLOAD_FILE),
            path_tuning_record=os.path.join(self.path, RECORD_FILE),
            allow_missing=create,
        )


def _drop_torn_lines(path: str) -> None:
    """Rewrite ``path`` without lines that are not valid JSON (a write cut short)."""
    if not os.path.isfile(path):
        return
    with open(path) as f:
        lines = f.read().splitlines()
    good = []
    for line in lines:
        if not line.strip():
            continue
        try:
            json.loads(line)
        except ValueError:
            continue
        good.append(line)
    if len(good) != len(lines):
        write_text_atomic(path, "".join(line + "\n" for line in good))


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
