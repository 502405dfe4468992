"""The schedule of a fused blocked convolution: one sketch, knobs sampled (the MetaSchedule
search space) or fixed (the untuned default).

The function is what FuseOps makes of ``relay_ops/blocked_conv.py``'s operator: an optional
``pad`` block, the ``conv`` reduction, then the element-wise ops fused after it (bias, SiLU,
residual add). The sketch, in the way channel-blocked CPU kernels are written:
- ``conv``: a register tile of ``rows x output blocks x columns`` accumulator vectors, one
  vector per (row, block, column), lanes = the channel block. Output blocks are first split
  into conv groups (a tile never straddles two groups, so its input values are shared), then
  tiled; loops run ``group, block tile, row tile | column tile | input block, ky, kx, input
  lane | rows, blocks, columns, lanes``: one broadcast input value times one weight vector per
  accumulator, the reduction over a blocked input split into (block, lane) so that no index
  arithmetic is left in it. The outer loops are fused and parallel.
- the epilogue: every fused element-wise block is inlined into the last one, which is
  computed per column tile while the tile is in cache, vectorised over the lanes.
- ``pad``: computed once at root (its zero border costs a branch per load inside the
  reduction, measured 15 % slower), parallel over channel blocks.
Knobs: the three tile sizes and the unroll depth.

Everything the sketch splits by a fixed factor is an extent no sampled decision changes (the
channel block, whole axes), so replaying a trace with other decisions keeps every split exact.
"""

from __future__ import annotations

from typing import Any

from tvmc_attend.relay_ops.blocked_conv import OUTPUT_BLOCK

from .knobs import Knobs, largest_divisor

MAX_BLOCK_TILE = 4  # output blocks per register tile
MAX_COLUMN_TILE = 16
MAX_ROW_TILE = 2


def _epilogue(sch: Any) -> list[Any]:
    """The element-wise blocks fused with the conv, in order: those after it, and those FuseOps
    placed before it that compute another input of the epilogue (an unfolded BatchNorm on a
    residual branch, as in MobileOne). Taken before the schedule adds blocks of its own."""
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    return [b for b in blocks if sch.get(b).name_hint not in (OUTPUT_BLOCK, "pad")]


def schedule_blocked_conv(sch: Any, knobs: Knobs) -> Any:
    """Schedule the fused blocked-conv PrimFunc held by ``sch`` in place."""
    conv = sch.get_sblock(OUTPUT_BLOCK)
    epilogue = _epilogue(sch)
    annotations = sch.get(conv).annotations
    blocks_per_group = int(annotations["blocks_per_group"])
    in_block = int(annotations["in_block"])
    registers = int(annotations["vector_registers"])

    def extent(loop: Any) -> int:
        return int(sch.get(loop).extent)

    b, cb, y, x, lanes, rc, ry, rx = sch.get_loops(conv)
    outer = [b]
    if extent(cb) > blocks_per_group:
        group, cb = sch.split(cb, [None, blocks_per_group])
        outer.append(group)
    accumulators = registers - 4  # leave room for the weight vectors and the broadcast
    block_default = largest_divisor(extent(cb), 3)
    column_default = largest_divisor(extent(x), min(14, accumulators // block_default))
    cbo, cbi = sch.split(cb, knobs.tile(sch, cb, MAX_BLOCK_TILE, block_default))
    xo, xi = sch.split(x, knobs.tile(sch, x, MAX_COLUMN_TILE, column_default))
    yo, yi = sch.split(y, knobs.tile(sch, y, MAX_ROW_TILE, 1))
    outer += [cbo, yo]
    reduction = [rc, ry, rx]
    if in_block > 1:  # whole input blocks: (block, lane), no div/mod in the reduction
        rco, rci = sch.split(rc, [None, in_block])
        reduction = [rco, ry, rx, rci]
    sch.reorder(*outer, xo, *reduction, yi, cbi, xi, lanes)
    top = sch.fuse(*outer)
    sch.parallel(top)
    local = sch.cache_write(conv, 0, "local")
    sch.reverse_compute_at(local, xo, preserve_unit_loops=True)
    sch.vectorize(sch.get_loops(local)[-1])  # the channel block: a fixed extent
    for loop in (yi, cbi, xi):
        sch.unroll(loop)
    sch.vectorize(lanes)
    sch.decompose_reduction(conv, reduction[0])
    for block in epilogue[:-1]:
        sch.compute_inline(block)
    if epilogue:
        sch.reverse_compute_at(epilogue[-1], xo, preserve_unit_loops=True)
        sch.vectorize(sch.get_loops(epilogue[-1])[-1])
    names = [sch.get(blk).name_hint for blk in sch.get_child_blocks(sch.get_sblock("root"))]
    if "pad" in names:
        loops = sch.get_loops(sch.get_sblock("pad"))
        sch.parallel(sch.fuse(loops[0], loops[1]))
        inner = loops[-1]
        lanes_per_register = extent(sch.get_loops(local)[-1])  # the channel block
        if extent(inner) > lanes_per_register:  # an NCHW input's rows: a register at a time
            inner = sch.split(inner, [None, lanes_per_register])[1]
        sch.vectorize(inner)
    knobs.unroll(sch, sch.get_sblock("root"))
    return sch
