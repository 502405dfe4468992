"""Stopping a tuning run cleanly: Ctrl-C or a lost device ends it between batches.

An exception raised inside MetaSchedule's C++ loop comes back through the FFI as a bare
RuntimeError, so the reason travels in this flag instead: the first Ctrl-C only sets it (the
builder and the measure callback check it and unwind), a second Ctrl-C interrupts at once.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager


class StopRequested(Exception):
    """Raised from our callbacks to unwind MetaSchedule's loop; the reason is in the flag."""


class StopFlag:
    def __init__(self) -> None:
        self.reason: str | None = None

    def request(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason

    def check(self) -> None:
        if self.reason is not None:
            raise StopRequested(self.reason)

    @contextmanager
    def on_sigint(self) -> Iterator[StopFlag]:
        """While active, the first Ctrl-C requests a stop instead of raising."""
        def handler(_signum, _frame) -> None:
            if self.reason is not None:
                raise KeyboardInterrupt
            self.request("interrupted (Ctrl-C)")

        previous = signal.signal(signal.SIGINT, handler)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)
