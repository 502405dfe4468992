"""Tune a model with MetaSchedule (evolutionary search + XGBoost cost model), resumably.

The budget is ``trials`` in all: records the database already holds count against it, so a
rerun with the same budget measures nothing, and a larger one continues. Trials go to tasks
by the time they can still save (``scheduler.LatencyShareScheduler``), each capped by
``trials_per_task`` when given. Every measured candidate is appended to the database as it
arrives, so Ctrl-C or a lost device keeps every record measured so far. A run holds its
database's lock (``TuningDatabase.lock``) throughout: a second run on the same database waits.
Before the search, each task's default schedule is measured (``defaults``) and, for tasks the
database has no record of, the shipped database's best (``seed``). MetaSchedule's search offers
schedules the database holds again (it forgets across runs what it measured): those are
answered from the database (``replay``) and cost no budget.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from tvmc_attend.device.choice import LOCAL, DeviceChoice
from tvmc_attend.errors import UserError
from tvmc_attend.schedules import register_rules
from tvmc_attend.targets import Board

from ..frontend import ModelSource
from ..lowering import DEFAULT_LAYOUT, extract_tasks, lowering_of
from ..prepare import PreparedModel, prepare_model
from ..stages import stage
from .database import COUNTED, TIMED, TuningDatabase, count_records
from .defaults import missing_defaults
from .intrinsics import load_tensor_intrinsics
from .measure import MeasureEnvironment, make_measure_environment, measure_schedules
from .progress import ProgressHook, TaskState, TuneResult, at_most_every
from .replay import MeasuredCandidates, RecordNewCandidates
from .scheduler import LatencyShareScheduler
from .seed import Seed, find_seed, seed_schedules
from .stop import StopFlag, StopRequested

MS_LOGGER = "tvm.s_tir.meta_schedule"


@dataclass
class TuneOptions:
    trials: int = 200
    trials_per_task: int | None = None
    trials_per_round: int | None = None  # default: as many as lets every task have a round
    seed: int = 0
    log_dir: str | None = None
    # MetaSchedule's defaults (population 512, 4 genetic rounds) spend ~18 s of a 2-core
    # machine on each search round, several times the build+measure time of 16 candidates.
    # A smaller population evolves for fewer generations per round, but rounds are cheap.
    population_size: int = 128
    genetic_num_iters: int = 2
    # Another tune holding the database: wait for it (True) or raise a UserError naming it.
    wait: bool = True
    layout: str = DEFAULT_LAYOUT  # what convolutions compute in (compile.prepare.LAYOUTS)
    # tasks without records start from the best of the shipped database, or of the one of
    # this target and model under ``seed_dir`` (seed.py)
    warm_start: bool = True
    seed_dir: str | None = None

    def search_strategy(self) -> Any:
        from tvm.s_tir import meta_schedule as ms

        return ms.search_strategy.EvolutionarySearch(
            population_size=self.population_size,
            init_min_unmeasured=min(50, self.population_size // 2),
            genetic_num_iters=self.genetic_num_iters,
        )


def _quiet_metaschedule(log_dir: str) -> None:
    """MetaSchedule's own logs go to files under ``log_dir``, not to the terminal."""
    os.makedirs(log_dir, exist_ok=True)
    logger = logging.getLogger(MS_LOGGER)
    # create_loggers() gives its console handler the level of this logger, then sets the
    # logger to DEBUG: call this before every tune_tasks(), or the second one logs to stderr.
    logger.setLevel(logging.CRITICAL)


@contextlib.contextmanager
def unnamed_handlers_set_aside() -> Iterator[None]:
    """TVM's ``create_loggers`` (run as tune contexts are made) lists MetaSchedule's logger's
    handlers by name and formats each name: one without a name (pytest's log capture, or a
    caller's own) failed the tune with "'NoneType' object has no attribute 'format'". They
    are set aside while the contexts are made and put back after."""
    logger = logging.getLogger(MS_LOGGER)
    unnamed = [h for h in logger.handlers if h.get_name() is None]
    for handler in unnamed:
        logger.removeHandler(handler)
    try:
        yield
    finally:
        for handler in unnamed:
            logger.addHandler(handler)


@contextlib.contextmanager
def _native_stderr_to(path: str) -> Iterator[None]:
    """Send C++ warnings (TVM logs schedule-rule notices straight to fd 2) to a log file."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "a") as log:
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def _best_cost(database: Any, task_mod: Any) -> float | None:
    if not database.has_workload(task_mod):
        return None
    records = database.get_top_k(database.commit_workload(task_mod), 1)
    if not records or not records[0].run_secs:
        return None
    secs = [float(s) for s in records[0].run_secs]
    return 1e3 * sum(secs) / len(secs)


def tune_model(source: ModelSource, board: Board, options: TuneOptions,
               device: DeviceChoice = LOCAL, on_progress: ProgressHook | None = None,
               fuse_dcac: bool = True) -> TuneResult:
    """Import ``source`` (fusing its DC-AC blocks unless ``fuse_dcac`` is False), then tune
    it (see ``tune_prepared``)."""
    device.require_for(board, "tuning")
    # Fail before the import (minutes for a large model): no device, another target's database.
    workers = device.parallel_workers()
    db_dir = TuningDatabase.for_model(options.log_dir, board, source.name)
    if db_dir.exists():
        db_dir.check_target(board, lowering_of(options.layout))
        db_dir.check_measured_by(_measured_by(device), board)
    with db_dir.lock(wait=options.wait):  # before the import: --no-wait answers at once
        prepared = prepare_model(source, fuse_dcac=fuse_dcac, layout=options.layout,
                                 board=board)
        return tune_prepared(prepared, board, options, device=device,
                             on_progress=on_progress, workers=workers)


def tune_prepared(prepared: PreparedModel, board: Board, options: TuneOptions,
                  device: DeviceChoice = LOCAL, on_progress: ProgressHook | None = None,
                  workers: int | None = None) -> TuneResult:
    """Extract the tasks of a prepared Relax module and tune them for ``board``, measuring
    on ``device`` (this host, or a board over RPC). ``workers``: devices that measure in
    parallel, when the caller has already counted them."""
    device.require_for(board, "tuning")
    if workers is None:
        workers = device.parallel_workers()
    extracted = extract_tasks(prepared, board)
    if not extracted:
        raise UserError(f"{prepared.imported.name} has no tunable operators")
    db_dir = TuningDatabase.for_model(options.log_dir, board, prepared.imported.name)
    # One writer per database for the whole run: MetaSchedule numbers the workloads it
    # appends from the file as it read it, so two runs at once attach records to each
    # other's workloads. (A caller that holds the lock already, tune_model, re-enters it.)
    with db_dir.lock(wait=options.wait):
        return _tune_locked(prepared, board, options, extracted, db_dir, device, on_progress,
                            workers)


@dataclass
class TuningPlan:
    """The budgets of one run: each task's cap (in its state), candidates per search round, and
    the trials left of the run's total once the database's records are counted."""

    states: list[TaskState]
    per_round: int
    remaining: int

    @property
    def pending(self) -> list[int]:
        """Indices of the tasks with budget left."""
        return [i for i, s in enumerate(self.states) if s.done < s.budget]


def plan_budgets(extracted: list[Any], task_mods: list[Any], database: Any,
                 options: TuneOptions) -> TuningPlan:
    """The run's budget: ``trials`` in all (records the database holds count as done), shared
    by ``LatencyShareScheduler``; each task capped by ``trials_per_task`` when given."""
    from tvm.s_tir.analysis import estimate_tir_flops

    previous = count_records(database, task_mods)
    per_round = options.trials_per_round or _default_per_round(options.trials, len(extracted))
    cap = options.trials_per_task or options.trials
    states = [
        TaskState(name=task.task_name, weight=float(task.weight), budget=cap,
                  previous=min(prev, cap), best=_best_cost(database, mod),
                  flops=float(estimate_tir_flops(mod)))
        for task, mod, prev in zip(extracted, task_mods, previous, strict=True)
    ]
    return TuningPlan(states=states, per_round=per_round,
                      remaining=max(0, options.trials - sum(s.previous for s in states)))


def _tune_locked(prepared: PreparedModel, board: Board, options: TuneOptions,
                 extracted: list[Any], db_dir: TuningDatabase, device: DeviceChoice,
                 on_progress: ProgressHook | None, workers: int) -> TuneResult:
    database = db_dir.open(board, prepared.imported.name, create=True,
                           emulated=device.emulated, device=device.description,
                           input_shape=prepared.imported.input_shape,
                           lowering=prepared.lowering, measured_by=_measured_by(device),
                           machine=_measuring_machine(board, device))
    task_mods = [task.dispatched[0] for task in extracted]
    plan = plan_budgets(extracted, task_mods, database, options)
    result = TuneResult(model=prepared.imported.name, board=board.name, database=db_dir.path,
                        tasks=plan.states, emulated=device.emulated,
                        device=device.description, counted=device.counted,
                        budget=min(options.trials, sum(s.budget for s in plan.states)))
    target = board.tvm_target()
    measured = MeasuredCandidates.from_database(database, task_mods)
    defaults = missing_defaults(task_mods, target, measured)
    seed = _seed(db_dir, board, prepared, task_mods, plan, options)
    if defaults or (seed and seed.schedules) or (plan.pending and plan.remaining):
        log_dir = os.path.join(db_dir.path, "logs")
        measure_env = _set_up_measurement(board, measured, device, workers, log_dir)
        start = time.perf_counter()
        with (measure_env.stop.on_sigint(),
              _native_stderr_to(os.path.join(log_dir, "native.log")),
              stage("tuning")):  # records measured so far stay in the database
            try:
                # first, what an untuned build would run: the search must beat it
                result.defaults_measured = measure_schedules(defaults, target, measure_env,
                                                             database)
                if seed:  # then the seed's best, on this device's clock
                    result.seed = f"{seed.database.path} ({seed.origin})"
                    result.seeded = measure_schedules(seed.schedules, target, measure_env,
                                                      database)
                _refresh_best(plan.states, task_mods, database)  # the search starts from it
                if plan.pending and plan.remaining:
                    _tune_pending(extracted, plan, board, options, database, db_dir.path,
                                  log_dir, measure_env, result, on_progress, start)
            except (StopRequested, RuntimeError):
                # Our callbacks unwind MetaSchedule's loop by raising; the FFI turns that into
                # a bare RuntimeError, so the flag, not the exception, says whether this was a
                # stop.
                if measure_env.stop.reason is None:
                    raise
                result.stopped = measure_env.stop.reason
            finally:
                result.seconds = time.perf_counter() - start
                measure_env.close()
        _refresh_best(plan.states, task_mods, database)
        result.new_trials = sum(s.measured for s in plan.states)
    if on_progress:
        on_progress(result)
    return result


def _refresh_best(states: list[TaskState], task_mods: list[Any], database: Any) -> None:
    """Each task's best cost from the database (records this run measured included)."""
    for state, mod in zip(states, task_mods, strict=True):
        state.best = _best_cost(database, mod) or state.best


def _seed(db_dir: TuningDatabase, board: Board, prepared: PreparedModel, task_mods: list[Any],
          plan: TuningPlan, options: TuneOptions) -> Seed | None:
    """What a warm start takes from the shipped database, for the tasks without records."""
    if not options.warm_start or all(s.previous for s in plan.states):
        return None
    shipped = find_seed(db_dir, board, prepared.imported.name, prepared.lowering,
                        root=options.seed_dir)
    if shipped is None:
        return None
    return seed_schedules(shipped, board, prepared.imported.name, prepared.lowering,
                          task_mods, [s.previous for s in plan.states])


def _measured_by(device: DeviceChoice) -> str:
    return COUNTED if device.counted else TIMED


def _measuring_machine(board: Board, device: DeviceChoice) -> str | None:
    """This host's CPU and TVM threads, when this host's clock measures the candidates."""
    if not device.is_local or device.counted or board.is_remote:
        return None
    from tvmc_attend.targets.board import native_cpu
    from tvmc_attend.targets.cpu_class import cpu_model_name

    mcpu = board.resolved_target_dict().get("mcpu", "?")
    return (f"{cpu_model_name()} ({native_cpu()}), code for {mcpu}, "
            f"{board.thread_count()} TVM threads")


def _set_up_measurement(board: Board, measured: MeasuredCandidates, device: DeviceChoice,
                        workers: int, log_dir: str) -> MeasureEnvironment:
    """Everything MetaSchedule needs before its first candidate: quiet logs, the board's
    tensor intrinsics and our schedule rules registered, and the builder and runner (which
    answer the candidates ``measured`` knows without measuring them again)."""
    _quiet_metaschedule(log_dir)
    load_tensor_intrinsics(board)
    register_rules()  # the fused DC-AC operator's design spaces
    return make_measure_environment(board, device.spec, measured, StopFlag(), workers=workers,
                                    counted=device.counted)


def _tune_pending(extracted: list[Any], plan: TuningPlan, board: Board, options: TuneOptions,
                  database: Any, work_dir: str, log_dir: str, measure_env: MeasureEnvironment,
                  result: TuneResult, on_progress: ProgressHook | None, start: float) -> None:
    """Tune the pending tasks in one MetaSchedule run, trials allotted by
    ``LatencyShareScheduler`` (each batch recorded as soon as it is measured)."""
    from tvm.s_tir import meta_schedule as ms

    pending = plan.pending
    states = [plan.states[i] for i in pending]
    with unnamed_handlers_set_aside():
        contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
            [extracted[i] for i in pending], work_dir=work_dir,
            strategy=options.search_strategy(), num_threads=board.thread_count()
            if not board.is_remote else len(os.sched_getaffinity(0)),
            seed=options.seed)
    _quiet_metaschedule(log_dir)
    callback = measure_env.progress_callback(states, result, on_progress, start)
    # MetaSchedule counts every candidate it sends against its caps, replays included (its
    # search forgets, across runs, what it measured): give it room for every known candidate
    # to come back once, and let LatencyShareScheduler enforce the budgets in new trials.
    known = len(measure_env.measured)
    ms.tune_tasks(
        tasks=contexts, task_weights=weights, work_dir=work_dir,
        max_trials_global=plan.remaining + known,
        max_trials_per_task=max(s.budget - s.done for s in states) + known,
        num_trials_per_iter=plan.per_round,
        builder=measure_env.builder, runner=measure_env.runner, database=database,
        cost_model=ms.cost_model.XGBModel(
            extractor=ms.feature_extractor.PerStoreFeature(), adaptive_training=True,
            num_tuning_cores=len(os.sched_getaffinity(0))),
        # MetaSchedule's "default" callbacks, with AddToDatabase skipping replays
        measure_callbacks=[RecordNewCandidates(database, measure_env.measured),
                           ms.measure_callback.RemoveBuildArtifact(),
                           ms.measure_callback.UpdateCostModel(), callback],
        task_scheduler=LatencyShareScheduler(states, plan.per_round,
                                             new_trials=plan.remaining),
    )


def _default_per_round(trials: int, num_tasks: int) -> int:
    """Candidates per search round. A task with no record stays unscheduled (CPU builds have
    no fallback schedule), which costs far more than a mediocre schedule: so first make sure
    every task gets one round, then use up to 16 per round (the search step is amortised)."""
    return max(2, min(16, trials // max(1, num_tasks)))


__all__ = ["TaskState", "TuneOptions", "TuneResult", "TuningPlan", "at_most_every",
           "plan_budgets", "tune_model", "tune_prepared"]
