"""One writer per tuning database: `tune` locks ``tuning_logs/<target>/<model>/`` for its whole
run (a second one waits, or exits with --no-wait; a killed one leaves nothing that blocks),
opening a database checks every workload and record line (and, under the lock, repairs them),
and `tvmc-attend db check DIR [--repair] [--deep]` reports what it finds.

Real CLI and real MetaSchedule on the lone DC-AC block (one tuning task) at 14x14 and 16x16
with a few trials: a tune run takes ~25 s on a 2-core machine. The two concurrency tests fail
on the code before the lock: records of the 16x16 run attached to the 14x14 workload, and a
duplicated workload line.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import (
    HOST_DB,
    REPO,
    assert_cli_error,
    cli_here,
    output,
    record_count,
    run_cli,
    running_cli,
    start_cli,
    tune_summary,
    wait_until,
)

from tvmc_attend.compiler.tuning.database import TuningDatabase
from tvmc_attend.errors import UserError

MODEL = "dcac"
WORKLOADS, RECORDS, INFO, LOCK = (
    "database_workload.json", "database_tuning_record.json", "tuning.json", ".lock")


def shape(size: int) -> tuple[int, ...]:
    return (1, 40, size, size)


def tune_args(log_dir: Path, size: int, trials: int = 4, *extra: str) -> tuple[str, ...]:
    return ("tune", "--model", MODEL, "--input-size", str(size), "--target", "host",
            "--trials", str(trials), "--log-dir", str(log_dir), *extra)


def lock_holder(db: Path) -> int | None:
    """The pid the lock file names (None: no file; a released lock removes it)."""
    try:
        return int(json.loads((db / LOCK).read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def waiting_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if "waiting for" in line]


def read_database(db: Path) -> tuple[list[tuple[int, ...]], list[list[tuple[int, ...]]]]:
    """With TVM, independently of the code under test: each workload line's input shape, and
    the input shapes the records attached to it were measured with (a record stores its
    arguments as MetaSchedule measured them)."""
    from tvm.s_tir import meta_schedule as ms

    shapes = []
    for line in lines(db / WORKLOADS):
        workload = ms.database.Workload.from_json(json.loads(line))
        args = ms.arg_info.ArgInfo.from_entry_func(workload.mod, remove_preproc=True)
        shapes.append(tuple(args[0].as_json()[2]))
    attached: list[list[tuple[int, ...]]] = [[] for _ in shapes]
    for line in lines(db / RECORDS):
        index, record = json.loads(line)
        attached[index].append(tuple(record[3][0][2]))
    return shapes, attached


def assert_every_record_on_its_workload(db: Path, *sizes: int) -> None:
    shapes, attached = read_database(db)
    assert sorted(shapes) == sorted(shape(s) for s in sizes), f"workload lines: {shapes}"
    for wl_shape, records in zip(shapes, attached, strict=True):
        assert records, f"no records for the {wl_shape} workload"
        assert set(records) == {wl_shape}, f"records of {set(records)} on the {wl_shape} workload"


def db_check(db: Path, *flags: str) -> subprocess.CompletedProcess:
    return cli_here("db", "check", str(db), *flags)


def count(text: str, label: str) -> int:
    """The number after ``label:`` in `db check`'s report."""
    found = re.search(rf"^{re.escape(label)}: (\d+)", text, re.MULTILINE)
    assert found, f"no {label!r} in:\n{text}"
    return int(found.group(1))


def with_index(record_line: str, index: int) -> str:
    return re.sub(r"^\[\d+,", f"[{index},", record_line)


# ------------------------------------------------------------------------- two tunes at once


def _tune_while_another_runs(log_dir: Path, first_size: int, second_size: int,
                             trials: int) -> tuple[list[tuple[int, str, str]], bool]:
    """Start a tune, and a second one on the same --log-dir as soon as the first holds the
    database (or two seconds later, as in issue 9); return each run's (pid, stdout, stderr)
    and whether the first held the database when the second started."""
    db = log_dir / HOST_DB / MODEL
    with contextlib.ExitStack() as running:
        procs = [running.enter_context(running_cli(*tune_args(log_dir, first_size, trials)))]
        start = time.monotonic()
        wait_until(lambda: lock_holder(db) == procs[0].pid or time.monotonic() - start > 2,
                   120, "the first tune to hold the database", proc=procs[0])
        first_held = lock_holder(db) == procs[0].pid
        procs.append(running.enter_context(running_cli(*tune_args(log_dir, second_size,
                                                                  trials))))
        runs = [(proc.pid, *proc.communicate(timeout=600)) for proc in procs]
    for proc, (_pid, out, err) in zip(procs, runs, strict=True):
        assert proc.returncode == 0, f"exit {proc.returncode}\n{out}\n{err}"
    return runs, first_held


def assert_second_waited_for_the_first(runs: list[tuple[int, str, str]],
                                       first_held: bool) -> None:
    """The second run said once that it waited, naming the first's pid. (Should the machine
    be so slow that the first had not reached the lock in two seconds, either may wait.)"""
    (pid1, _out1, err1), (pid2, _out2, err2) = runs
    waits1, waits2 = waiting_lines(err1), waiting_lines(err2)
    if first_held:
        assert not waits1 and len(waits2) == 1 and f"pid {pid1}" in waits2[0], (err1, err2)
    else:
        assert len(waits1) + len(waits2) == 1, (err1, err2)
        assert (waits2 and f"pid {pid1}" in waits2[0]) or (waits1 and f"pid {pid2}" in waits1[0])


@pytest.fixture(scope="module")
def tuned_at_once(tmp_path_factory) -> tuple[Path, list[tuple[int, str, str]], bool]:
    """A tune at 14x14 and one at 16x16 started on the same --log-dir while the first runs:
    (database, each run's (pid, stdout, stderr), whether the first held it first)."""
    log_dir = tmp_path_factory.mktemp("at-once") / "logs"
    runs, first_held = _tune_while_another_runs(log_dir, 14, 16, trials=8)
    return log_dir / HOST_DB / MODEL, runs, first_held


@pytest.mark.slow
def test_two_tunes_at_two_sizes_keep_every_record_on_its_own_workload(tuned_at_once) -> None:
    """Issue 9's failure: before the lock, the second run numbered its workload from the file
    as it read it at start, so all its records pointed at the first run's workload."""
    db, runs, first_held = tuned_at_once
    assert_every_record_on_its_workload(db, 14, 16)
    assert_second_waited_for_the_first(runs, first_held)
    info = json.loads((db / INFO).read_text())
    assert sorted(info["input_shapes"]) == [list(shape(14)), list(shape(16))]
    result = db_check(db, "--deep")
    assert result.returncode == 0, output(result)
    assert count(result.stdout, "workloads") == 2
    assert count(result.stdout, "records") == record_count(db)
    assert not (db / LOCK).exists()  # a released lock leaves no file


def test_two_tunes_of_the_same_size_do_not_duplicate_workloads(tmp_path) -> None:
    log_dir = tmp_path / "logs"
    db = log_dir / HOST_DB / MODEL
    runs, first_held = _tune_while_another_runs(log_dir, 14, 14, trials=4)
    assert_every_record_on_its_workload(db, 14)
    assert len(lines(db / WORKLOADS)) == 1
    assert_second_waited_for_the_first(runs, first_held)
    news = sorted(tune_summary(out)[2] for _pid, out, _err in runs)
    assert news[0] == 0 < news[1], runs  # the one that waited found the budget spent
    assert json.loads((db / INFO).read_text())["input_shapes"] == [list(shape(14))]


# ---------------------------------------------------------------------------- the lock itself


def test_no_wait_exits_at_once_naming_the_holder(tmp_path) -> None:
    log_dir = tmp_path / "logs"
    db = log_dir / HOST_DB / MODEL
    with running_cli(*tune_args(log_dir, 14, 64)) as first:
        wait_until(lambda: lock_holder(db) == first.pid, 120, "the lock", proc=first)
        start = time.monotonic()
        result = run_cli(*tune_args(log_dir, 16, 4, "--no-wait"), timeout=120)
        elapsed = time.monotonic() - start
        assert_cli_error(result, f"pid {first.pid}", str(db), "--no-wait")
        assert elapsed < 30, f"took {elapsed:.0f} s"  # refused before importing the model
        assert not waiting_lines(result.stdout + result.stderr)
        assert first.poll() is None  # the holder is left alone


def test_a_killed_tune_leaves_no_blocking_lock(tmp_path) -> None:
    log_dir = tmp_path / "logs"
    db = log_dir / HOST_DB / MODEL
    # small rounds: the first records (and so the kill, mid-run) come early
    first = start_cli(*tune_args(log_dir, 14, 64, "--trials-per-round", "2"))
    try:
        wait_until(lambda: record_count(db) > 0, 300, "a first record", proc=first)
        assert lock_holder(db) == first.pid
        os.kill(first.pid, signal.SIGKILL)  # the main process only: its workers live on
        first.wait(timeout=30)
        assert lock_holder(db) == first.pid  # stale content: only a message may use it
        result = run_cli(*tune_args(log_dir, 14, 4, "--no-wait"), timeout=300)
        assert result.returncode == 0, output(result)
        assert not waiting_lines(result.stdout + result.stderr), output(result)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(first.pid, signal.SIGKILL)  # the orphaned workers
        first.communicate(timeout=30)
    assert lock_holder(db) is None


HOLD = """
import sys, time
from tvmc_attend.compiler.tuning.database import TuningDatabase
with TuningDatabase(sys.argv[1]).lock(wait=False):
    print("held", flush=True)
    time.sleep(120)
"""


def test_lock_in_process(tmp_path) -> None:
    """The lock from Python: a holder in another process is named, stale content is ignored,
    and a process may take the lock it holds again (tune_model, then tune_prepared)."""
    db = TuningDatabase(str(tmp_path / "db"))
    os.makedirs(db.path)
    Path(db.path, LOCK).write_text(json.dumps({"pid": 999999, "host": "gone"}))
    with db.lock(wait=False):  # a file naming a dead process does not block
        assert lock_holder(Path(db.path)) == os.getpid()
        with db.lock(wait=False):
            pass
        assert lock_holder(Path(db.path)) == os.getpid()
    assert not Path(db.path, LOCK).exists() and os.path.isdir(db.path)  # not ours to remove

    holder = subprocess.Popen([sys.executable, "-c", HOLD, db.path], stdout=subprocess.PIPE,
                              text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=f"pid {holder.pid}"), db.lock(wait=False):
            pass
        notes: list[str] = []
        start = time.monotonic()
        with pytest.raises(TimeoutError), db.lock(notify=notes.append, timeout_s=1.5):
            pass
        assert time.monotonic() - start >= 1.5
        assert len(notes) == 1 and f"pid {holder.pid}" in notes[0], notes
    finally:
        holder.kill()
        holder.wait()
    with db.lock(wait=False):
        pass


# ------------------------------------------------------------------- identity, db check, repair


# Two workloads (and their 92 records) of a database written before input shapes and the
# lowering were recorded (AttendNeXt on a znver3 host, Nov 2026).
LEGACY = REPO / "tests" / "data" / "legacy_db"


def test_identity_without_input_shapes_still_loads() -> None:
    info = TuningDatabase(str(LEGACY)).read_info()
    assert info.model == "attendnext" and info.input_shapes == [] and info.lowering == ""


def test_db_check_errors_are_one_line(tmp_path) -> None:
    assert_cli_error(db_check(tmp_path / "missing"), "no such directory", "missing")
    (tmp_path / "empty").mkdir()
    assert_cli_error(db_check(tmp_path / "empty"), "not a tvmc-attend tuning database")


@pytest.mark.parametrize("db", [LEGACY, REPO / "tuning_logs" / "host-avx512" / "attendnext"],
                         ids=["legacy", "committed"])
def test_db_check_of_a_real_database(db) -> None:
    """Real databases check clean, without being rewritten."""
    before = {name: (db / name).stat().st_mtime_ns for name in (WORKLOADS, RECORDS, INFO)}
    result = db_check(db)
    assert result.returncode == 0, output(result)
    assert count(result.stdout, "workloads") == len(lines(db / WORKLOADS))
    assert count(result.stdout, "records") == len(lines(db / RECORDS))
    assert before == {name: (db / name).stat().st_mtime_ns for name in before}
    assert not (db / LOCK).exists()


@pytest.fixture(scope="module")
def two_sizes(tuned_at_once) -> Path:
    """A sound database with a 14x14 and a 16x16 workload (the two tunes' above; the tests
    below damage copies of it)."""
    db = tuned_at_once[0]
    assert_every_record_on_its_workload(db, 14, 16)
    assert sorted(json.loads((db / INFO).read_text())["input_shapes"]) == [list(shape(14)),
                                                                            list(shape(16))]
    return db


def _copy(db: Path, root: Path) -> tuple[Path, Path]:
    log_dir = root / "logs"
    shutil.copytree(db, log_dir / HOST_DB / MODEL)
    return log_dir, log_dir / HOST_DB / MODEL


@pytest.mark.slow
def test_repair_a_damaged_database(two_sizes, tmp_path) -> None:
    """A torn last line, a duplicated workload line with records on both copies, a record
    with an out-of-range index: reported, left alone by compile, repaired by --repair."""
    log_dir, db = _copy(two_sizes, tmp_path)
    workloads, records = lines(db / WORKLOADS), lines(db / RECORDS)
    assert len(workloads) == 2 and len(records) >= 4
    on_14 = [line for line in records if line.startswith("[0,")]
    on_16 = [with_index(line, 2) for line in records if line.startswith("[1,")]
    # workloads: 14x14, 14x14 again (as a racing run appended it), 16x16
    (db / WORKLOADS).write_text("\n".join([workloads[0], workloads[0], workloads[1]]) + "\n")
    damaged = [
        *on_14[:-1],
        with_index(on_14[-1], 1),  # on the duplicate: remapped to workload 0
        *on_16,  # renumbered 2 -> 1 when the duplicate goes
        with_index(on_14[0], 7),  # no workload 7: dropped
    ]
    torn = on_16[0][: len(on_16[0]) // 2]  # a write cut short (no newline)
    (db / RECORDS).write_text("\n".join(damaged) + "\n" + torn)
    snapshot = {name: (db / name).read_bytes() for name in (WORKLOADS, RECORDS)}

    result = db_check(db)
    assert result.returncode == 1, output(result)
    text = result.stdout
    assert count(text, "torn lines") == 1, text
    assert count(text, "duplicate workloads") == 1, text
    assert "1 record remapped" in text, text
    assert count(text, "out-of-range records") == 1, text
    assert count(text, "mis-attached records") == 0, text
    assert count(text, "workloads") == 2 and count(text, "records") == len(damaged) - 1, text
    assert "--repair" in text

    # compile reads without the lock: it must use the good lines and rewrite nothing
    bundle = tmp_path / "before-repair"
    result = cli_here("compile", "--model", MODEL, "--input-size", 14, "--target", "host",
                     "--log-dir", log_dir, "-o", bundle)
    assert result.returncode == 0, output(result)
    assert f"tuned, {len(damaged) - 1} records" in result.stdout, output(result)
    assert "db check --repair" in result.stderr, output(result)
    assert snapshot == {name: (db / name).read_bytes() for name in snapshot}

    result = db_check(db, "--repair", "--deep")
    assert result.returncode == 0, output(result)
    assert "repaired" in result.stdout, output(result)
    assert len(lines(db / WORKLOADS)) == 2
    assert record_count(db) == len(damaged) - 1
    assert_every_record_on_its_workload(db, 14, 16)

    result = db_check(db)
    assert result.returncode == 0, output(result)
    assert count(result.stdout, "torn lines") == count(result.stdout, "out-of-range records") == 0

    bundle = tmp_path / "after-repair"
    result = cli_here("compile", "--model", MODEL, "--input-size", 14, "--target", "host",
                     "--log-dir", log_dir, "-o", bundle)
    assert result.returncode == 0, output(result)
    assert f"tuned, {len(damaged) - 1} records" in result.stdout, output(result)
    assert "warning" not in result.stderr.lower(), output(result)


@pytest.mark.slow
def test_records_attached_to_the_wrong_workload(two_sizes, tmp_path) -> None:
    """What the code before the lock wrote (every record on workload 0): found by db check
    (the records' argument shapes are not their workload's), and by --deep; the next tune
    drops them under its lock."""
    log_dir, db = _copy(two_sizes, tmp_path)
    records = lines(db / RECORDS)
    wrong = sum(1 for line in records if line.startswith("[1,"))
    (db / RECORDS).write_text("".join(with_index(line, 0) + "\n" for line in records))
    for flags in ((), ("--deep",)):
        result = db_check(db, *flags)
        assert result.returncode == 1, output(result)
        assert count(result.stdout, "mis-attached records") == wrong, output(result)
    result = run_cli(*tune_args(log_dir, 14), timeout=600)
    assert result.returncode == 0, output(result)
    assert f"{wrong} mis-attached" in result.stderr, output(result)
    shapes, attached = read_database(db)
    assert [len(a) for a in attached] == [len(records) - wrong, 0], (shapes, attached)


def test_deep_check_finds_traces_made_for_another_workload(tmp_path) -> None:
    """Two workloads of a real AttendNeXt database with the same argument shapes (two
    different operators): records moved from one to the other are caught only by replaying
    their traces (--deep), and --repair --deep drops them."""
    source = LEGACY
    workloads, records = lines(source / WORKLOADS), lines(source / RECORDS)
    first, second = 0, 1  # same arguments: [1, 84, 28, 28] -> [1, 84, 14, 14]
    assert json.loads(workloads[first])[1] != json.loads(workloads[second])[1]
    mine = [line for line in records if line.startswith(f"[{first},")]
    theirs = [line for line in records if line.startswith(f"[{second},")]
    assert mine and theirs
    db = tmp_path / "db"
    db.mkdir()
    shutil.copy(source / INFO, db / INFO)
    (db / WORKLOADS).write_text(workloads[first] + "\n" + workloads[second] + "\n")
    moved = [with_index(line, 1) for line in mine[:10]]  # made for workload 0, now on 1
    (db / RECORDS).write_text("".join(line + "\n" for line in
                                      [*(with_index(r, 1) for r in theirs[:10]), *moved]))
    result = db_check(db)
    assert result.returncode == 0, output(result)  # the shapes agree: only a replay can tell
    result = db_check(db, "--deep")
    assert result.returncode == 1, output(result)
    assert count(result.stdout, "unreplayable records") == len(moved), output(result)
    assert count(result.stdout, "mis-attached records") == 0, output(result)
    result = db_check(db, "--repair", "--deep")
    assert result.returncode == 0 and "repaired" in result.stdout, output(result)
    assert lines(db / RECORDS) == [with_index(r, 1) for r in theirs[:10]]
    assert db_check(db, "--deep").returncode == 0


def test_a_tune_that_fails_early_leaves_no_directory(tmp_path) -> None:
    """The lock creates the database directory; a run that stops before writing anything
    (here: a misspelt model) removes it again."""
    result = run_cli("tune", "--model", "nosuch", "--log-dir", tmp_path / "logs")
    assert_cli_error(result, "unknown model 'nosuch'")
    assert not (tmp_path / "logs").exists()
