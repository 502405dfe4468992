"""Schedules and MetaSchedule search-space rules for our custom operators, per ISA.

``register_rules`` registers, for every ISA in ``dcac_isa.ISAS``, the MetaSchedule custom rule
``s_tir.meta_schedule.<target key>.dcac`` that the fused DC-AC operator's output block names in
its ``schedule_rule`` attribute; tuning calls it before MetaSchedule generates design spaces.
``apply_default_schedules`` gives the build the untuned schedule.
"""

from .dcac import TAIL_PLACEMENTS, FixedKnobs, SampledKnobs, schedule_dcac
from .dcac_isa import ISAS, DCACIsa, isa_for_target
from .default import apply_default_schedules, default_schedule
from .registry import register_rules, rule_name

__all__ = [
    "ISAS",
    "TAIL_PLACEMENTS",
    "DCACIsa",
    "FixedKnobs",
    "SampledKnobs",
    "apply_default_schedules",
    "default_schedule",
    "isa_for_target",
    "register_rules",
    "rule_name",
    "schedule_dcac",
]
