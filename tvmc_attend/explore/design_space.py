"""The design space that `tvmc-attend explore` searches: choices for each field of a ``Design``
(``models/design.py``), around the hand reconstruction's values.

The best-practice constraints the paper names are built into the space rather than checked
afterwards: columnar design (at least two columns everywhere), early self-attention (stage 1
always has a DC-AC), anti-aliased downsampling (every transition is AADS) and widths that never
shrink with depth (each stage's choices lie above the previous stage's).
"""

from __future__ import annotations

import random
from dataclasses import replace

from tvmc_attend.models.design import STAGE_BLOCKS, Design

# Choices per stage, each around the reconstruction's value (40, 84, 176, 372 / 4, 4, 7, 2).
WIDTH_CHOICES = ((24, 32, 40, 48), (56, 72, 84, 96), (128, 152, 176, 208), (288, 328, 372, 432))
DEPTH_CHOICES = ((1, 2, 3, 4), (1, 2, 3, 4), (2, 4, 6, 7, 8, 10), (1, 2, 3))
REDUCTION_CHOICES = (2, 4, 8)
GROUP_CHOICES = (2, 4, 8)


def _legal(design: Design) -> Design:
    """Round widths up to multiples of the design's groups (every width splits into columns),
    keeping them non-decreasing."""
    widths: list[int] = []
    for w in design.widths:
        widths.append(max(-(-w // design.groups) * design.groups, widths[-1] if widths else 0))
    return replace(design, widths=tuple(widths))


def smallest() -> Design:
    """The design with the fewest parameters the space allows (to refuse impossible limits)."""
    return _legal(Design(widths=tuple(c[0] for c in WIDTH_CHOICES),
                         depths=tuple(c[0] for c in DEPTH_CHOICES),
                         dcac=(True, *(False for _ in STAGE_BLOCKS[1:])),
                         dcac_reduction=max(REDUCTION_CHOICES), groups=max(GROUP_CHOICES)))


def sample(rng: random.Random) -> Design:
    """A uniformly random design of the space."""
    return _legal(Design(
        widths=tuple(rng.choice(c) for c in WIDTH_CHOICES),
        depths=tuple(rng.choice(c) for c in DEPTH_CHOICES),
        dcac=(True, *(rng.random() < 0.5 for _ in STAGE_BLOCKS[1:])),
        dcac_reduction=rng.choice(REDUCTION_CHOICES),
        groups=rng.choice(GROUP_CHOICES),
    ))


def _step(value: int, choices: tuple[int, ...], rng: random.Random) -> int:
    """A neighbouring choice of ``value`` (or the nearest choice if it is not one)."""
    i = min(range(len(choices)), key=lambda k: abs(choices[k] - value))
    return choices[max(0, min(len(choices) - 1, i + rng.choice((-1, 1))))]


def mutate(design: Design, rng: random.Random) -> Design:
    """Change one field of ``design`` to a neighbouring value."""
    field = rng.choice(("width", "depth", "dcac", "dcac_reduction", "groups"))
    stage = rng.randrange(len(STAGE_BLOCKS))
    if field == "width":
        widths = list(design.widths)
        widths[stage] = _step(widths[stage], WIDTH_CHOICES[stage], rng)
        design = replace(design, widths=tuple(widths))
    elif field == "depth":
        depths = list(design.depths)
        depths[stage] = _step(depths[stage], DEPTH_CHOICES[stage], rng)
        design = replace(design, depths=tuple(depths))
    elif field == "dcac":
        flags = list(design.dcac)
        stage = rng.randrange(1, len(flags))  # stage 1 keeps its DC-AC (early attention)
        flags[stage] = not flags[stage]
        design = replace(design, dcac=tuple(flags))
    elif field == "dcac_reduction":
        design = replace(design, dcac_reduction=_step(design.dcac_reduction,
                                                      REDUCTION_CHOICES, rng))
    else:
        design = replace(design, groups=_step(design.groups, GROUP_CHOICES, rng))
    return _legal(design)
