"""Tuning never ships a slowdown: each task's default schedule is measured as a candidate.

An untuned build gives our operators (the fused DC-AC, the blocked convolution) their default
schedules (``schedules/default.py``); a build with a database applies the best record instead.
If the search never tried the default, or tried it and found only worse, the "tuned" build
could run slower than the untuned one (9 of 41 rpi4 tasks did). So before searching, ``tune``
measures every task's default schedule with the run's own builder and runner and commits it as
a record (``measure.measure_schedules``), TVM's own kernels' plain loops included: the
database's best is then never slower than the default, as measured, and ``compile`` applies
whichever wins. ``default_verdicts`` says, per task, whether it still does.
"""

from __future__ import annotations

from typing import Any

from tvm_ffi import structural_hash

from tvmc_attend.schedules.default import DEFAULTS, operator_rule

from .database import measured_secs
from .replay import MeasuredCandidates


def default_scheduled(mod: Any, target: Any) -> Any:
    """The ``tvm.s_tir.Schedule`` of task ``mod`` under its operator's default knobs; for a
    task of TVM's own kernels (layout packs, pools, means), the unscheduled loops an untuned
    build compiles. Not every record beats those: on one counted core a parallel, vectorised
    layout copy of a few KiB counted up to 1.3x its plain loop (rpi4, issue 21)."""
    from tvm.s_tir import Schedule

    sch = Schedule(mod)
    rule = operator_rule(sch)
    if rule is not None:
        DEFAULTS[rule](sch, target)
    return sch


def missing_defaults(task_mods: list[Any], target: Any,
                     measured: MeasuredCandidates) -> list[tuple[Any, Any]]:
    """(task, its default-scheduled Schedule) for every task whose default schedule the
    database has not measured yet."""
    missing = []
    for mod in task_mods:
        sch = default_scheduled(mod, target)
        if not measured.knows(sch.mod):
            missing.append((mod, sch))
    return missing


def default_verdicts(database: Any, workload_mods: list[Any], target: Any) -> list[bool | None]:
    """Per workload: True when its default schedule is still its best record (the search found
    nothing faster), False when a record beats it, None when its default was never measured
    (a database tuned before defaults were). Replays every record once."""
    best: dict[int, tuple[float, int]] = {}  # workload hash -> (mean secs, scheduled hash)
    seen: dict[int, set[int]] = {}
    for record in database.get_all_tuning_records():
        secs = measured_secs(record)
        if secs is None:
            continue
        try:
            scheduled = structural_hash(record.as_measure_candidate().sch.mod)
        except Exception:  # a trace that no longer replays
            continue
        key = structural_hash(record.workload.mod)
        seen.setdefault(key, set()).add(scheduled)
        mean = sum(secs) / len(secs)
        if key not in best or mean < best[key][0]:
            best[key] = (mean, scheduled)
    verdicts: list[bool | None] = []
    for mod in workload_mods:
        sch = default_scheduled(mod, target)
        key = structural_hash(mod)
        if structural_hash(sch.mod) not in seen.get(key, ()):
            verdicts.append(None)
        else:
            verdicts.append(best[key][1] == structural_hash(sch.mod))
    return verdicts
