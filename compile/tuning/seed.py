"""Warm start: a new database begins from the best schedules of the shipped one.

The databases shipped with the package (``tvmc_attend.tuning_logs``) are read-only seeds. A
user's ``tune`` writes its own database (``./tuning_logs`` or ``--log-dir``); for each task it
has no record of yet, the seed's best few schedules of the same (target, model) are measured
on the user's device first, before the search. The seed's run times are never copied: they
were measured elsewhere (another CPU of the class, another board), and only this device's
clock may rank this database.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tvmc_attend.errors import UserError
from tvmc_attend.targets import Board

from .database import TuningDatabase, measured_secs

SEED_TOP_K = 2  # per task: the seed's best, and a runner-up in case this device ranks them apart


@dataclass
class Seed:
    """A shipped database the run warm-starts from, and the schedules taken from it."""

    database: TuningDatabase
    origin: str  # where its records were measured (DatabaseInfo.describe_origin)
    schedules: list[tuple[Any, Any]]  # (task workload, tvm.s_tir.Schedule)


def find_seed(own: TuningDatabase, board: Board, model: str, lowering: str,
              root: str | None = None) -> TuningDatabase | None:
    """The database of ``board`` and ``model`` under ``root`` (default: the shipped ones) when
    it can seed ``own``: another directory, tuned for this target and lowered alike."""
    from tvmc_attend.tuning_logs import SHIPPED_DIR

    shipped = TuningDatabase.for_model(root or str(SHIPPED_DIR), board, model)
    if shipped.path == own.path or not shipped.exists():
        return None
    try:
        shipped.check_target(board, lowering)
    except UserError:  # another lowering (--layout) or CPU class: its records do not apply
        return None
    return shipped


def seed_schedules(seed: TuningDatabase, board: Board, model: str, lowering: str,
                   task_mods: list[Any], previous: list[int],
                   top_k: int = SEED_TOP_K) -> Seed:
    """The seed's ``top_k`` best schedules of every task ``previous`` counts no record for,
    replayed on that task's workload."""
    database = seed.open(board, model, lowering=lowering)
    schedules = []
    for mod, prev in zip(task_mods, previous, strict=True):
        if prev or not database.has_workload(mod):
            continue
        for record in database.get_top_k(database.commit_workload(mod), top_k):
            if measured_secs(record) is None:
                continue
            try:
                schedules.append((mod, record.as_measure_candidate().sch))
            except Exception:  # a trace that no longer replays: the search starts without it
                continue
    return Seed(seed, seed.read_info().describe_origin(), schedules)
