"""Straight-line code that qemu cut into several blocks, joined back into the body the core runs.

qemu ends a translation block when its buffer of TCG operations fills (about 40 AVX or NEON
multiply-adds), so a fully unrolled reduction reaches the plugin as several blocks that run one
after the other, equally often. llvm-mca runs each block back to back: an accumulator one piece
hands on to the next looks carried from one execution of the piece to the next, and a chain the
core overlaps with the next output's (a fresh accumulator starts it, in the first piece) is
charged in full on every piece. AttendNeXt's ``fused_conv2d1_add1`` on znver4: its three pieces
cost 33, 60 and 75 cycles per execution alone, and the candidate that ran fastest of eight on
the clock counted 0.876 Mcycles, more than one 2.2x slower; joined, it counts 0.623 and ranks
first. Joined, llvm-mca sees the loop body the core runs.
"""

from __future__ import annotations

from collections import Counter

from .counts import CodeBlock


def join_fall_through(blocks: tuple[CodeBlock, ...]) -> tuple[CodeBlock, ...]:
    """Each run of blocks where one starts at the byte the previous ends and both ran equally
    often (the first always fell into the next, which no other path entered), as one block;
    blocks without an address are kept as they are."""
    addresses = Counter(b.address for b in blocks if b.address is not None)
    by_address = {b.address: b for b in blocks if addresses[b.address] == 1}
    successor: dict[int, CodeBlock] = {}
    for block in by_address.values():
        after = by_address.get(block.address + len(block.code))
        if after is not None and after.executions == block.executions:
            successor[block.address] = after
    entered = {b.address for b in successor.values()}
    joined = []
    for block in blocks:
        if block.address in entered:
            continue  # part of the run its predecessor starts
        run = [block]
        # only once-placed blocks have successors, and addresses only grow along a run, so it
        # cannot loop back on itself
        while run[-1].address in successor:
            run.append(successor[run[-1].address])
        joined.append(run[0] if len(run) == 1 else _join(run))
    return tuple(joined)


def _join(run: list[CodeBlock]) -> CodeBlock:
    levels = max(len(b.misses) for b in run)
    misses = tuple(sum(b.misses[i] for b in run if i < len(b.misses)) for i in range(levels))
    return CodeBlock(code=b"".join(b.code for b in run), executions=run[0].executions,
                     instructions=sum(b.instructions for b in run), misses=misses,
                     address=run[0].address)
