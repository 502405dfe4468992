"""The untuned DC-AC schedule, applied at build time to operators the database does not cover.

``tvm.compile`` leaves CPU loops unscheduled, which for the fused operator means serial,
scalar loops. Before building, every DC-AC PrimFunc that is neither scheduled already nor
covered by a tuning record gets the sketch with its fixed default knobs. Functions with a
record are left for ``compile_relax`` to apply the record to: it looks them up by the
unscheduled function, so scheduling them here would hide them from the database.
"""

from __future__ import annotations

from typing import Any

from tvmc_attend.relay_ops.dcac_op import FUNC_ATTR

from .dcac import DEFAULT_TAIL, FixedKnobs, schedule_dcac
from .dcac_isa import isa_for_target

# What TVM marks scheduled functions with (MetaScheduleApplyDatabase, DLight): tirx in 0.27.
SCHEDULED_ATTR = "tirx.is_scheduled"


def _has_record(database: Any, func: Any, target: Any, name: str) -> bool:
    from tvm.s_tir.meta_schedule.tune_context import _normalize_mod

    return database.query_tuning_record(_normalize_mod(func), target, name) is not None


def default_schedule(func: Any, target: Any) -> Any:
    """``func`` (a DC-AC PrimFunc) scheduled with the default knobs for ``target``'s ISA."""
    from tvm.s_tir import Schedule

    sch = Schedule(func)
    schedule_dcac(sch, isa_for_target(target), FixedKnobs(), DEFAULT_TAIL)
    return sch.mod["main"].with_attr(SCHEDULED_ATTR, True)


def apply_default_schedules(mod: Any, target: Any, database: Any = None) -> Any:
    """Return ``mod`` with its unscheduled, untuned DC-AC operators default-scheduled.

    ``target`` is a ``tvm.target.Target``; ``database`` the MetaSchedule database the build
    will apply (None for an untuned build). Idempotent.
    """
    import tvm

    updated = None
    for gvar, func in mod.functions_items():
        if not isinstance(func, tvm.tirx.PrimFunc) or func.attrs is None \
                or FUNC_ATTR not in func.attrs or SCHEDULED_ATTR in func.attrs:
            continue
        if database is not None and _has_record(database, func, target, gvar.name_hint):
            continue
        if updated is None:
            updated = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs)
        updated[gvar] = default_schedule(func, target)
    return mod if updated is None else updated
