"""The vector ISA of a target, as the layout pass and the schedules need it (float32)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class VectorIsa:
    name: str
    lanes: int  # float32 lanes of one vector register
    registers: int  # architectural vector registers

    @property
    def channel_blocks(self) -> tuple[int, ...]:
        """Channel block sizes worth trying, widest first: a full register, and on AVX-512
        also half of one (AVX2 width: less padding for groups of, say, 21 channels)."""
        return (self.lanes, self.lanes // 2) if self.lanes >= 16 else (self.lanes,)


AVX512 = VectorIsa("avx512", lanes=16, registers=32)
AVX2 = VectorIsa("avx2", lanes=8, registers=16)
NEON = VectorIsa("neon", lanes=4, registers=32)


def vector_isa(target: Any) -> VectorIsa:
    """The vector ISA a ``tvm.target.Target`` compiles for."""
    from tvm.target import codegen

    if "arm_cpu" in [str(k) for k in target.keys]:
        return NEON
    return AVX512 if codegen.target_has_features("avx512f", target) else AVX2
