"""Pareto dominance over several objectives, with a noise band for measured ones.

A measured latency moves by several per cent between runs on a shared machine, so two designs
whose latencies differ by less than the band are treated as equally fast: otherwise noise alone
would decide which of them is on the front, and a seeded search would not be reproducible.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Objective:
    """``key`` reads the value from an item; ``maximize`` flips the sense; ``tolerance`` is the
    relative band within which two values count as equal (0: exact)."""

    key: Callable[[object], float]
    maximize: bool = False
    tolerance: float = 0.0

    def better(self, a: float, b: float) -> bool:
        """``a`` is better than ``b`` by more than the band."""
        if self.maximize:
            a, b = -a, -b
        return a < b - self.tolerance * abs(b)

    def not_worse(self, a: float, b: float) -> bool:
        return not self.better(b, a)


def dominates(a: object, b: object, objectives: Sequence[Objective]) -> bool:
    """``a`` is no worse than ``b`` in every objective and better in at least one."""
    values = [(o, o.key(a), o.key(b)) for o in objectives]
    return (all(o.not_worse(x, y) for o, x, y in values)
            and any(o.better(x, y) for o, x, y in values))


def pareto_front(items: Sequence[T], objectives: Sequence[Objective]) -> list[T]:
    """The items no other item dominates, in their original order."""
    return [a for a in items if not any(dominates(b, a, objectives) for b in items if b is not a)]


def pareto_layers(items: Sequence[T], objectives: Sequence[Objective]) -> list[list[T]]:
    """Non-dominated sorting: the front, then the front of the rest, and so on."""
    layers, rest = [], list(items)
    while rest:
        front = pareto_front(rest, objectives)
        layers.append(front)
        rest = [item for item in rest if all(item is not f for f in front)]
    return layers
