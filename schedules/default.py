"""Untuned schedules for our operators, applied at build time to whatever no record covers.

``tvm.compile`` leaves CPU loops unscheduled: serial, scalar loops. The build legalises and
fuses, applies the tuning database (which marks what it scheduled), then gives every remaining
function that holds one of our operators (the fused DC-AC, a fused blocked convolution) its
sketch with fixed default knobs. The operator is found by the ``schedule_rule`` its output
block names, the same key MetaSchedule uses for the tuned design spaces.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from tvmc_attend.relay_ops.blocked_conv import SCHEDULE_RULE as BLOCKED_CONV_RULE
from tvmc_attend.relay_ops.dcac_op import SCHEDULE_RULE as DCAC_RULE

from .blocked_conv import schedule_blocked_conv
from .dcac import DEFAULT_TAIL, schedule_dcac
from .dcac_isa import isa_for_target
from .knobs import FixedKnobs

# What TVM marks scheduled functions with (MetaScheduleApplyDatabase, DLight): tirx in 0.27.
SCHEDULED_ATTR = "tirx.is_scheduled"
_LOG = logging.getLogger("tvmc_attend.schedules")

DefaultSchedule = Callable[[Any, Any], None]  # (schedule, target) -> schedules in place
DEFAULTS: dict[str, DefaultSchedule] = {
    DCAC_RULE: lambda sch, target: schedule_dcac(sch, isa_for_target(target), FixedKnobs(),
                                                 DEFAULT_TAIL),
    BLOCKED_CONV_RULE: lambda sch, _target: schedule_blocked_conv(sch, FixedKnobs()),
}


def operator_rule(sch: Any) -> str | None:
    """The rule name of the operator the function of ``sch`` holds (a key of ``DEFAULTS``),
    if any."""
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        rule = sch.get(block).annotations.get("schedule_rule")
        if rule is not None and str(rule) in DEFAULTS:
            return str(rule)
    return None


def default_schedule(func: Any, target: Any) -> Any:
    """``func`` scheduled with its operator's default knobs for ``target``; ``func`` itself
    when it holds none of our operators."""
    from tvm.s_tir import Schedule

    sch = Schedule(func)
    rule = operator_rule(sch)
    if rule is None:
        return func
    DEFAULTS[rule](sch, target)
    return sch.mod["main"].with_attr(SCHEDULED_ATTR, True)


def apply_default_schedules(mod: Any, target: Any) -> Any:
    """``mod`` with every unscheduled function of ours default-scheduled (``target`` a
    ``tvm.target.Target``). Idempotent; the input module is not modified."""
    import tvm

    updated = None
    for gvar, func in mod.functions_items():
        if not isinstance(func, tvm.tirx.PrimFunc) or \
                (func.attrs is not None and SCHEDULED_ATTR in func.attrs):
            continue
        scheduled = default_schedule(func, target)
        if scheduled.same_as(func):
            continue
        if updated is None:
            updated = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs)
        updated[gvar] = scheduled
    return mod if updated is None else updated
