"""How many threads TVM runs, set before its pool exists, and how many were really busy.

TVM's CPU thread pool is sized once, at its first use, from ``TVM_NUM_THREADS``; unset, on
x86 it takes half the logical CPUs (``threading_backend.cc``, ``MaxConcurrency``): one worker
on a 2-vCPU machine, and ``runtime.config_threadpool`` cannot raise it later. So every process
that runs TVM code (the CLI, MetaSchedule's runner workers, which inherit the environment, the
RPC server) sets the variable before importing TVM, respecting a value the user set.

What a report states is not what was asked for but what ran: ``ThreadUsage`` reads each
thread's CPU time from ``/proc`` around a timed section and counts the threads that were busy.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from tvmc_attend.attend_runtime import THREADS_ENV, size_thread_pool

__all__ = ["THREADS_ENV", "ThreadUsage", "available_cores", "size_thread_pool", "tvm_threads"]


def available_cores() -> int:
    """CPUs this process may run on (its affinity mask, not the machine's count)."""
    return len(os.sched_getaffinity(0))


def tvm_threads() -> int:
    """The thread count TVM's pool has (or will have) in this process: ``TVM_NUM_THREADS``
    when set to a positive number, else the cores available."""
    try:
        value = int(os.environ.get(THREADS_ENV, ""))
    except ValueError:
        value = 0
    return value if value > 0 else available_cores()


# A thread counts as busy when it ran for at least this share of the section's wall time: a
# worker that computes in every parallel kernel is far above it, the Python thread that only
# waits on TVM (or a runtime's idle pool) far below.
BUSY_SHARE = 0.25


def _thread_cpu_ns() -> dict[int, int]:
    """CPU time of every thread of this process, in ns, by thread id (``schedstat``, ns
    resolution; ``stat`` clock ticks where schedstat is missing)."""
    times: dict[int, int] = {}
    tick_ns = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    for tid in os.listdir("/proc/self/task"):
        base = f"/proc/self/task/{tid}"
        try:
            with open(f"{base}/schedstat") as f:
                times[int(tid)] = int(f.read().split()[0])
            continue
        except (OSError, ValueError, IndexError):
            pass
        try:
            with open(f"{base}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            times[int(tid)] = (int(fields[11]) + int(fields[12])) * tick_ns  # utime + stime
        except (OSError, ValueError, IndexError):
            continue  # the thread ended while we read
    return times


@dataclass
class ThreadUsage:
    """Per-thread CPU time summed over timed sections (``with usage.section(): ...``), and
    the wall time of those sections: ``busy`` is how many threads really worked."""

    wall_ns: int = 0
    cpu_ns: dict[int, int] = field(default_factory=dict)

    def section(self) -> _Section:
        return _Section(self)

    def add(self, before: dict[int, int], after: dict[int, int], wall_ns: int) -> None:
        self.wall_ns += wall_ns
        for tid, ns in after.items():
            self.cpu_ns[tid] = self.cpu_ns.get(tid, 0) + ns - before.get(tid, 0)

    @property
    def busy(self) -> int:
        """Threads that ran at least ``BUSY_SHARE`` of the timed wall time."""
        if self.wall_ns <= 0:
            return 0
        return sum(1 for ns in self.cpu_ns.values() if ns >= BUSY_SHARE * self.wall_ns)

    @property
    def cpu_per_wall(self) -> float:
        """All threads' CPU time over wall time: cores kept busy on average."""
        return sum(self.cpu_ns.values()) / self.wall_ns if self.wall_ns > 0 else 0.0


class _Section:
    def __init__(self, usage: ThreadUsage) -> None:
        self.usage = usage

    def __enter__(self) -> None:
        self.before = _thread_cpu_ns()
        self.start = time.perf_counter_ns()

    def __exit__(self, *_exc: object) -> None:
        wall = time.perf_counter_ns() - self.start
        self.usage.add(self.before, _thread_cpu_ns(), wall)

