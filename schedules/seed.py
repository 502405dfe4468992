"""Seed a tuning database with a measured record of the DC-AC default schedule.

MetaSchedule's evolutionary search starts each task from the best records in the database,
then from random points of the design space. With a small trial budget the random points of
the DC-AC space are often slower than the hand-picked default (the default is one candidate
among a population of ~100, and may never be measured), so a "tuned" build could come out
slower than an untuned one. Measuring the default first and committing it as a record makes
the search start from it, and lets the build fall back on it when nothing measured better.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

from tvmc_attend.relay_ops.dcac_op import FUNC_ATTR

from .dcac import DEFAULT_TAIL, FixedKnobs, schedule_dcac
from .dcac_isa import isa_for_target


def _is_dcac(mod: Any) -> bool:
    funcs = [func for _, func in mod.functions_items()]
    return len(funcs) == 1 and funcs[0].attrs is not None and FUNC_ATTR in funcs[0].attrs


def seed_default_records(tasks: list[Any], database: Any, builder: Any, runner: Any,
                         target: Any) -> int:
    """Measure the default schedule of every DC-AC task (``ExtractedTask``) that has no record
    in ``database`` yet, with ``builder`` and ``runner`` (MetaSchedule's), and commit the
    successful measurements. Returns how many records were committed."""
    from tvm.s_tir import Schedule
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo
    from tvm.s_tir.meta_schedule.builder import BuilderInput
    from tvm.s_tir.meta_schedule.database import TuningRecord
    from tvm.s_tir.meta_schedule.runner import RunnerInput

    pending = []
    for task in tasks:
        mod = task.dispatched[0]
        if not _is_dcac(mod):
            continue
        workload = database.commit_workload(mod)
        if database.get_top_k(workload, 1):
            continue
        sch = Schedule(mod)  # traced: the record is the trace, replayed on the workload
        schedule_dcac(sch, isa_for_target(target), FixedKnobs(), DEFAULT_TAIL)
        pending.append((workload, sch))
    if not pending:
        return 0
    built = builder.build([BuilderInput(sch.mod, target) for _, sch in pending])
    runs = [(workload, sch, b, runner.run([RunnerInput(
        b.artifact_path, device_type="cpu", args_info=ArgInfo.from_entry_func(sch.mod))])[0])
        for (workload, sch), b in zip(pending, built, strict=True) if b.error_msg is None]
    committed = 0
    for workload, sch, build, future in runs:
        result = future.result()
        shutil.rmtree(os.path.dirname(build.artifact_path), ignore_errors=True)
        if result.error_msg is not None or not result.run_secs:
            continue
        database.commit_tuning_record(TuningRecord(
            sch.trace, workload, [float(s) for s in result.run_secs], target,
            ArgInfo.from_entry_func(sch.mod)))
        committed += 1
    return committed
