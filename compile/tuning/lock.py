"""The write lock of a tuning database: one writer at a time, released however it dies.

MetaSchedule numbers the workloads it appends from the file as it read it at start, so two
writers at once attach records to each other's workloads: a writer (``tune``, a repair) holds
the directory's lock for its whole run. The lock is an flock on ``.lock`` in the directory; the
file also names the holder (pid, host, start, command), for messages only.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from tvmc_attend.errors import UserError
from tvmc_attend.timestamps import utc_timestamp

LOCK_FILE = ".lock"


class DatabaseLock:
    """The lock of the database directory ``directory`` (``path``: its lock file)."""

    def __init__(self, directory: str) -> None:
        self.directory = os.path.abspath(directory)
        self.path = os.path.join(self.directory, LOCK_FILE)

    @contextlib.contextmanager
    def hold(self, wait: bool = True, notify: Callable[[str], None] | None = None,
             poll_s: float = 0.5, timeout_s: float | None = None) -> Iterator[None]:
        """Hold the database's write lock: an flock on ``.lock`` in its directory (created if
        needed), which the kernel releases when the holder dies, however it dies. The file
        names the holder (pid, host, start, command) for messages, and goes on release.

        Another holder: with ``wait``, say so once (``notify``, default stderr) naming its
        pid, and poll until it is gone (``TimeoutError`` after ``timeout_s``); without, a
        ``UserError`` naming it. A process may take a lock it holds again."""
        key = os.path.realpath(self.directory)
        if key in _HELD:
            _HELD[key] += 1
            try:
                yield
            finally:
                _HELD[key] -= 1
            return
        created = _missing_dirs(self.directory)
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
                os.unlink(self.path)
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
                    if _names(self.path, fd):
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
                holder = _read_holder(self.path)
                waited = time.monotonic() - start
                if not wait:
                    # a moment for a holder to write its name (or a `db check` probe to end)
                    if waited < 0.5:
                        time.sleep(0.1)
                        continue
                    raise UserError(f"tuning database {self.directory} is in use by "
                                    f"{_describe(holder)}; wait for it to end, or run "
                                    "without --no-wait to wait for it")
                pid = holder.get("pid") if holder else None
                if pid not in announced and (holder or waited >= 2):
                    announced.add(pid)
                    notify(f"waiting for tuning database {self.directory}: in use by "
                           f"{_describe(holder)} (continuing when it ends)")
                if timeout_s is not None and waited >= timeout_s:
                    raise TimeoutError(f"{self.directory} still in use after {timeout_s:g} s")
                time.sleep(poll_s)
        except BaseException as exc:
            if fd >= 0:
                os.close(fd)
            if isinstance(exc, KeyboardInterrupt):  # Ctrl-C while waiting: no traceback
                err = UserError(f"interrupted while waiting for tuning database {self.directory}")
                err.exit_code = 130
                raise err from None
            raise
        try:
            os.ftruncate(fd, 0)
            os.write(fd, (json.dumps({
                "pid": os.getpid(), "host": socket.gethostname(), "started": utc_timestamp(),
                "command": " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]]),
            }) + "\n").encode())
        except OSError:
            pass  # the name is for messages only
        return fd

    def _open_lock_file(self) -> int:
        while True:
            try:
                os.makedirs(self.directory, exist_ok=True)
                return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except FileNotFoundError:
                continue  # the directory, empty, was removed by a holder releasing it
            except OSError as err:
                raise UserError(f"cannot lock tuning database {self.directory}: "
                                f"{err.strerror}") from None

    def in_use_by(self) -> str | None:
        """Who holds the lock (for a report), or None when nobody does. Takes nothing: a
        shared flock tried and dropped at once (a waiting tune just polls again)."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _describe(_read_holder(self.path))
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
