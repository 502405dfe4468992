"""The counted cost of one call: each block of code that ran, as the slower of its compute and
its exposed misses, in cycles of the core model (a rank, never a latency).

    compute(b) = executions x cycles per execution   (llvm-mca on the core's -mcpu; a cold
                 block, run fewer than COLD_EXECUTIONS times, costs instructions / ipc)
    memory(b)  = exposed_miss x sum over cache levels of b's misses x the level's miss cycles
    cycles     = sum over blocks of max(compute(b), memory(b))

A block is straight-line code as the core runs it: the pieces qemu cut one body into are
joined first (traces.py).

A block's misses overlap its own work (an out-of-order core keeps issuing while loads are
outstanding, prefetchers run ahead of a stream) and each other (``exposed_miss`` < 1: several
misses in flight at once); the max is that overlap at its simplest: a block is either bound by
its instructions or by its memory, and only memory beyond the compute costs extra. The
``exposed_miss`` of a core is calibrated where a clock exists (the host's rank check) and
recorded with its source in the board's preset. Counts without blocks (a plugin run without
``blocks=``) fall back to instructions / ipc + exposed misses.
"""

from __future__ import annotations

from dataclasses import dataclass

from tvmc_attend.targets import CoreModel

from .counts import Counts
from .throughput import block_throughput
from .traces import join_fall_through

COLD_EXECUTIONS = 16
# The formula counts become cycles by, recorded in each counted database beside the core model:
# records weighed by another formula do not compare. 2: each block on llvm-mca, roofline with
# its misses; 3: the pieces qemu cut one body into joined first (traces.py).
COST_VERSION = 3


@dataclass(frozen=True)
class CountedCost:
    """One call's counted cycles: the blocks' compute, and the memory stalls beyond it."""

    compute: float
    memory: float

    @property
    def cycles(self) -> float:
        return self.compute + self.memory

    def as_json(self) -> dict[str, float]:
        return {"cycles": self.cycles, "compute_cycles": self.compute,
                "memory_cycles": self.memory}


def roofline(terms: list[tuple[float, float]], exposed_miss: float) -> CountedCost:
    """Sum of max(compute, exposed x raw miss cycles) over blocks' (compute, raw) terms."""
    compute = sum(c for c, _m in terms)
    stalls = sum(max(0.0, exposed_miss * m - c) for c, m in terms)
    return CountedCost(compute, stalls)


class CostModel:
    """Weighs ``Counts`` of ``arch`` code by ``core``: its blocks on llvm-mca's model of the
    core's cpu (or instructions / ipc when it names none) against their misses."""

    def __init__(self, core: CoreModel, arch: str) -> None:
        self.core = core
        cpu = core.throughput_cpu
        self.throughput = block_throughput(arch, cpu) if cpu else None

    def block_terms(self, counts: Counts) -> list[tuple[float, float]]:
        """Per block that ran: (compute cycles, raw miss cycles before ``exposed_miss``)."""
        ipc = self.core.ipc
        blocks = join_fall_through(counts.blocks)
        hot = [b for b in blocks if b.executions >= COLD_EXECUTIONS]
        per_execution = dict(zip((b.code for b in hot), self.throughput.cycles(
            [b.code for b in hot]), strict=True)) if self.throughput and hot else {}
        return [(block.executions * per_execution.get(block.code, block.instructions / ipc),
                 self.core.miss_cycles(block.misses, exposed=1.0)) for block in blocks]

    def cost(self, counts: Counts) -> CountedCost:
        if not counts.blocks:
            return CountedCost(counts.instructions / self.core.ipc,
                               self.core.miss_cycles(counts.misses))
        return roofline(self.block_terms(counts), self.core.exposed_miss)

    def cycles(self, counts: Counts) -> float:
        return self.cost(counts).cycles
