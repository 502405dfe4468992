"""Registration of our operators' design spaces as MetaSchedule custom rules, per target key.

MetaSchedule looks a block's ``schedule_rule`` up as ``s_tir.meta_schedule.<key>.<rule>`` for
each of the target's keys in order (aarch64: ``arm_cpu``, ``cpu``; x86: ``cpu``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tvmc_attend.relay_ops.blocked_conv import SCHEDULE_RULE as BLOCKED_CONV_RULE
from tvmc_attend.relay_ops.dcac_op import SCHEDULE_RULE as DCAC_RULE

from .blocked_conv import schedule_blocked_conv
from .dcac import custom_rule as dcac_rule
from .dcac_isa import ISAS
from .knobs import FixedKnobs, SampledKnobs, design_spaces

TARGET_KEYS = ("arm_cpu", "cpu")


def rule_name(target_key: str, rule: str = DCAC_RULE) -> str:
    """The global function MetaSchedule's ApplyCustomRule looks up for ``target_key``."""
    return f"s_tir.meta_schedule.{target_key}.{rule}"


def blocked_conv_rule(sch: Any, _block: Any) -> list[Any]:
    """The blocked conv's design spaces: the sampled sketch, and the untuned default as a
    fixed space (so the search measures it early: a tuned build is never slower than the
    default, as far as measurements tell)."""
    return design_spaces(sch, [lambda space: schedule_blocked_conv(space, SampledKnobs()),
                               lambda space: schedule_blocked_conv(space, FixedKnobs())])


def register_rules() -> None:
    """Register every rule for every target key (idempotent: re-registration overrides)."""
    import tvm

    rules: dict[str, Callable[[str], Any]] = {
        DCAC_RULE: lambda key: dcac_rule(ISAS[key]),
        BLOCKED_CONV_RULE: lambda _key: blocked_conv_rule,
    }
    for key in TARGET_KEYS:
        for rule, make in rules.items():
            tvm.register_global_func(rule_name(key, rule), make(key), override=True)
