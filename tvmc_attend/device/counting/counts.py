"""What the counting plugin reports for one bracketed call."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CodeBlock:
    """One block of guest code that ran in the bracket: its bytes, where they start, and how
    often it ran (translations of the same bytes at the same address merged)."""

    code: bytes
    executions: int
    instructions: int  # per execution
    misses: tuple[int, ...] = ()  # of the block's own accesses, per cache level (all runs)
    address: int | None = None  # guest address of its first instruction


@dataclass(frozen=True)
class Counts:
    """What one call executed on the emulated core (the second of two, caches warm)."""

    instructions: int
    loads: int
    stores: int
    misses: tuple[int, ...]  # per cache level, L1 first
    blocks: tuple[CodeBlock, ...] = ()

    def as_json(self) -> dict:
        return {"instructions": self.instructions, "loads": self.loads, "stores": self.stores,
                "misses": list(self.misses), "blocks": len(self.blocks)}
