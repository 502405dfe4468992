"""Tune a model with MetaSchedule (evolutionary search + XGBoost cost model), resumably.

Resume works per task: the database already holds N records for a task, so that task gets
``trials_per_task - N`` more trials (none when its budget is spent), and a rerun with the same
budget measures nothing. Every measured candidate is appended to the database as it arrives,
so Ctrl-C or a lost device keeps every record measured so far.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tvmc_attend.targets import Board

from tvmc_attend.errors import UserError

from .build import fuse_for_tuning
from .database import TuningDatabase, count_records
from .frontend import ModelSource
from .measure import MeasureEnvironment, TuningStopped, make_measure_environment
from .pipeline import prepare_model

MS_LOGGER = "tvm.s_tir.meta_schedule"


@dataclass
class TuneOptions:
    trials: int = 200
    trials_per_task: int | None = None
    trials_per_round: int = 16
    seed: int = 0
    log_dir: str | None = None


@dataclass
class TaskState:
    """Live state of one tuning task (shown by the progress display, returned at the end)."""

    name: str
    weight: float
    budget: int
    previous: int
    measured: int = 0
    best_ms: float | None = None
    errors: int = 0

    @property
    def done(self) -> int:
        return self.previous + self.measured


@dataclass
class TuneResult:
    model: str
    board: str
    database: str
    tasks: list[TaskState]
    new_trials: int = 0
    seconds: float = 0.0
    stopped: str | None = None  # why the run ended early (Ctrl-C, lost device), if it did
    emulated: bool = False
    device: str = "local"

    @property
    def trials_per_minute(self) -> float:
        return 60.0 * self.new_trials / self.seconds if self.seconds > 0 else 0.0

    @property
    def estimated_ms(self) -> float | None:
        """Sum over tasks of weight x best latency; None until every task has one."""
        if not self.tasks or any(t.best_ms is None for t in self.tasks):
            return None
        return sum(t.weight * t.best_ms for t in self.tasks)


ProgressHook = Callable[[TuneResult], None]


def _quiet_metaschedule(log_dir: str) -> None:
    """MetaSchedule's own logs go to files under ``log_dir``, not to the terminal."""
    os.makedirs(log_dir, exist_ok=True)
    logger = logging.getLogger(MS_LOGGER)
    # create_loggers() gives its console handler the level of this logger.
    logger.setLevel(logging.CRITICAL)


def _best_ms(database: Any, task_mod: Any) -> float | None:
    if not database.has_workload(task_mod):
        return None
    records = database.get_top_k(database.commit_workload(task_mod), 1)
    if not records or not records[0].run_secs:
        return None
    secs = [float(s) for s in records[0].run_secs]
    return 1e3 * sum(secs) / len(secs)


def tune_model(source: ModelSource, board: Board, options: TuneOptions,
               remote: Any = None, emulated: bool = False,
               on_progress: ProgressHook | None = None) -> TuneResult:
    """Extract the model's tasks and tune them for ``board``; measure locally or over RPC."""
    from tvm.s_tir import meta_schedule as ms

    if board.is_remote and remote is None:
        raise UserError(
            f"target {board.name} is a board: tuning needs one to measure on. Pass "
            "--rpc-tracker HOST:PORT --rpc-key KEY or --rpc-host HOST:PORT (start an emulated "
            f"board with `tvmc-attend device emulate --board {board.name}`), or use --emulate"
        )
    measure_env = make_measure_environment(board, remote)  # fails fast without a device
    prepared = prepare_model(source)
    target = board.tvm_target()
    extracted = ms.relax_integration.extract_tasks(fuse_for_tuning(prepared.mod, board), target)
    if not extracted:
        raise UserError(f"{source.name} has no tunable operators")
    db_dir = TuningDatabase.for_model(options.log_dir, board, prepared.imported.name)
    database = db_dir.open(board, prepared.imported.name, create=True, emulated=emulated,
                           device=measure_env.description)
    task_mods = [task.dispatched[0] for task in extracted]
    previous = count_records(database, task_mods)
    per_task = options.trials_per_task or max(
        options.trials_per_round, math.ceil(options.trials / len(extracted)))
    states = [
        TaskState(name=task.task_name, weight=float(task.weight), budget=per_task,
                  previous=min(prev, per_task), best_ms=_best_ms(database, mod))
        for task, mod, prev in zip(extracted, task_mods, previous, strict=True)
    ]
    result = TuneResult(model=prepared.imported.name, board=board.name, database=db_dir.path,
                        tasks=states, emulated=emulated, device=measure_env.description)
    global_budget = max(0, options.trials - sum(s.previous for s in states))
    pending = [i for i, s in enumerate(states) if s.done < s.budget]
    if not pending or global_budget == 0:
        if on_progress:
            on_progress(result)
        measure_env.close()
        return result

    log_dir = os.path.join(db_dir.path, "logs")
    _quiet_metaschedule(log_dir)
    start = time.perf_counter()
    try:
        # Tasks with the same remaining budget are tuned together by one gradient scheduler;
        # after an interrupted run there are at most a few such groups.
        for remaining, group in _group_by_remaining(states, pending):
            group_budget = min(global_budget, remaining * len(group))
            if group_budget <= 0:
                break
            contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
                [extracted[i] for i in group], work_dir=db_dir.path,
                strategy="evolutionary", num_threads=board.thread_count()
                if not board.is_remote else len(os.sched_getaffinity(0)),
                seed=options.seed)
            callback = measure_env.progress_callback(
                [states[i] for i in group], result, on_progress, start)
            ms.tune_tasks(
                tasks=contexts, task_weights=weights, work_dir=db_dir.path,
                max_trials_global=group_budget, max_trials_per_task=remaining,
                num_trials_per_iter=options.trials_per_round,
                builder=measure_env.builder, runner=measure_env.runner, database=database,
                cost_model=ms.cost_model.XGBModel(
                    extractor=ms.feature_extractor.PerStoreFeature(), adaptive_training=True,
                    num_tuning_cores=len(os.sched_getaffinity(0))),
                measure_callbacks=[*ms.MeasureCallback.create("default"), callback],
                task_scheduler="gradient",
            )
            global_budget -= sum(states[i].measured for i in group)
    except KeyboardInterrupt:
        result.stopped = "interrupted (Ctrl-C)"
    except TuningStopped as stop:
        result.stopped = str(stop)
    except Exception as err:  # a stop raised inside a callback comes back wrapped by the FFI
        if "KeyboardInterrupt" in str(err):
            result.stopped = "interrupted (Ctrl-C)"
        elif TuningStopped.MARKER in str(err):
            result.stopped = str(err).split(TuningStopped.MARKER, 1)[1].strip().splitlines()[0]
        else:
            raise
    finally:
        result.seconds = time.perf_counter() - start
        measure_env.close()
    for state, mod in zip(states, task_mods, strict=True):
        state.best_ms = _best_ms(database, mod) or state.best_ms
    result.new_trials = sum(s.measured for s in states)
    if on_progress:
        on_progress(result)
    return result


def _group_by_remaining(states: list[TaskState],
                        pending: list[int]) -> list[tuple[int, list[int]]]:
    groups: dict[int, list[int]] = {}
    for i in pending:
        groups.setdefault(states[i].budget - states[i].done, []).append(i)
    return sorted(groups.items(), key=lambda kv: -kv[0])


__all__ = ["TaskState", "TuneOptions", "TuneResult", "MeasureEnvironment", "tune_model"]
