"""The schedule of the fused DC-AC operator: one sketch, with its knobs either sampled (the
MetaSchedule search space) or fixed (the untuned default).

The sketch, stage by stage (block names from ``relay_ops.dcac_op``):
- pools (``q1p``, ``q2p``): parallel over channels.
- convolutions (``k1``, ``k2``) and the 1x1 expansion (``a0``): a register tile of
  accumulators in a local buffer. Output channels are split into conv groups (so a tile never
  straddles two groups and shares its input loads), then tiled; rows and columns are tiled;
  the loops run ``group, channel tile, row tile | column tile | reduction | rows, channels,
  vector registers, lanes``. The vector axis is the one that fills registers better: columns
  on large maps, output channels (contiguous in the weight layout, padded to whole vectors)
  on small ones (7x7: 4-wide rows). The expansion is defined over the flat condensed map (its
  1x1 taps make it contiguous), so its column tiles may span rows. The SiLU runs in each
  conv's epilogue.
- every vector loop is at most one register wide (ISA lanes), longer ones are unrolled
  register by register: a 24- or 28-lane TVM vector measured 6-13x slower.
- the gate (``dcac``): parallel over channel tiles, the widened gate row ``tw`` computed per
  channel, the column loop split into vector registers.
- where the condensed tail (``a0`` and ``t``, 1/16 of the map) is computed is a structural
  choice: at root (its own parallel loop) or inside the gate's channel-tile loop, right before
  the gate reads it (compute_at). MetaSchedule gets one design space per choice.

Knobs: tile sizes are ``sample_perfect_tile`` decisions (MetaSchedule's tile-size mutator
explores them); the unroll depth is the usual ``meta_schedule.unroll_explicit`` decision.
Per-ISA numbers (lanes, registers) come from ``dcac_isa``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tvmc_attend.relay_ops.dcac_op import OUTPUT_BLOCK

from .dcac_isa import DCACIsa
from .knobs import FixedKnobs, Knobs, SampledKnobs, design_spaces, largest_divisor

# The structural choice of the sketch: where the condensed tail is computed.
TAIL_AT_ROOT = "root"
TAIL_AT_GATE = "gate"
TAIL_PLACEMENTS = (TAIL_AT_ROOT, TAIL_AT_GATE)
DEFAULT_TAIL = TAIL_AT_ROOT  # measured as fast or faster at every AttendNeXt stage
MAX_ROW_TILE = 2  # rows per register tile


@dataclass
class _Ctx:
    sch: Any
    isa: DCACIsa
    knobs: Knobs

    def extent(self, loop: Any) -> int:
        return int(self.sch.get(loop).extent)

    def tile(self, loop: Any, max_inner: int, default: int) -> tuple[Any, Any]:
        outer, inner = self.sch.split(loop, self.knobs.tile(self.sch, loop, max_inner, default))
        return outer, inner

    def vector_length(self, extent: int) -> int:
        """At most one register: LLVM splits a longer (or ragged) TVM vector into lane-by-lane
        shuffles, measured 6-13x slower than the same loop cut into register-sized pieces."""
        return largest_divisor(extent, self.isa.lanes)

    def fill(self, extent: int) -> float:
        """How full the vector registers are when ``extent`` is the vector axis."""
        return self.vector_length(extent) / self.isa.lanes

    def vectorize(self, loop: Any) -> Any:
        """Vectorise one register's worth of ``loop``; returns the loop over registers."""
        registers, lanes = self.sch.split(loop, [None, self.vector_length(self.extent(loop))])
        self.sch.vectorize(lanes)
        return registers

    def registers(self, extent: int) -> int:
        """Default number of vector registers along an axis of ``extent`` in a tile."""
        return largest_divisor(extent // self.vector_length(extent), self.isa.tile_vectors)

    def vector_tile(self, loop: Any) -> tuple[Any, Any, Any]:
        """Split ``loop`` into (outer, registers, lanes): a number of vector registers
        (sampled, or ``registers``), unrolled by the caller, each one register wide."""
        extent = self.extent(loop)
        rest, lanes = self.sch.split(loop, [None, self.vector_length(extent)])
        outer, registers = self.tile(rest, self.isa.tile_vectors, self.registers(extent))
        return outer, registers, lanes


def _schedule_pool(ctx: _Ctx, name: str) -> None:
    # Parallel over channels only: a pool is one cheap pass. (Splitting off the zero border
    # with decompose_padding measured no faster, and that primitive cannot be printed in a
    # MetaSchedule trace in TVM 0.27.)
    sch = ctx.sch
    b, c, _, _ = sch.get_loops(sch.get_sblock(name))
    sch.parallel(sch.fuse(b, c))


def _schedule_reduction(ctx: _Ctx, block: Any, group_size: int, at_root: bool) -> Any:
    """Register-tile a reduction block whose own loops are ``b, o, [i,] j, *reductions``
    (``j`` alone: a flat map; compute_at keeps the unit ``b`` loop: every caller passes
    ``preserve_unit_loops``).

    ``o`` is split into groups of ``group_size`` channels; accumulators live in a local buffer
    written back per column tile. Returns the outermost loop, for consumers to be computed at.
    """
    sch, isa = ctx.sch, ctx.isa
    iter_vars = sch.get(block).iter_vars
    n_red = sum(1 for iv in iter_vars if int(iv.iter_type) != 0)
    n_spatial = len(iter_vars) - n_red
    loops = sch.get_loops(block)
    spatial, reductions = loops[-(n_red + n_spatial):-n_red], loops[-n_red:]
    b, o, *i, j = spatial
    i = i[0] if i else None
    groups = []
    if ctx.extent(o) > group_size:
        group, o = sch.split(o, [None, group_size])
        groups = [group]
    channels, width = ctx.extent(o), ctx.extent(j)
    acc = isa.accumulators
    over_channels = ctx.fill(channels) > ctx.fill(width)
    if over_channels:  # vectorise over output channels (contiguous in the weight layout)
        oco, ocr, lanes = ctx.vector_tile(o)
        regs = ctx.registers(channels)
        jo, ji = ctx.tile(j, 8, largest_divisor(width, acc // regs))
        per_row = regs * largest_divisor(width, acc // regs)
        inner = [ji, ocr, lanes]
    else:  # vectorise over columns
        jo, jr, lanes = ctx.vector_tile(j)
        regs = ctx.registers(width)
        oco, oci = ctx.tile(o, 16, largest_divisor(channels, acc // regs))
        per_row = regs * largest_divisor(channels, acc // regs)
        inner = [oci, jr, lanes]
    outer = [b, *groups, oco]
    if i is not None:
        io, ii = ctx.tile(i, MAX_ROW_TILE, largest_divisor(ctx.extent(i), acc // per_row))
        outer.append(io)
        inner.insert(0, ii)
    sch.reorder(*outer, jo, *reductions, *inner)
    top = sch.fuse(*outer)
    if at_root:
        sch.parallel(top)
    local = sch.cache_write(block, 0, "local")
    if over_channels:  # accumulators with the channel axis innermost, or they are strided
        sch.transform_layout(block, ("write", 0), lambda n, c, *hw: (n, *hw, c))
    sch.reverse_compute_at(local, jo, preserve_unit_loops=True)
    # The write-back must cover the tile exactly, or it copies stale accumulators over other
    # tiles' results; so no split whose factor was computed from a sampled extent (replayed
    # with other decisions it leaves a predicated tail, and TVM over-estimates the written
    # region). Over columns its innermost loop is whole registers of the fixed lane count;
    # over channels it is the sampled column tile (at most a register or so): vectorised whole.
    writeback = sch.get_loops(local)[-1]
    if over_channels:
        sch.vectorize(writeback)
    else:
        ctx.vectorize(writeback)
    for loop in inner[:-1]:
        sch.unroll(loop)
    sch.vectorize(inner[-1])
    sch.decompose_reduction(block, reductions[0])
    return top


def _elementwise_after(ctx: _Ctx, name: str, loop: Any) -> None:
    """Compute an elementwise consumer under ``loop`` of its producer, innermost vectorised."""
    sch = ctx.sch
    block = sch.get_sblock(name)
    sch.reverse_compute_at(block, loop, preserve_unit_loops=True)
    ctx.vectorize(sch.get_loops(block)[-1])


def _schedule_gate(ctx: _Ctx, tail: str) -> None:
    sch = ctx.sch
    gate = sch.get_sblock(OUTPUT_BLOCK)
    b, c, y, x = sch.get_loops(gate)
    channels = ctx.extent(c)
    xo, xr, lanes = ctx.vector_tile(x)
    # Channel tiles: enough parallel work for the cores, few enough to amortise the tail.
    co, ci = ctx.tile(c, 64, largest_divisor(channels, channels // 8))
    sch.reorder(b, co, ci, y, xo, xr, lanes)
    top = sch.fuse(b, co)
    sch.parallel(top)
    sch.unroll(xr)
    sch.vectorize(lanes)
    widened = sch.get_sblock("tw")
    sch.compute_at(widened, ci, preserve_unit_loops=True)
    ctx.vectorize(sch.get_loops(widened)[-1])
    a0 = sch.get_sblock("a0")
    if tail == TAIL_AT_GATE:
        sch.compute_at(sch.get_sblock("t"), top, preserve_unit_loops=True)
        sch.compute_at(a0, top, preserve_unit_loops=True)
        _schedule_reduction(ctx, a0, channels, at_root=False)
    else:
        loop = _schedule_reduction(ctx, a0, channels, at_root=True)
        _elementwise_after(ctx, "t", loop)


def _group_size(sch: Any, block: Any) -> int:
    """Output channels per conv group: the last axis of the weight the block reads,
    laid out (groups, in/group, kh, kw, out/group)."""
    weight = [region.source for region in sch.get(block).reads][1]
    return int(weight.shape[-1])


def schedule_dcac(sch: Any, isa: DCACIsa, knobs: Knobs, tail: str = DEFAULT_TAIL) -> Any:
    """Schedule the DC-AC PrimFunc held by ``sch`` (a ``tvm.s_tir.Schedule``) in place."""
    ctx = _Ctx(sch, isa, knobs)
    _schedule_gate(ctx, tail)
    for conv, pool in (("k1", "q1p"), ("k2", "q2p")):
        block = sch.get_sblock(conv)
        top = _schedule_reduction(ctx, block, _group_size(sch, block), at_root=True)
        _elementwise_after(ctx, f"{conv}a", top)  # the SiLU, in the conv's epilogue
        _schedule_pool(ctx, pool)
    knobs.unroll(sch, sch.get_sblock("root"))
    return sch


ScheduleFn = Callable[[Any, Any], list[Any]]


def custom_rule(isa: DCACIsa) -> ScheduleFn:
    """MetaSchedule custom rule for ``isa``: one sampled design space per tail placement,
    plus the untuned default as a fixed space, so the search measures the default early and a
    tuned build is never slower than the untuned one (as far as the measurements tell)."""
    spaces = [(tail, SampledKnobs()) for tail in TAIL_PLACEMENTS] + [(DEFAULT_TAIL, FixedKnobs())]
    sketches = [functools.partial(schedule_dcac, isa=isa, knobs=knobs, tail=tail)
                for tail, knobs in spaces]
    return lambda sch, _block: design_spaces(sch, sketches)
