"""Where a sketch's numbers come from: sampled (a MetaSchedule design space) or fixed (the
untuned default). Every operator sketch in this package takes a ``Knobs``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

UNROLL_STEPS = (0, 16, 64)


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def largest_divisor(n: int, limit: int, multiple_of: int = 1) -> int:
    """The largest divisor of ``n`` not above ``limit``, preferring multiples of
    ``multiple_of`` (whole vector registers)."""
    fits = [d for d in divisors(n) if d <= max(1, limit)]
    aligned = [d for d in fits if d % multiple_of == 0]
    return max(aligned or fits)


class Knobs:
    """Where the sketch's numbers come from. Subclasses: sampled (tuning) or fixed (default)."""

    def tile(self, sch: Any, loop: Any, max_inner: int, default: int) -> list[Any]:
        """Factors [outer, inner] splitting ``loop``; ``default`` is the fixed inner factor."""
        raise NotImplementedError

    def unroll(self, sch: Any, root: Any) -> None:
        """Choose the unroll depth of the loops under ``root``."""
        raise NotImplementedError


class SampledKnobs(Knobs):
    """Tile sizes and unroll depth as MetaSchedule decisions (mutated during the search)."""

    def tile(self, sch: Any, loop: Any, max_inner: int, default: int) -> list[Any]:
        return list(sch.sample_perfect_tile(loop, n=2, max_innermost_factor=max_inner))

    def unroll(self, sch: Any, root: Any) -> None:
        probs = [1 / len(UNROLL_STEPS)] * len(UNROLL_STEPS)
        steps = sch.sample_categorical(list(UNROLL_STEPS), probs)
        sch.annotate(root, "meta_schedule.unroll_explicit", steps)


class FixedKnobs(Knobs):
    """The untuned default: the fixed factors the sketch proposes, no extra unrolling."""

    def tile(self, sch: Any, loop: Any, max_inner: int, default: int) -> list[Any]:
        return [None, default]

    def unroll(self, sch: Any, root: Any) -> None:
        pass


def design_spaces(sch: Any, sketches: Sequence[Callable[[Any], Any]]) -> list[Any]:
    """One MetaSchedule design space per sketch: each applied to its own copy of ``sch``,
    seeded from it (what a custom rule returns)."""
    spaces = []
    for sketch in sketches:
        space = sch.copy()
        space.seed(sch.fork_seed())
        sketch(space)
        spaces.append(space)
    return spaces
