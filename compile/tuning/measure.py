"""Where tuning candidates are built and measured: this host, boards over TVM RPC, or an
emulated core that counts instead of timing (``counting_runner``).

Candidates are always built on this machine (cross-compiled to .so for boards); a board needs
only the TVM runtime. With a tracker, every free device registered under the key measures in
parallel: the tracker is the device farm.
"""

from __future__ import annotations

import functools
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

from tvmc_attend.device.rpc import RemoteSpec
from tvmc_attend.targets import Board

from .builder import SharedLibraryBuilder
from .replay import MeasuredCandidates, ReplayingRunner
from .stop import StopFlag

# Errors that mean the device, not the candidate, failed.
_DEVICE_ERRORS = ("RPC", "Timeout", "onnect", "ocket", "Broken pipe", "EOF")
SESSION_TIMEOUT_S = 600


def _direct_session(host: str, port: int, _config: Any) -> Any:
    """Session factory for --rpc-host (no tracker): MetaSchedule pickles it into its workers."""
    from tvm import rpc

    return rpc.connect(host, port, session_timeout=SESSION_TIMEOUT_S)


def _tracker_session(tracker_host: str, tracker_port: int, key: str, _config: Any) -> Any:
    """Session factory for --rpc-tracker. MetaSchedule's own asks the tracker with no timeout
    (its worker pool has none either): once the device under the key is gone, the tracker
    queues the request forever and tuning hangs. This one fails at once when no device is
    registered under the key, and after SESSION_TIMEOUT_S when all are busy."""
    from tvmc_attend.device import RemoteSpec, connect

    spec = RemoteSpec(tracker_host=tracker_host, tracker_port=tracker_port, key=key)
    return connect(spec, timeout_s=SESSION_TIMEOUT_S, session_timeout_s=SESSION_TIMEOUT_S)


@dataclass
class MeasureEnvironment:
    """The builder and runner MetaSchedule measures candidates with, and what they share."""

    builder: Any
    runner: Any
    remote: bool
    stop: StopFlag
    measured: MeasuredCandidates
    counting: Any = None  # the CountingRunner when candidates are counted, to close

    def progress_callback(self, states: list, result: Any,
                          on_progress: Callable | None, start: float) -> Any:
        return ProgressCallback(states, result, on_progress, start, self.remote, self.stop,
                                self.measured)

    def close(self) -> None:
        self.builder.close()
        if self.counting is not None:
            self.counting.close()


def _evaluator_config(board: Board) -> Any:
    if board.is_remote:
        # Boards (and above all emulated ones) are slow: one timed batch per candidate.
        return ms.runner.EvaluatorConfig(number=1, repeat=3, min_repeat_ms=0,
                                         enable_cpu_cache_flush=False)
    return ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=50,
                                     enable_cpu_cache_flush=False)


def make_measure_environment(board: Board, remote: RemoteSpec | None,
                             measured: MeasuredCandidates, stop: StopFlag,
                             workers: int = 1, counted: bool = False) -> MeasureEnvironment:
    """Builder and runner for ``board``: on this host, on the board ``remote`` reaches
    (``workers`` devices measuring in parallel), or (``counted``) counted on an emulated core
    of the board."""
    if counted:
        from .counting_runner import CountingRunner

        counting = CountingRunner(board)
        builder = SharedLibraryBuilder(cross_compiler=board.cross_compiler, measured=measured,
                                       stop=stop)
        return MeasureEnvironment(builder, ReplayingRunner(counting, measured), remote=False,
                                  stop=stop, measured=measured, counting=counting)
    if remote is None:
        inner = ms.runner.LocalRunner(evaluator_config=_evaluator_config(board), timeout_sec=60)
        builder = SharedLibraryBuilder(cross_compiler=None, measured=measured, stop=stop)
        return MeasureEnvironment(builder, ReplayingRunner(inner, measured), remote=False,
                                  stop=stop, measured=measured)
    if remote.tracker_host:
        config = ms.runner.RPCConfig(tracker_host=remote.tracker_host,
                                     tracker_port=remote.tracker_port, tracker_key=remote.key,
                                     session_timeout_sec=SESSION_TIMEOUT_S)
        create_session = functools.partial(_tracker_session, remote.tracker_host,
                                           remote.tracker_port, remote.key)
    else:
        # RPCRunner only knows trackers; the config is unused by the direct factory.
        config = ms.runner.RPCConfig(tracker_host="unused", tracker_port=0, tracker_key="unused",
                                     session_timeout_sec=SESSION_TIMEOUT_S)
        create_session = functools.partial(_direct_session, remote.host, remote.port)
    inner = ms.runner.RPCRunner(rpc_config=config, evaluator_config=_evaluator_config(board),
                                f_create_session=create_session, max_workers=workers)
    builder = SharedLibraryBuilder(cross_compiler=board.cross_compiler, measured=measured,
                                   stop=stop)
    return MeasureEnvironment(builder, ReplayingRunner(inner, measured), remote=True, stop=stop,
                              measured=measured)


def measure_schedules(candidates: list[tuple[Any, Any]], target: Any, env: MeasureEnvironment,
                      database: Any) -> int:
    """Build, run and commit ``candidates`` ((task workload, ``tvm.s_tir.Schedule`` of it);
    schedules chosen outside the search: default schedules, a seed database's best) with the
    run's own builder and runner, before the search. Returns how many were committed; one
    that fails to run is recorded as failed, as MetaSchedule records any candidate (one that
    fails to build is left out: no build could use it)."""
    fresh = [(mod, sch) for mod, sch in candidates if not env.measured.knows(sch.mod)]
    if not fresh:
        return 0
    builds = env.builder.build([ms.builder.BuilderInput(sch.mod, target) for _, sch in fresh])
    runnable = [(mod, sch, b) for (mod, sch), b in zip(fresh, builds, strict=True)
                if b.error_msg is None]
    args = [ms.arg_info.ArgInfo.from_prim_func(mod["main"]) for mod, _, _ in runnable]
    # every target here is a CPU ("cpu": what MetaSchedule's task scheduler passes for llvm)
    futures = env.runner.run([ms.runner.RunnerInput(b.artifact_path, "cpu", a)
                              for (_, _, b), a in zip(runnable, args, strict=True)])
    for (mod, sch, build), arg, future in zip(runnable, args, futures, strict=True):
        result = future.result()
        ok = result.error_msg is None and result.run_secs
        secs = [float(s) for s in result.run_secs] if ok else [1e10]
        database.commit_tuning_record(ms.database.TuningRecord(
            sch.trace, database.commit_workload(mod), secs, target, arg))
        env.measured.add(sch.mod, secs)
        if build.artifact_path and not env.measured.is_replay(build.artifact_path):
            shutil.rmtree(os.path.dirname(build.artifact_path), ignore_errors=True)
        env.stop.check()
    return len(runnable)


@derived_object
class ProgressCallback(PyMeasureCallback):
    """Updates task states after each measured batch and stops the run if the device is lost."""

    def __init__(self, states: list, result: Any, on_progress: Callable | None,
                 start: float, remote: bool, stop: StopFlag,
                 measured: MeasuredCandidates) -> None:
        super().__init__()
        self.stop = stop
        self.measured = measured
        self.states = states
        self.result = result
        self.on_progress = on_progress
        self.start = start
        self.remote = remote

    def apply(self, task_scheduler: Any, task_id: int, measure_candidates: list,
              builder_results: list, runner_results: list) -> None:
        state = self.states[task_id]
        state.batches += 1
        replays = sum(1 for b in builder_results if self.measured.is_replay(b.artifact_path))
        state.replayed += replays
        state.measured += len(measure_candidates) - replays
        device_errors = 0
        for run in runner_results:
            if run.error_msg is None and run.run_secs:
                secs = [float(s) for s in run.run_secs]
                cost = 1e3 * sum(secs) / len(secs)  # ms, or Mcycles when counted
                if state.best is None or cost < state.best:
                    state.best = cost
            else:
                state.errors += 1
                if run.error_msg and any(e in run.error_msg for e in _DEVICE_ERRORS):
                    device_errors += 1
        self.result.new_trials = sum(s.measured for s in self.result.tasks)
        self.result.seconds = time.perf_counter() - self.start
        if self.on_progress:
            self.on_progress(self.result)
        built = sum(1 for b in builder_results if b.error_msg is None) - replays
        if self.remote and built and device_errors == built:
            self.stop.request(
                f"lost the RPC device after {self.result.new_trials} trials this run (every "
                "candidate of the last batch failed to reach it); reconnect the device"
            )
        self.stop.check()
