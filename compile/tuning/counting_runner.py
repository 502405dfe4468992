"""A MetaSchedule runner that counts candidates on an emulated core instead of timing them.

MetaSchedule ranks candidates by ``run_secs``; this runner gives it the counted cost (see
``device.counting``) in a unit of its own, one counted cycle per nanosecond (``CYCLE_SECS``),
so a database's "seconds" are counted cycles x 1e-9 and its "milliseconds" Mcycles. They are
never a latency: ``tuning.json`` says ``measured_by: counted``, and reports print Mcycles.
"""

from __future__ import annotations

from typing import Any

from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.runner import PyRunner

from tvmc_attend.device.counting import CountingCore, CountingError
from tvmc_attend.targets import Board

from .replay import DoneFuture

CYCLE_SECS = 1e-9  # the unit counted cycles are stored in


@derived_object
class CountingRunner(PyRunner):
    """Counts each candidate's call on one emulated core of the board, one after another."""

    def __init__(self, board: Board) -> None:
        super().__init__()
        self.board = board
        self.core = CountingCore.for_board(board)
        self.core.start()

    def run(self, runner_inputs: list) -> list:
        return [self._count(inp) for inp in runner_inputs]

    def _count(self, runner_input: Any) -> DoneFuture:
        args = [(list(info.shape), str(info.dtype)) for info in runner_input.args_info]
        try:
            counts = self.core.count(runner_input.artifact_path, args)
        except CountingError as err:
            return DoneFuture(None, f"counting failed: {err}")
        return DoneFuture([self.core.cost.cycles(counts) * CYCLE_SECS])

    def close(self) -> None:
        self.core.__exit__(None, None, None)
