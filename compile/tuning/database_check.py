"""Checking and repairing a tuning database's two JSON-lines files, line by line.

MetaSchedule's files: ``database_workload.json`` holds one ``[shash, base64 module]`` line per
workload, ``database_tuning_record.json`` one ``[workload index, [trace, run_secs, target,
args_info]]`` line per measured candidate. ``check_files`` finds torn lines (a write cut short),
duplicate workloads, records whose index is out of range or whose argument shapes are not their
workload's (and, deep, records whose trace does not replay); ``DatabaseCheck.write`` repairs the
files (only under the database's lock), ``DatabaseCheck.load`` opens the checked content.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from typing import Any

from tvmc_attend.files import atomic_path

WORKLOAD_FILE = "database_workload.json"
RECORD_FILE = "database_tuning_record.json"
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

    def workload_mods(self) -> list[Any]:
        """The kept workloads' modules, in file order (the indices the report prints)."""
        return [_parse_workload(line).mod for line in self.workload_text.splitlines()
                if line.strip()]

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
