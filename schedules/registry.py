"""Registration of the DC-AC schedule space as MetaSchedule custom rules, one per ISA."""

from __future__ import annotations

from tvmc_attend.relay_ops.dcac_op import SCHEDULE_RULE

from .dcac import custom_rule
from .dcac_isa import ISAS


def rule_name(target_key: str) -> str:
    """The global function MetaSchedule's ApplyCustomRule looks up for ``target_key``."""
    return f"s_tir.meta_schedule.{target_key}.{SCHEDULE_RULE}"


def register_rules() -> None:
    """Register the rule for every ISA (idempotent: re-registration overrides)."""
    import tvm

    for key, isa in ISAS.items():
        tvm.register_global_func(rule_name(key), custom_rule(isa), override=True)
