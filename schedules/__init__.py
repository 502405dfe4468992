"""Schedules and MetaSchedule search-space rules for our custom operators, per ISA.

Our operators (the fused DC-AC, the channel-blocked convolution) each have one sketch with
sampled or fixed knobs (``knobs.py``). ``register_rules`` registers the sampled ones as the
MetaSchedule custom rules that the operators' output blocks name in their ``schedule_rule``
attribute (tuning calls it before MetaSchedule generates design spaces);
``apply_default_schedules`` gives the build the fixed ones where no record applies.
"""

from .blocked_conv import schedule_blocked_conv
from .dcac import TAIL_PLACEMENTS, schedule_dcac
from .dcac_isa import ISAS, DCACIsa, isa_for_target
from .default import SCHEDULED_ATTR, apply_default_schedules, default_schedule
from .knobs import FixedKnobs, SampledKnobs
from .registry import register_rules, rule_name

__all__ = [
    "ISAS",
    "SCHEDULED_ATTR",
    "TAIL_PLACEMENTS",
    "DCACIsa",
    "FixedKnobs",
    "SampledKnobs",
    "apply_default_schedules",
    "default_schedule",
    "isa_for_target",
    "register_rules",
    "rule_name",
    "schedule_blocked_conv",
    "schedule_dcac",
]
