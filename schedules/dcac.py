"""The schedule of the fused DC-AC operator: one sketch, with its knobs either sampled (the
MetaSchedule search space) or fixed (the untuned default).

The sketch, stage by stage (block names from ``relay_ops.dcac_op``):
- pools (``q1p``, ``q2p``): parallel over channels; the zero border is split off
  (``decompose_padding``) so the interior is a plain loop.
- convolutions (``k1``, ``k2``) and the 1x1 expansion (``a0``): a register tile of
  ``oc x vector`` accumulators in a local buffer, loops ``out-channel tile, row, column tile |
  reduction | oc, vector``; the input vector is loaded once per reduction step and reused for
  ``oc`` output channels. The expansion flattens rows and columns first (its maps are 2x2 to
  14x14, too narrow to vectorise one row).
- the gate (``dcac``): parallel over channel tiles, the widened gate row ``tw`` computed per
  channel, the column loop split into a vector.
- where the condensed tail (``a0`` and ``t``, 1/16 of the map) is computed is a structural
  choice: at root (its own parallel loop) or inside the gate's channel-tile loop, right before
  the gate reads it (compute_at). MetaSchedule gets one design space per choice.

Knobs: tile sizes are ``sample_perfect_tile`` decisions, so MetaSchedule's tile-size mutator
explores them; the unroll depth is the usual ``meta_schedule.unroll_explicit`` decision.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tvmc_attend.relay_ops.dcac_op import OUTPUT_BLOCK

from .dcac_isa import DCACIsa

# Structural variants: where the condensed tail is computed.
TAIL_AT_ROOT = "root"
TAIL_AT_GATE = "gate"
VARIANTS = (TAIL_AT_ROOT, TAIL_AT_GATE)
UNROLL_STEPS = (0, 16, 64)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _largest_divisor(n: int, limit: int, multiple_of: int = 1) -> int:
    """The largest divisor of ``n`` not above ``limit``, preferring multiples of
    ``multiple_of`` (whole vector registers)."""
    fits = [d for d in _divisors(n) if d <= limit]
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
        steps = sch.sample_categorical(list(UNROLL_STEPS), [1 / len(UNROLL_STEPS)] * 3)
        sch.annotate(root, "meta_schedule.unroll_explicit", steps)


class FixedKnobs(Knobs):
    """The untuned default: the fixed factors the sketch proposes, no extra unrolling."""

    def tile(self, sch: Any, loop: Any, max_inner: int, default: int) -> list[Any]:
        return [None, default]

    def unroll(self, sch: Any, root: Any) -> None:
        pass


def _extent(sch: Any, loop: Any) -> int:
    return int(sch.get(loop).extent)


@dataclass
class _Ctx:
    sch: Any
    isa: DCACIsa
    knobs: Knobs

    def tile(self, loop: Any, max_inner: int, default: int) -> tuple[Any, Any]:
        outer, inner = self.sch.split(loop, self.knobs.tile(self.sch, loop, max_inner, default))
        return outer, inner

    def vector_default(self, extent: int) -> int:
        """Whole vector registers when the extent allows, else the full (short) extent."""
        if extent <= self.isa.max_vector:
            return extent
        return _largest_divisor(extent, self.isa.max_vector, self.isa.lanes)


def _schedule_pool(ctx: _Ctx, name: str) -> None:
    sch = ctx.sch
    block = sch.get_sblock(name)
    b, c, i, j = sch.get_loops(block)
    bc = sch.fuse(b, c)
    sch.parallel(bc)
    # Fill the zero border separately, so the interior loop carries no padding condition.
    sch.decompose_padding(block, i)


def _register_tile(ctx: _Ctx, block: Any, groups_out: int, flatten: bool,
                   at_root: bool) -> Any:
    """Register-tile a reduction block whose own loops are ``[b,] o, i, j, *reductions``
    (``b`` is gone when the block was computed at a loop of the gate).

    ``o`` is split into a tile of ``oc`` channels (by default within one conv group) and ``j``
    (or ``i * j`` when ``flatten``) into a vector; accumulators live in a local buffer written
    back per column tile. Returns the outermost loop, for consumers to be computed at.
    """
    sch, isa = ctx.sch, ctx.isa
    reductions = sum(1 for iv in sch.get(block).iter_vars if int(iv.iter_type) != 0)
    loops = sch.get_loops(block)
    spatial = 4 if at_root else 3  # compute_at drops the unit batch loop
    *prefix, o, i, j = loops[-(reductions + spatial):-reductions]
    reduce_loops = loops[-reductions:]
    if flatten:
        j = sch.fuse(i, j)
    width = _extent(sch, j)
    jo, ji = ctx.tile(j, isa.max_vector, ctx.vector_default(width))
    vector_regs = -(-ctx.vector_default(width) // isa.lanes)
    oc_default = _largest_divisor(groups_out, max(1, isa.accumulators // vector_regs))
    oo, oi = ctx.tile(o, 8, oc_default)
    outer = [*prefix, oo] if flatten else [*prefix, oo, i]
    sch.reorder(*outer, jo, *reduce_loops, oi, ji)
    top = sch.fuse(*outer) if len(outer) > 1 else outer[0]
    if at_root:
        sch.parallel(top)
    acc = sch.cache_write(block, 0, "local")
    sch.reverse_compute_at(acc, jo)
    sch.vectorize(sch.get_loops(acc)[-1])
    sch.unroll(oi)
    sch.vectorize(ji)
    sch.decompose_reduction(block, reduce_loops[0])
    return top


def _elementwise_after(ctx: _Ctx, name: str, loop: Any) -> None:
    """Compute an elementwise consumer under ``loop`` of its producer, innermost vectorised."""
    sch = ctx.sch
    block = sch.get_sblock(name)
    sch.reverse_compute_at(block, loop)
    inner = sch.get_loops(block)[-1]
    sch.vectorize(inner)


def _schedule_gate(ctx: _Ctx, tail: str) -> Any:
    sch, isa = ctx.sch, ctx.isa
    gate = sch.get_sblock(OUTPUT_BLOCK)
    b, c, y, x = sch.get_loops(gate)
    channels, width = _extent(sch, c), _extent(sch, x)
    xo, xi = ctx.tile(x, isa.max_vector, ctx.vector_default(width))
    # Channel tiles: enough parallel work for the cores, few enough to amortise the tail.
    co, ci = ctx.tile(c, 64, _largest_divisor(channels, max(1, channels // 8)))
    sch.reorder(b, co, ci, y, xo, xi)
    top = sch.fuse(b, co)
    sch.parallel(top)
    sch.vectorize(xi)
    widened = sch.get_sblock("tw")
    sch.compute_at(widened, ci)
    sch.vectorize(sch.get_loops(widened)[-1])
    a0 = sch.get_sblock("a0")
    if tail == TAIL_AT_GATE:
        sch.compute_at(sch.get_sblock("t"), top)
        sch.compute_at(a0, top)
        _register_tile(ctx, a0, groups_out=_extent(sch, sch.get_loops(a0)[-4]), flatten=True,
                       at_root=False)
    else:
        loop = _register_tile(ctx, a0, groups_out=channels, flatten=True, at_root=True)
        _elementwise_after(ctx, "t", loop)
    return top


def schedule_dcac(sch: Any, isa: DCACIsa, knobs: Knobs, tail: str = TAIL_AT_ROOT) -> Any:
    """Schedule the DC-AC PrimFunc held by ``sch`` (a ``tvm.s_tir.Schedule``) in place."""
    ctx = _Ctx(sch, isa, knobs)
    _schedule_gate(ctx, tail)
    for conv, pool in (("k1", "q1p"), ("k2", "q2p")):
        block = sch.get_sblock(conv)
        per_group = _conv_out_per_group(sch, block)
        top = _register_tile(ctx, block, groups_out=per_group, flatten=False, at_root=True)
        if conv == "k2":
            _elementwise_after(ctx, "k2a", top)
        _schedule_pool(ctx, pool)
    knobs.unroll(sch, sch.get_sblock("root"))
    return sch


def _conv_out_per_group(sch: Any, block: Any) -> int:
    """Output channels per conv group, from the shapes the block reads: data (N, C, H, W)
    and weight (O, C / groups, KH, KW)."""
    data, weight = (region.source for region in sch.get(block).reads)
    groups = int(data.shape[1]) // int(weight.shape[1])
    return int(weight.shape[0]) // groups


ScheduleFn = Callable[[Any, Any], list[Any]]


def custom_rule(isa: DCACIsa) -> ScheduleFn:
    """MetaSchedule custom rule for ``isa``: one design space per structural variant."""

    def apply(sch: Any, _block: Any) -> list[Any]:
        spaces = []
        for tail in VARIANTS:
            space = sch.copy()
            space.seed(sch.fork_seed())
            schedule_dcac(space, isa, SampledKnobs(), tail)
            spaces.append(space)
        return spaces

    return apply
