"""What a tuning run reports as it goes and at the end: per-task states and the run's result,
TVM-free so that the CLI can show them without importing the compiler."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class TaskState:
    """Live state of one tuning task (shown by the progress display, returned at the end)."""

    name: str
    weight: float
    budget: int
    previous: int
    measured: int = 0
    # offered again by the search and answered from the database: not a trial (the budget
    # goes to new candidates), counted to show how much of the search repeats itself
    replayed: int = 0
    # the best record's cost in the run's unit (TuneResult.unit): a median latency in ms when
    # timed, Mcycles of counted cost when counted; never read as a latency without the unit
    best: float | None = None
    errors: int = 0
    flops: float = 0.0  # per call, as MetaSchedule estimates them
    batches: int = 0  # batches joined this run (some hold no candidate)

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
    budget: int = 0
    # counted on an emulated core: costs are then Mcycles of counted cost (see
    # counting_runner.CYCLE_SECS), never a latency
    counted: bool = False
    defaults_measured: int = 0  # tasks whose default schedule this run added as a record
    seed: str | None = None  # the shipped database this run warm-started from, and its origin
    seeded: int = 0  # the seed's schedules this run measured before the search

    @property
    def replayed(self) -> int:
        """Candidates the search offered again this run, answered from the database."""
        return sum(t.replayed for t in self.tasks)

    @property
    def trials_per_minute(self) -> float:
        return 60.0 * self.new_trials / self.seconds if self.seconds > 0 else 0.0

    @property
    def unit(self) -> str:
        """The unit of every task's ``best`` and of ``estimated_cost``."""
        return "Mcycles" if self.counted else "ms"

    @property
    def estimated_cost(self) -> float | None:
        """Sum over tasks of calls x best cost, in ``unit``; None until every task has one."""
        if not self.tasks or any(t.best is None for t in self.tasks):
            return None
        return sum(t.weight * t.best for t in self.tasks)

    @property
    def estimated_ms(self) -> float | None:
        """The model's estimated latency; None when the run counted instead of timing."""
        return None if self.counted else self.estimated_cost

    @property
    def counted_mcycles(self) -> float | None:
        """The model's counted cost in Mcycles; None when the run timed."""
        return self.estimated_cost if self.counted else None

    def gflops(self, task: TaskState) -> float | None:
        """The task's best speed; None when counted (Mcycles are not a time)."""
        if self.counted or not task.best:
            return None
        return task.flops / task.best / 1e6

    def share(self, task: TaskState) -> float | None:
        """The task's part of the model's estimated cost (calls x best)."""
        total = self.estimated_cost
        return task.weight * task.best / total if total and task.best else None

    def as_json(self) -> dict[str, Any]:
        # Counted costs are named as what they are, never as milliseconds or GFLOP/s.
        best, total = ("best_counted_mcycles", "counted_mcycles") if self.counted else \
            ("best_ms", "estimated_ms")
        return {
            "model": self.model, "target": self.board, "database": self.database,
            "device": self.device, "emulated": self.emulated,
            "measured_by": "counted" if self.counted else "timed", "budget": self.budget,
            "new_trials": self.new_trials, "replayed": self.replayed,
            "defaults_measured": self.defaults_measured, "seed": self.seed,
            "seeded": self.seeded,
            "seconds": round(self.seconds, 1),
            "trials_per_minute": round(self.trials_per_minute, 1),
            total: self.estimated_cost, "stopped": self.stopped,
            "tasks": [{"task": t.name, "flops": t.flops, "calls": t.weight,
                       best: t.best, **({} if self.counted else {"gflops": self.gflops(t)}),
                       "share": self.share(t), "trials": t.done, "new_trials": t.measured,
                       "errors": t.errors}
                      for t in self.tasks],
        }


ProgressHook = Callable[[TuneResult], None]


def at_most_every(seconds: float, hook: ProgressHook) -> ProgressHook:
    """``hook`` called at most once per ``seconds`` (tuning reports every measured batch)."""
    last = [-seconds]

    def throttled(result: TuneResult) -> None:
        if time.monotonic() - last[0] >= seconds:
            last[0] = time.monotonic()
            hook(result)
    return throttled
