"""Per-ISA parameters of the DC-AC schedule, keyed by TVM target key.

MetaSchedule looks a custom rule up as ``s_tir.meta_schedule.<key>.<rule>`` for each of the
target's keys in order; aarch64 targets have keys ``["arm_cpu", "cpu"]`` and x86 ones
``["cpu"]``, so the NEON entry is found first on ARM and the AVX2 entry serves x86 (and any
other CPU, where LLVM splits the wider vectors).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class DCACIsa:
    """What the schedule needs to know about a vector ISA (float32)."""

    name: str
    lanes: int  # float32 lanes of one vector register
    registers: int  # vector registers: bounds the register tile of the convolutions
    tile_vectors: int  # most vector registers along the vector axis of one register tile

    @property
    def accumulators(self) -> int:
        """Vector accumulators a register tile may hold, leaving room for operands."""
        return self.registers - 4


ISAS: dict[str, DCACIsa] = {
    "arm_cpu": DCACIsa(name="neon", lanes=4, registers=32, tile_vectors=4),
    "cpu": DCACIsa(name="avx2", lanes=8, registers=16, tile_vectors=4),
}


def isa_for_target(target: Any) -> DCACIsa:
    """The ISA entry for a ``tvm.target.Target``: its first key that has one."""
    for key in target.keys:
        if str(key) in ISAS:
            return ISAS[str(key)]
    raise ValueError(f"no DC-AC schedule for target keys {list(target.keys)}; "
                     f"known keys: {', '.join(ISAS)}")
