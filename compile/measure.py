"""Where tuning candidates are built and measured: this host, or boards over TVM RPC.

Candidates are always built on this machine (cross-compiled to .so for boards); a board needs
only the TVM runtime. With a tracker, every free device registered under the key measures in
parallel: the tracker is the device farm.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback
from tvmc_attend.targets import Board

from .builder import SharedLibraryBuilder

# Errors that mean the device, not the candidate, failed.
_DEVICE_ERRORS = ("RPC", "Timeout", "onnect", "ocket", "Broken pipe", "EOF")


class TuningStopped(Exception):
    """Raised inside MetaSchedule's loop to end a run early, keeping its records."""

    MARKER = "[tvmc-attend stop]"

    def __init__(self, reason: str) -> None:
        super().__init__(f"{self.MARKER} {reason}")
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


def _direct_session(host: str, port: int, _config: Any) -> Any:
    """Session factory for --rpc-host (no tracker): MetaSchedule pickles it into its workers."""
    from tvm import rpc

    return rpc.connect(host, port, session_timeout=600)


@dataclass
class MeasureEnvironment:
    builder: Any
    runner: Any
    description: str
    remote: bool

    def progress_callback(self, states: list, result: Any,
                          on_progress: Callable | None, start: float) -> Any:
        return ProgressCallback(states, result, on_progress, start, self.remote)

    def close(self) -> None:
        self.builder.close()


def _evaluator_config(board: Board) -> Any:
    if board.is_remote:
        # Boards (and above all emulated ones) are slow: one timed batch per candidate.
        return ms.runner.EvaluatorConfig(number=1, repeat=3, min_repeat_ms=0,
                                         enable_cpu_cache_flush=False)
    return ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=50,
                                     enable_cpu_cache_flush=False)


def make_measure_environment(board: Board, remote: Any = None) -> MeasureEnvironment:
    """Builder and runner for ``board``; ``remote`` is a device.RemoteSpec for boards."""
    if remote is None:
        builder = SharedLibraryBuilder(cross_compiler=None)
        runner = ms.runner.LocalRunner(evaluator_config=_evaluator_config(board), timeout_sec=60)
        return MeasureEnvironment(builder, runner, "local", remote=False)

    from tvmc_attend.device import connect, count_devices

    connect(remote)  # fail fast, with the device layer's one-line advice, before any work
    workers = count_devices(remote)
    if remote.tracker_host:
        config = ms.runner.RPCConfig(tracker_host=remote.tracker_host,
                                     tracker_port=remote.tracker_port, tracker_key=remote.key,
                                     session_timeout_sec=600)
        create_session = None
    else:
        # RPCRunner only knows trackers; the config is unused by the direct factory.
        config = ms.runner.RPCConfig(tracker_host="unused", tracker_port=0, tracker_key="unused",
                                     session_timeout_sec=600)
        create_session = functools.partial(_direct_session, remote.host, remote.port)
    runner = ms.runner.RPCRunner(rpc_config=config, evaluator_config=_evaluator_config(board),
                                 f_create_session=create_session, max_workers=workers)
    builder = SharedLibraryBuilder(cross_compiler=board.cross_compiler)
    return MeasureEnvironment(builder, runner, remote.describe(), remote=True)


@derived_object
class ProgressCallback(PyMeasureCallback):
    """Updates task states after each measured batch and stops the run if the device is lost."""

    def __init__(self, states: list, result: Any, on_progress: Callable | None,
                 start: float, remote: bool) -> None:
        super().__init__()
        self.states = states
        self.result = result
        self.on_progress = on_progress
        self.start = start
        self.remote = remote

    def apply(self, task_scheduler: Any, task_id: int, measure_candidates: list,
              builder_results: list, runner_results: list) -> None:
        state = self.states[task_id]
        state.measured += len(measure_candidates)
        device_errors = 0
        for run in runner_results:
            if run.error_msg is None and run.run_secs:
                secs = [float(s) for s in run.run_secs]
                ms_value = 1e3 * sum(secs) / len(secs)
                if state.best_ms is None or ms_value < state.best_ms:
                    state.best_ms = ms_value
            else:
                state.errors += 1
                if run.error_msg and any(e in run.error_msg for e in _DEVICE_ERRORS):
                    device_errors += 1
        self.result.new_trials = sum(s.measured for s in self.result.tasks)
        self.result.seconds = time.perf_counter() - self.start
        if self.on_progress:
            self.on_progress(self.result)
        built = sum(1 for b in builder_results if b.error_msg is None)
        if self.remote and built and device_errors == built:
            raise TuningStopped(
                f"lost the RPC device after {self.result.new_trials} trials this run (every "
                "candidate of the last batch failed to reach it); all records measured so far "
                "are kept: reconnect the device and rerun the same command to resume"
            )
