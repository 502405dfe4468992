"""What every timing report shares: where and when it ran, and how it is written (JSON, PNG).

``RunInfo`` heads each report's JSON with the same keys (target, device, emulated, threads,
date, machine); ``write_json`` and ``plot_to`` write files atomically, so an interrupted run
never leaves half a report.
"""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from tvmc_attend.device.choice import DeviceChoice
from tvmc_attend.files import save_figure_atomic, write_json_atomic
from tvmc_attend.targets import Board
from tvmc_attend.timestamps import utc_timestamp


def machine_info() -> dict[str, Any]:
    """The machine the numbers were taken on (for a board: the machine that drove it)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"hostname": platform.node(), "cpu": cpu, "cores": os.cpu_count(),
            "platform": platform.platform(), "python": platform.python_version()}


@dataclass
class RunInfo:
    """Where and when a report's numbers were taken."""

    board: str
    threads: int
    emulated: bool = False
    device: str = "local"
    date: str = field(default_factory=utc_timestamp)

    @classmethod
    def on(cls, board: Board, device: DeviceChoice) -> RunInfo:
        """Numbers taken now for ``board``, on ``device``."""
        return cls(board=board.name, threads=board.thread_count(), emulated=device.emulated,
                   device=device.description)

    @property
    def label(self) -> str:
        """What every emulated number carries in tables and plots."""
        return " (emulated)" if self.emulated else ""

    def as_json(self) -> dict[str, Any]:
        return {"target": self.board, "device": self.device, "emulated": self.emulated,
                "threads": self.threads, "date": self.date, "machine": machine_info()}


class Report(Protocol):
    def as_json(self) -> dict[str, Any]: ...


def write_json(report: Report, path: str) -> None:
    """Write a report (benchmark, op benchmark, compare, explore) as JSON, atomically."""
    write_json_atomic(path, report.as_json())


@contextlib.contextmanager
def plot_to(path: str, *args: Any, **kwargs: Any) -> Iterator[tuple[Any, Any]]:
    """``(figure, axes)`` of ``plt.subplots(*args, **kwargs)`` to draw on; when the block ends
    the figure is laid out and saved to ``path`` (PNG, atomically), then closed."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed (CI, boards, ssh)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(*args, **kwargs)
    try:
        yield fig, axes
        fig.tight_layout()
        save_figure_atomic(lambda tmp: fig.savefig(tmp, dpi=120), path)
    finally:
        plt.close(fig)
