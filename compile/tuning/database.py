"""Tuning databases: one MetaSchedule JSON database per (target, model), with its identity.

MetaSchedule's database ignores the target when it looks records up (upstream issue 15549),
so a database tuned for one board would silently be applied to another. We keep one database
directory per (target, model) under ``tuning_logs/<target>/<model>/`` and record, in
``tuning.json`` beside MetaSchedule's two files, which target, model and input shapes it was
tuned for and whether the measurements came from an emulated board.

MetaSchedule's two files are JSON lines: ``database_workload.json`` holds one
``[shash, base64 module]`` line per workload, ``database_tuning_record.json`` one
``[workload index, [trace, run_secs, target, args_info]]`` line per measured candidate, and
a writer numbers the workloads it appends from the file as it read it at start. Two writers
at once therefore attach records to each other's workloads, so a writer (``tune``) holds the
directory's lock (``lock``) for its whole run. Opening checks every line (``check_files``):
torn lines (a write cut short), duplicate workloads, records whose index is out of range or
whose argument shapes are not their workload's. Under the lock the files are repaired
(atomically); readers (``compile``) never rewrite them, they load a checked copy.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import re
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from tvmc_attend.errors import UserError
from tvmc_attend.files import atomic_path, write_json_atomic
from tvmc_attend.targets import Board

INFO_FILE = "tuning.json"
WORKLOAD_FILE = "database_workload.json"
RECORD_FILE = "database_tuning_record.json"
LOCK_FILE = ".lock"
DEFAULT_LOG_DIR = "tuning_logs"


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


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
    created: str = field(default_factory=_now)
    updated: str = field(default_factory=_now)
    devices: list[str] = field(default_factory=list)
    # every input shape a run tuned it for (a run at a new size appends its own); empty in
    # databases written before it was recorded
    input_shapes: list[list[int]] = field(default_factory=list)


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
                data = json.load(f)
            known = {f.name for f in fields(DatabaseInfo)}  # a newer version may add fields
            return DatabaseInfo(**{k: v for k, v in data.items() if k in known})
        except FileNotFoundError:
            raise UserError(f"'{self.path}' is not a tvmc-attend tuning database (no "
                            f"{INFO_FILE}); tune with `tvmc-attend tune` first") from None
        except (ValueError, TypeError, AttributeError) as err:
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
             emulated: bool = False, device: str | None = None,
             input_shape: tuple[int, ...] | None = None,
             warn: Callable[[str], None] = _warn) -> Any:
        """Open the MetaSchedule JSONDatabase.

        ``create``: to write to (tune). The directory and identity are created if needed,
        ``device`` and ``input_shape`` added to the identity, and the files repaired, all
        under the lock (taken here unless the caller holds it; a writer should hold it for as
        long as it appends). Otherwise read-only (compile): nothing is written, the database
        is loaded from a checked copy of the files and must not be committed to."""
        import tvm
        from tvm.s_tir import meta_schedule as ms

        if not create:
            if not self.exists():
                raise UserError(f"no tuning database at {self.path}; run `tvmc-attend tune "
                                f"--model {model} --target {board.name}` first, or compile "
                                "with --untuned")
            self.check_target(board)
            check = check_files(self.path)
            # An unterminated torn last line is what a tune appending right now looks like.
            if check.problems > check.unterminated:
                warn(f"{self.path} has {check.describe(done=False)} (not used here); "
                     f"`tvmc-attend db check --repair {self.path}` repairs the files")
            return check.load()

        with self.lock():
            if self.exists():
                info = self.check_target(board)
            else:
                os.makedirs(self.path, exist_ok=True)
                info = DatabaseInfo(model=model, target_name=board.name,
                                    target=board.resolved_target_dict(), emulated=emulated,
                                    tvm_version=tvm.__version__)
            info.emulated = info.emulated or emulated
            if device and device not in info.devices:
                info.devices.append(device)
            if input_shape and list(input_shape) not in info.input_shapes:
                info.input_shapes.append(list(input_shape))
            info.updated = _now()
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

    # ------------------------------------------------------------------------------ lock

    @property
    def lock_path(self) -> str:
        return os.path.join(self.path, LOCK_FILE)

    @contextlib.contextmanager
    def lock(self, wait: bool = True, notify: Callable[[str], None] | None = None,
             poll_s: float = 0.5, timeout_s: float | None = None) -> Iterator[None]:
        """Hold the database's write lock: an flock on ``.lock`` in its directory (created if
        needed), which the kernel releases when the holder dies, however it dies. The file
        names the holder (pid, host, start, command) for messages, and goes on release.

        Another holder: with ``wait``, say so once (``notify``, default stderr) naming its
        pid, and poll until it is gone (``TimeoutError`` after ``timeout_s``); without, a
        ``UserError`` naming it. A process may take a lock it holds again."""
        key = os.path.realpath(self.path)
        if key in _HELD:
            _HELD[key] += 1
            try:
                yield
            finally:
                _HELD[key] -= 1
            return
        created = _missing_dirs(self.path)
        fd = self._acquire(wait, notify or (lambda m: print(m, file=sys.stderr, flush=True)),
                           poll_s, timeout_s)
        _HELD[key] = 1
        try:
            yield
        finally:
            del _HELD[key]
            # Removed while still held: a waiter that opened this file finds, once it gets
            # the flock, that the path names another file (or none) and opens it anew.
            with contextlib.suppress(OSError):
                os.unlink(self.lock_path)
            os.close(fd)
            for directory in created:  # what a tune that failed early would leave, if empty
                try:
                    os.rmdir(directory)
                except OSError:
                    break

    def _acquire(self, wait: bool, notify: Callable[[str], None], poll_s: float,
                 timeout_s: float | None) -> int:
        start = time.monotonic()
        announced: set[Any] = set()
        fd = -1
        try:
            while True:
                fd = self._open_lock_file()
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    if _names(self.lock_path, fd):
                        break
                    os.close(fd)  # released and removed meanwhile: take the new file
                    fd = -1
                    continue
                except BlockingIOError:
                    os.close(fd)
                    fd = -1
                # The file's content is only ever used to name the holder in a message: it
                # may be stale (a killed holder) or not written yet (a holder that just got
                # it); only the flock says whether the database is in use.
                holder = _read_holder(self.lock_path)
                waited = time.monotonic() - start
                if not wait:
                    # a moment for a holder to write its name (or a `db check` probe to end)
                    if waited < 0.5:
                        time.sleep(0.1)
                        continue
                    raise UserError(f"tuning database {self.path} is in use by "
                                    f"{_describe(holder)}; wait for it to end, or run "
                                    "without --no-wait to wait for it")
                pid = holder.get("pid") if holder else None
                if pid not in announced and (holder or waited >= 2):
                    announced.add(pid)
                    notify(f"waiting for tuning database {self.path}: in use by "
                           f"{_describe(holder)} (continuing when it ends)")
                if timeout_s is not None and waited >= timeout_s:
                    raise TimeoutError(f"{self.path} still in use after {timeout_s:g} s")
                time.sleep(poll_s)
        except BaseException as exc:
            if fd >= 0:
                os.close(fd)
            if isinstance(exc, KeyboardInterrupt):  # Ctrl-C while waiting: no traceback
                err = UserError(f"interrupted while waiting for tuning database {self.path}")
                err.exit_code = 130
                raise err from None
            raise
        try:
            os.ftruncate(fd, 0)
            os.write(fd, (json.dumps({
                "pid": os.getpid(), "host": socket.gethostname(), "started": _now(),
                "command": " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]]),
            }) + "\n").encode())
        except OSError:
            pass  # the name is for messages only
        return fd

    def _open_lock_file(self) -> int:
        while True:
            try:
                os.makedirs(self.path, exist_ok=True)
                return os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except FileNotFoundError:
                continue  # the directory, empty, was removed by a holder releasing it
            except OSError as err:
                raise UserError(f"cannot lock tuning database {self.path}: "
                                f"{err.strerror}") from None

    def in_use_by(self) -> str | None:
        """Who holds the lock (for a report), or None when nobody does. Takes nothing: a
        shared flock tried and dropped at once (a waiting tune just polls again)."""
        try:
            fd = os.open(self.lock_path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _describe(_read_holder(self.lock_path))
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)


_HELD: dict[str, int] = {}  # database locks this process holds: path -> depth


def _missing_dirs(path: str) -> list[str]:
    """``path`` and its ancestors that do not exist yet, deepest first."""
    missing = []
    while not os.path.isdir(path) and os.path.dirname(path) != path:
        missing.append(path)
        path = os.path.dirname(path)
    return missing


def _names(path: str, fd: int) -> bool:
    """Does ``path`` still name the file open as ``fd``?"""
    try:
        st, fst = os.stat(path), os.fstat(fd)
    except FileNotFoundError:
        return False
    return (st.st_dev, st.st_ino) == (fst.st_dev, fst.st_ino)


def _read_holder(path: str) -> dict[str, Any] | None:
    try:
        with open(path) as f:
            holder = json.loads(f.read())
        return holder if isinstance(holder, dict) and "pid" in holder else None
    except (OSError, ValueError):
        return None


def _describe(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "another process"
    return (f"pid {holder.get('pid')} on {holder.get('host', '?')} since "
            f"{holder.get('started', '?')} (`{holder.get('command', '?')}`)")


# ----------------------------------------------------------------------------- checking

_INDEX = re.compile(r"^\[\s*\d+\s*,")


@dataclass
class DatabaseCheck:
    """What ``check_files`` found in a database's two files; ``write`` repairs them,
    ``load`` opens the checked content read-only."""

    path: str
    workload_lines: int = 0
    record_lines: int = 0
    records_per_workload: list[int] = field(default_factory=list)
    workload_args: list[str] = field(default_factory=list)  # for reports
    torn: int = 0  # lines that are not a workload / record (e.g. a write cut short)
    unterminated: int = 0  # ... of which the last line of a file, without its newline
    duplicate_workloads: int = 0
    remapped: int = 0  # records moved from a duplicate to its first copy
    out_of_range: int = 0  # records whose workload index names no (readable) workload
    mis_attached: int = 0  # records whose argument shapes are not their workload's
    unreplayable: int | None = None  # deep: records whose trace does not replay as recorded
    workload_text: str = field(default="", repr=False)
    record_text: str = field(default="", repr=False)
    workloads_changed: bool = False
    records_changed: bool = False

    @property
    def workloads(self) -> int:
        return len(self.records_per_workload)

    @property
    def records(self) -> int:
        return sum(self.records_per_workload)

    @property
    def problems(self) -> int:
        return (self.torn + self.duplicate_workloads + self.out_of_range + self.mis_attached
                + (self.unreplayable or 0))

    def describe(self, done: bool = True) -> str:
        """What is wrong, one phrase per kind; ``done``: as repaired (``... dropped``)."""
        def said(phrase: str, verb: str) -> str:
            return f"{phrase} {verb}" if done else phrase

        parts = []
        if self.torn:
            parts.append(said(_plural(self.torn, "torn line"), "dropped"))
        if self.duplicate_workloads:
            parts.append(said(_plural(self.duplicate_workloads, "duplicate workload"), "merged")
                         + f" ({_plural(self.remapped, 'record')} remapped to the first copy)")
        if self.out_of_range:
            parts.append(said(_plural(self.out_of_range, "record")
                              + " with an out-of-range workload index", "dropped"))
        if self.mis_attached:
            parts.append(said(f"{self.mis_attached} mis-attached "
                              + ("record" if self.mis_attached == 1 else "records"), "dropped")
                         + " (argument shapes not their workload's)")
        if self.unreplayable:
            parts.append(said(_plural(self.unreplayable, "record")
                              + " whose trace does not replay on its workload", "dropped"))
        return ", ".join(parts) or "nothing wrong"

    def write(self) -> None:
        """Rewrite the files that changed (each atomically; only under the lock)."""
        for name, text, changed in ((WORKLOAD_FILE, self.workload_text, self.workloads_changed),
                                    (RECORD_FILE, self.record_text, self.records_changed)):
            if changed:
                _write_lines(os.path.join(self.path, name), text)

    def load(self) -> Any:
        """A JSONDatabase of the checked content, read-only: loaded from a private copy, so
        that neither a tune appending meanwhile nor a bad line can reach MetaSchedule."""
        from tvm.s_tir import meta_schedule as ms

        with tempfile.TemporaryDirectory(prefix="tvmc-attend-db-") as tmp:
            paths = [os.path.join(tmp, WORKLOAD_FILE), os.path.join(tmp, RECORD_FILE)]
            for path, text in zip(paths, (self.workload_text, self.record_text), strict=True):
                _write_lines(path, text)
            # JSONDatabase reads both files into memory here: the copy can go at once.
            return ms.database.JSONDatabase(path_workload=paths[0], path_tuning_record=paths[1],
                                            allow_missing=False)


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _read_lines(path: str) -> tuple[list[str], bool]:
    """The lines of ``path`` as MetaSchedule reads them, and whether the last one lacks its
    newline. Bytes that are not UTF-8 survive a rewrite (surrogateescape)."""
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8", errors="surrogateescape")
    except FileNotFoundError:
        return [], False
    lines = text.split("\n")
    unterminated = lines[-1] != ""
    if not unterminated:
        lines.pop()
    return lines, unterminated


def _write_lines(path: str, text: str) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8",
                                        errors="surrogateescape") as f:
        f.write(text)


def _parse_workload(line: str) -> Any:
    from tvm.s_tir import meta_schedule as ms

    try:
        obj = json.loads(line)
        if not (isinstance(obj, list) and len(obj) == 2 and all(isinstance(x, str) for x in obj)):
            return None
        return ms.database.Workload.from_json(obj)
    except Exception:  # invalid JSON, bad base64, a module TVM cannot load
        return None


def _parse_record(line: str) -> tuple[int, list[Any]] | None:
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    if (isinstance(obj, list) and len(obj) == 2 and type(obj[0]) is int
            and isinstance(obj[1], list) and len(obj[1]) >= 2):
        return obj[0], obj[1]
    return None


def _args_json(workload: Any) -> str | None:
    """The workload's arguments as MetaSchedule records them with each measurement."""
    from tvm.s_tir import meta_schedule as ms

    try:
        args = ms.arg_info.ArgInfo.from_entry_func(workload.mod, remove_preproc=True)
        return json.dumps([arg.as_json() for arg in args])
    except Exception:  # then the records' arguments are not checked
        return None


def _replays(workload: Any, record: list[Any]) -> bool:
    """Does the record's trace replay on ``workload`` exactly as recorded? A sampled tile
    size that does not divide the loop is silently replaced on replay, so compare the
    replayed trace (decisions included) with the recorded one."""
    import tvm
    from tvm.s_tir import meta_schedule as ms

    try:
        trace = ms.database.TuningRecord.from_json(record, workload).trace
        sch = tvm.s_tir.Schedule(workload.mod)
        trace.apply_to_schedule(sch, remove_postproc=False)
        return str(sch.trace.as_json(remove_postproc=False)) == str(
            trace.as_json(remove_postproc=False))
    except Exception:  # TVM reports a trace that does not apply by raising
        return False


def _describe_args(args: str | None) -> str:
    if args is None:
        return "?"
    shapes = [f"{a[1]}[{','.join(map(str, a[2]))}]" for a in json.loads(args)
              if isinstance(a, list) and len(a) == 3]
    return " ".join(shapes[:4]) + (f" +{len(shapes) - 4} more" if len(shapes) > 4 else "")


def check_files(path: str, deep: bool = False) -> DatabaseCheck:
    """Check every workload and record line of the database in ``path`` (changing nothing).

    Torn lines are dropped, duplicate workloads merged into their first copy (their records
    remapped), records whose index names no readable workload dropped, and records whose
    argument shapes are not their workload's (measured on another workload) dropped; with
    ``deep``, also records whose trace does not replay on their workload. The kept content,
    renumbered, is in ``workload_text`` / ``record_text``."""
    from tvm_ffi import structural_equal, structural_hash

    # Records first: a tune appends a workload before any of its records, so every record
    # read here has its workload in the file read next.
    record_lines, records_open = _read_lines(os.path.join(path, RECORD_FILE))
    workload_lines, workloads_open = _read_lines(os.path.join(path, WORKLOAD_FILE))
    check = DatabaseCheck(path, workload_lines=len(workload_lines),
                          record_lines=len(record_lines))

    kept: list[Any] = []  # the kept workloads, in file order
    kept_lines: list[str] = []
    new_index: list[int | None] = []  # line number -> index among the kept (None: unreadable)
    duplicate_line: list[bool] = []
    by_hash: dict[int, list[int]] = {}
    for number, line in enumerate(workload_lines):
        workload = _parse_workload(line)
        if workload is None:
            check.torn += 1
            check.unterminated += workloads_open and number == len(workload_lines) - 1
            new_index.append(None)
            duplicate_line.append(False)
            continue
        key = structural_hash(workload.mod)
        first = next((i for i in by_hash.get(key, ())
                      if structural_equal(kept[i].mod, workload.mod)), None)
        duplicate_line.append(first is not None)
        if first is not None:
            check.duplicate_workloads += 1
            new_index.append(first)
            continue
        by_hash.setdefault(key, []).append(len(kept))
        new_index.append(len(kept))
        kept.append(workload)
        kept_lines.append(line)
    args = [_args_json(workload) for workload in kept]
    check.workload_args = [_describe_args(a) for a in args]
    check.records_per_workload = [0] * len(kept)
    if deep:
        check.unreplayable = 0

    kept_records: list[str] = []
    for number, line in enumerate(record_lines):
        parsed = _parse_record(line)
        if parsed is None:
            check.torn += 1
            check.unterminated += records_open and number == len(record_lines) - 1
            continue
        index, record = parsed
        target = new_index[index] if 0 <= index < len(new_index) else None
        if target is None:
            check.out_of_range += 1
            continue
        if len(record) >= 4 and record[3] is not None and args[target] is not None \
                and json.dumps(record[3]) != args[target]:
            check.mis_attached += 1
            continue
        if deep and not _replays(kept[target], record):
            check.unreplayable += 1
            continue
        check.remapped += duplicate_line[index]
        check.records_per_workload[target] += 1
        kept_records.append(line if target == index else _INDEX.sub(f"[{target},", line))

    check.workload_text = "".join(line + "\n" for line in kept_lines)
    check.record_text = "".join(line + "\n" for line in kept_records)
    # A last line without its newline would be glued to MetaSchedule's next append.
    check.workloads_changed = kept_lines != workload_lines or workloads_open
    check.records_changed = kept_records != record_lines or records_open
    return check


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
