"""Never measure a candidate twice: replay the database's time for a known schedule.

MetaSchedule's evolutionary search seeds each round with the database's best schedules and
does not remember, across runs, which candidates it measured (upstream TODO in
evolutionary_search.cc), and a task whose space is exhausted offers the same candidate again.
The builder looks every candidate up here by structural hash; a known one is not built, and
the runner wrapper answers it with its recorded time.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback
from tvm.s_tir.meta_schedule.runner import PyRunner, PyRunnerFuture, RunnerResult
from tvm_ffi import structural_hash

from .database import measured_secs


class MeasuredCandidates:
    """Run times of scheduled modules already measured, keyed by structural hash."""

    def __init__(self) -> None:
        self._secs: dict[int, list[float]] = {}
        self.replayed: dict[str, list[float]] = {}  # artifact path -> recorded run_secs
        # removed with this object (or at exit): the replayed artifacts are empty directories
        self._scratch = tempfile.TemporaryDirectory(prefix="tvmc-attend-replay-")

    def is_replay(self, artifact_path: str | None) -> bool:
        return bool(artifact_path) and artifact_path.startswith(self._scratch.name + os.sep)

    @classmethod
    def from_database(cls, database: Any, workload_mods: list[Any]) -> MeasuredCandidates:
        """Index the records of the given workloads (replaying each trace once)."""
        known = cls()
        wanted = {structural_hash(mod) for mod in workload_mods}
        for record in database.get_all_tuning_records():
            secs = measured_secs(record)
            if secs is None or structural_hash(record.workload.mod) not in wanted:
                continue
            try:
                mod = record.as_measure_candidate().sch.mod
            except Exception:  # a trace that no longer replays is simply measured again
                continue
            known._secs[structural_hash(mod)] = secs
        return known

    def __len__(self) -> int:
        return len(self._secs)

    def knows(self, scheduled_mod: Any) -> bool:
        """Whether this scheduled module was measured already."""
        return structural_hash(scheduled_mod) in self._secs

    def add(self, scheduled_mod: Any, secs: list[float]) -> None:
        self._secs[structural_hash(scheduled_mod)] = secs

    def replay_artifact(self, scheduled_mod: Any) -> str | None:
        """An artifact path standing for a known candidate, or None if it must be measured.

        The path names an empty directory because MetaSchedule deletes each artifact's
        directory after the run."""
        secs = self._secs.get(structural_hash(scheduled_mod))
        if secs is None:
            return None
        path = os.path.join(tempfile.mkdtemp(dir=self._scratch.name), "replayed")
        self.replayed[path] = secs
        return path


@derived_object
class DoneFuture(PyRunnerFuture):
    """A runner result known at once: recorded run times, or an error message."""

    def __init__(self, run_secs: list[float] | None, error: str | None = None) -> None:
        super().__init__()
        self.run_secs = run_secs
        self.error = error

    def done(self) -> bool:
        return True

    def result(self) -> RunnerResult:
        return RunnerResult(self.run_secs, self.error)


@derived_object
class ReplayingRunner(PyRunner):
    """Forwards new candidates to ``inner``; answers replayed ones from the database."""

    def __init__(self, inner: Any, measured: MeasuredCandidates) -> None:
        super().__init__()
        self.inner = inner
        self.measured = measured

    def run(self, runner_inputs: list) -> list:
        fresh = [inp for inp in runner_inputs
                 if inp.artifact_path not in self.measured.replayed]
        fresh_futures = iter(self.inner.run(fresh) if fresh else [])
        return [
            DoneFuture(self.measured.replayed.pop(inp.artifact_path))
            if inp.artifact_path in self.measured.replayed else next(fresh_futures)
            for inp in runner_inputs
        ]


@derived_object
class RecordNewCandidates(PyMeasureCallback):
    """MetaSchedule's AddToDatabase, minus the replays: a candidate answered from the database
    is there already, and committing it again would grow the database with duplicates that a
    later run counts as trials."""

    def __init__(self, database: Any, measured: MeasuredCandidates) -> None:
        super().__init__()
        self.database = database
        self.measured = measured

    def apply(self, task_scheduler: Any, task_id: int, measure_candidates: list,
              builder_results: list, runner_results: list) -> None:
        from tvm.s_tir.meta_schedule.database import TuningRecord

        ctx = task_scheduler.tasks_[task_id].ctx
        workload = self.database.commit_workload(ctx.mod)
        for candidate, build, run in zip(measure_candidates, builder_results, runner_results,
                                         strict=True):
            if self.measured.is_replay(build.artifact_path):
                continue
            # as AddToDatabase: a candidate that failed to build or run is recorded as failed
            secs = [float(s) for s in run.run_secs] if run.run_secs else [1e10]
            self.database.commit_tuning_record(TuningRecord(
                candidate.sch.trace, workload, secs, ctx.target, candidate.args_info))
            self.measured.add(candidate.sch.mod, secs)
