"""Which task measures next: trials follow the time a task can still save.

MetaSchedule's round-robin scheduler gives every task the same number of trials, so a 0.05 ms
reshape gets as many as a 5 ms convolution; its gradient scheduler joins no measurement until
every task has had its first round, so a short run records nothing for minutes (and Ctrl-C
there loses it). This one:
- first gives every task one round (a task without a record stays an unscheduled loop nest,
  far slower than any tuned schedule);
- then picks the task furthest below its share of all trials so far, the share of a task
  being its weighted best latency (calls x best ms) over the model's: trials go where the
  time is, and move as tasks get faster;
- joins every finished batch before choosing, so each record lands in the database as soon
  as it is measured (Ctrl-C keeps it), and skips tasks whose search ran out of candidates
  (MetaSchedule terminates those) or that reached their own cap (``--trials-per-task``).

MetaSchedule asserts that a task has a batch in flight before joining it and does not expose
that to Python, so the scheduler tracks it itself: a task has a batch in flight when it was
sent one and no batch of it was joined since (the progress callback counts every join, even
of a batch the search left empty).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule import _ffi_api
from tvm.s_tir.meta_schedule.task_scheduler import PyTaskScheduler


def latency_share_pick(states: Sequence[Any], alive: Sequence[int], first_round: int,
                       in_flight: Sequence[int] = (), batch: int = 0) -> int:
    """The task to measure next among ``alive`` (indices into ``states``, TaskStates with
    ``weight``, ``best`` and ``done``): one still without a result, fewer than
    ``first_round`` trials and no batch in flight; else the one furthest below its latency
    share of the trials (a batch in flight counts as ``batch`` trials done)."""
    for i in alive:
        if states[i].best is None and states[i].done < first_round and i not in in_flight:
            return i
    known = [states[i].best for i in alive if states[i].best is not None]
    # A task whose candidates all failed has no latency: give it the least share.
    floor = min(known) if known else 1.0
    cost = {i: states[i].weight * (states[i].best if states[i].best is not None
                                   else floor) for i in alive}
    done = {i: states[i].done + (batch if i in in_flight else 0) for i in alive}
    total_cost = sum(cost.values()) or 1.0
    total_done = sum(done.values()) + 1
    return max(alive, key=lambda i: (cost[i] / total_cost * total_done - done[i], -i))


@derived_object
class LatencyShareScheduler(PyTaskScheduler):
    """A MetaSchedule task scheduler over ``states`` (one TaskState per task, kept current by
    the progress callback: ``done``, ``best``, ``batches``; ``budget``: its most trials,
    records included); ``batch``: candidates per search round; ``new_trials``: the run's
    budget in newly measured candidates (a candidate answered from the database is none)."""

    def __init__(self, states: Sequence[Any], batch: int, new_trials: int | None = None) -> None:
        super().__init__()
        self.states = list(states)
        self.batch = batch  # candidates per search round
        # the run's budget in new candidates (``measured``; replays are not trials)
        self.new_trials = new_trials
        self._measured_at_start = sum(s.measured for s in self.states)
        # batches joined when the task was last sent one
        self._sent_at: list[int | None] = [None] * len(self.states)

    def _alive(self, tasks: Any) -> list[int]:
        """Tasks MetaSchedule still runs that have budget left."""
        return [i for i in range(len(self.states))
                if not tasks[i].is_terminated and self.states[i].done < self.states[i].budget]

    def _new_measured(self) -> int:
        return sum(s.measured for s in self.states) - self._measured_at_start

    def _in_flight(self, i: int) -> bool:
        return self._sent_at[i] is not None and self.states[i].batches == self._sent_at[i]

    def next_task_id(self) -> int:
        outer = self._outer()  # type: ignore[attr-defined]
        tasks = outer.tasks_
        for i in range(len(self.states)):  # land every finished batch first
            if not tasks[i].is_terminated and self._in_flight(i):
                _ffi_api.TaskSchedulerTouchTask(outer, i)
        alive = self._alive(tasks)
        in_flight = [i for i in alive if self._in_flight(i)]
        if (self.new_trials is not None
                and self._new_measured() + self.batch * len(in_flight) >= self.new_trials):
            # the batches in flight may fill the budget, or be replays: land them first
            for i in in_flight:
                self.join_running_task(i)
            if self._new_measured() >= self.new_trials:
                return -1
            alive, in_flight = self._alive(tasks), []
        if not alive:
            return -1
        pick = latency_share_pick(self.states, alive, first_round=self.batch,
                                  in_flight=in_flight, batch=self.batch)
        if self._in_flight(pick):
            self.join_running_task(pick)
        self._sent_at[pick] = self.states[pick].batches
        return pick
