"""The fused double-condensing attention condenser (DC-AC): its shape record and TE computation.

Unfused, a DC-AC block is eleven graph ops, and the gate at the end (resize -> sigmoid ->
multiply -> multiply -> add) runs at full resolution: one sigmoid per pixel of V although the
attention values live on a map 16x smaller. The fused operator computes

    T = 1 + S * sigmoid(A0)                  on the condensed map (N, C, H2, W2)
    out = V * T[nearest(h), nearest(w)]      in one pass over V

which equals ``V + S * (V * sigmoid(resize(A0)))`` up to float rounding (the nearest resize only
copies values), so the full-resolution pass is one multiply per element and the sigmoids
shrink by the condensation factor. Nearest indices come from TOPI's own resize helpers, so
they are the ones the unfused ``resize2d`` uses, for any map size (7x7 -> 4x4 -> 2x2 -> 7x7).

Stages (block names are what ``schedules/`` schedules):
  q1p   max-pool V (ceil mode: windows clipped to the map), written into a zero-padded buffer
  k1    grouped conv over q1p (reduction)
  k1a   SiLU(k1 + b1)
  q2p   max-pool of k1a, zero-padded
  k2    grouped conv over q2p (reduction)
  k2a   SiLU(k2 + b2)
  a0    1x1 conv over the flattened condensed map (reduction)
  t     1 + s * sigmoid(a0 + b3), flat like a0
  tw    t widened to the full width (condensed height), so the gate reads rows contiguously
  dcac  V * tw[nearest(h)]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .fast_math import fast_sigmoid, fast_silu

# Block attributes read by MetaSchedule: the output block carries our rule's name; the other
# blocks, root included, carry "None", which keeps MetaSchedule's generic rules off them (the
# rule schedules the whole operator from the output block; a generic parallel/vectorize
# annotation on the root would make the postprocessor re-parallelise our loops, and fail).
SCHEDULE_RULE = "dcac"
OUTPUT_BLOCK = "dcac"
# PrimFunc attribute marking our operator for schedules/ (its value: the operator's name).
FUNC_ATTR = "tvmc_attend.dcac"
# Relax's OpPatternKind::kOpaque: FuseOps must not merge the operator with its neighbours,
# or its task would no longer be the operator our schedule space is written for.
OP_PATTERN_OPAQUE = 8
# Floats per vector register on the widest ISA we schedule for (AVX2; NEON has 4).
VECTOR_FLOATS = 8


@dataclass(frozen=True)
class Pool:
    """A max pool without padding; windows that run past the map (ceil mode) are clipped."""

    size: tuple[int, int]
    stride: tuple[int, int]
    out: tuple[int, int]


@dataclass(frozen=True)
class Conv:
    """A stride-1, dilation-1 NCHW/OIHW conv; ``padding`` is (top, left, bottom, right)."""

    out_channels: int
    in_channels: int
    groups: int
    kernel: tuple[int, int]
    padding: tuple[int, int, int, int]
    out: tuple[int, int]

    @property
    def group_out(self) -> int:
        return self.out_channels // self.groups

    @property
    def group_out_computed(self) -> int:
        """Output channels per group as the operator computes them: rounded up to whole
        8-float vectors when that wastes at most 1/8 (AttendNeXt's stage 4: 23 -> 24, a zero
        weight column), so a schedule can vectorise over them without a ragged 23-lane
        vector; otherwise exact."""
        rounded = -(-self.group_out // VECTOR_FLOATS) * VECTOR_FLOATS
        return rounded if rounded * 8 <= self.group_out * 9 else self.group_out

    @property
    def computed_channels(self) -> int:
        return self.groups * self.group_out_computed

    def channel(self, real: Any) -> Any:
        """Index of a real output channel in the computed (possibly padded) channels."""
        if self.group_out_computed == self.group_out:
            return real
        return real // self.group_out * self.group_out_computed + real % self.group_out


@dataclass(frozen=True)
class DCACSpec:
    """Everything that shapes the fused operator (weights are arguments, not part of it)."""

    batch: int
    channels: int
    height: int
    width: int
    pool1: Pool
    conv1: Conv
    pool2: Pool
    conv2: Conv
    expand_in: int  # the 1x1 expansion conv: expand_in -> channels
    dtype: str = "float32"

    @property
    def embed(self) -> int:
        return self.conv1.out_channels

    @property
    def condensed(self) -> tuple[int, int]:
        return self.conv2.out

    @property
    def name(self) -> str:
        h2, w2 = self.condensed
        return (f"dcac_n{self.batch}_c{self.channels}_e{self.embed}_{self.height}x{self.width}"
                f"_to_{h2}x{w2}")

    def weight_shapes(self) -> list[tuple[int, ...]]:
        """Shapes of the weight arguments, in call order (see ``WEIGHTS``)."""
        return [_grouped_shape(self.conv1), (self.conv1.computed_channels,),
                _grouped_shape(self.conv2), (self.conv2.computed_channels,),
                (self.expand_in, self.channels), (self.channels,), (self.channels,)]


# The operator's arguments after V, in call order. Conv weights are laid out (groups, in/group,
# kh, kw, out/group) and the expansion (in, out): the output channels are innermost, so that
# a schedule can vectorise over output channels (small maps) as well as over columns.
WEIGHTS = ("w1", "b1", "w2", "b2", "w3", "b3", "s")


def _grouped_shape(conv: Conv) -> tuple[int, ...]:
    g = conv.groups
    return (g, conv.in_channels // g, *conv.kernel, conv.group_out_computed)


def pack_weights(spec: DCACSpec, graph: dict[str, Any]) -> list[np.ndarray]:
    """The operator's weight arguments from the graph's constants: conv weights in OIHW,
    biases and the scale as anything that broadcasts per channel along NCHW axis 1, a missing
    bias as None. Raises ValueError for a constant that is not per-channel."""
    packed = []
    for name, shape in zip(WEIGHTS, spec.weight_shapes(), strict=True):
        arr = graph.get(name)
        if arr is None:
            packed.append(np.zeros(shape, dtype="float32"))
        elif name in ("w1", "w2"):
            g, cin, kh, kw, computed = shape
            grouped = arr.reshape(g, -1, cin, kh, kw).transpose(0, 2, 3, 4, 1)
            pad = [(0, 0)] * 4 + [(0, computed - grouped.shape[-1])]
            packed.append(np.pad(grouped, pad))
        elif name == "w3":
            packed.append(arr.reshape(shape[1], shape[0]).T)
        elif name in ("b1", "b2"):  # per computed channel, zero on the padding
            conv = spec.conv1 if name == "b1" else spec.conv2
            grouped = _per_channel(name, arr, conv.out_channels).reshape(conv.groups, -1)
            pad = [(0, 0), (0, conv.group_out_computed - conv.group_out)]
            packed.append(np.pad(grouped, pad).reshape(-1))
        else:
            packed.append(_per_channel(name, arr, shape[0]))
    return [np.ascontiguousarray(a, dtype="float32") for a in packed]


def _per_channel(name: str, arr: np.ndarray, channels: int) -> np.ndarray:
    if arr.ndim > 4:
        raise ValueError(f"{name} has rank {arr.ndim}")
    arr4 = arr.reshape((1,) * (4 - arr.ndim) + arr.shape)
    if arr4.shape[0] != 1 or arr4.shape[2:] != (1, 1) or arr4.shape[1] not in (1, channels):
        raise ValueError(f"{name} {list(arr.shape)} is not a per-channel constant")
    return np.broadcast_to(arr4.reshape(-1), (channels,))


def _pool_padded(data: Any, pool: Pool, pad: tuple[int, int, int, int], in_hw: tuple[int, int],
                 name: str, channels: int | None = None, channel: Any = None) -> Any:
    """Max pool of ``data`` written into a zero border of ``pad`` for the next conv;
    ``channels`` real channels, read from ``data`` at ``channel(c)``.

    The window is unrolled into a max expression (pools are 2x2) rather than a reduction, so
    that the block stays spatial: a schedule may inline it or compute it anywhere."""
    from functools import reduce

    from tvm import te, tirx

    n, c = data.shape[0], channels or data.shape[1]
    channel = channel or (lambda ch: ch)  # where real channel ``ch`` sits in ``data``
    (ph, pw), (sh, sw), (oh, ow) = pool.size, pool.stride, pool.out
    top, left, bottom, right = pad
    lowest = tirx.min_value(data.dtype)
    # Only ceil-mode windows at the far edge can run past the map.
    clip_y = in_hw[0] - (oh - 1) * sh < ph
    clip_x = in_hw[1] - (ow - 1) * sw < pw

    def window(b: Any, ch: Any, i: Any, j: Any) -> Any:
        values = []
        for dy in range(ph):
            for dx in range(pw):
                y, x = i * sh + dy, j * sw + dx
                bounds = ([y < in_hw[0]] if clip_y and dy else []) + \
                    ([x < in_hw[1]] if clip_x and dx else [])
                v = data[b, channel(ch), te.min(y, in_hw[0] - 1), te.min(x, in_hw[1] - 1)] \
                    if bounds else data[b, channel(ch), y, x]
                values.append(tirx.Select(tirx.all(*bounds), v, lowest) if bounds else v)
        return reduce(te.max, values)

    def padded(b: Any, ch: Any, i: Any, j: Any) -> Any:
        inside = tirx.all(i >= top, i < top + oh, j >= left, j < left + ow)
        return tirx.if_then_else(inside, window(b, ch, i - top, j - left),
                                 tirx.const(0, data.dtype))

    return te.compute((n, c, oh + top + bottom, ow + left + right), padded, name=name)


def _grouped_conv(data: Any, weight: Any, conv: Conv, name: str) -> Any:
    """Grouped conv over a padded input, weight (groups, in/group, kh, kw, out/group); its
    output has ``group_out_computed`` channels per group (see ``Conv.channel``)."""
    from tvm import te

    n = data.shape[0]
    _, cin, kh, kw, cout = _grouped_shape(conv)
    rc = te.reduce_axis((0, cin), name=f"{name}_rc")
    ry = te.reduce_axis((0, kh), name=f"{name}_ry")
    rx = te.reduce_axis((0, kw), name=f"{name}_rx")
    return te.compute(
        (n, conv.groups * cout, *conv.out),
        lambda b, o, i, j: te.sum(
            data[b, o // cout * cin + rc, i + ry, j + rx] * weight[o // cout, rc, ry, rx, o % cout],
            axis=[rc, ry, rx]),
        name=name)


def _nearest(size_in: int, size_out: int) -> Any:
    """The nearest source index for an output index, exactly as TOPI's resize2d computes it
    (asymmetric coordinates, floor rounding, clipped)."""
    from tvm import te, tirx
    from tvm.topi.image.resize import can_convert_multiply_to_intdiv, get_closest_index, get_inx

    src, dst = tirx.const(size_in, "int32"), tirx.const(size_out, "int32")
    int_div = can_convert_multiply_to_intdiv(src, dst)

    def index(x: Any) -> Any:
        nearest = get_closest_index(get_inx(x, src, dst, "asymmetric", use_int_div=int_div),
                                    "floor", None, use_int_div=int_div)
        return te.max(te.min(nearest, size_in - 1), 0)

    return index


def dcac_compute(spec: DCACSpec) -> tuple[list[Any], Any]:
    """TE placeholders (V, then ``WEIGHTS``) and the output tensor of the block."""
    from tvm import te

    dt = spec.dtype
    v = te.placeholder((spec.batch, spec.channels, spec.height, spec.width), dt, name="v")
    w1, b1, w2, b2, w3, b3, s = (
        te.placeholder(shape, dt, name=name)
        for shape, name in zip(spec.weight_shapes(), WEIGHTS, strict=True))
    q1p = _pool_padded(v, spec.pool1, spec.conv1.padding, (spec.height, spec.width), "q1p")
    k1 = _grouped_conv(q1p, w1, spec.conv1, "k1")
    # The activations run over the computed channels (the biases are padded alike), so that
    # they stay elementwise on the conv: a schedule computes them in the conv's epilogue.
    k1a = te.compute(k1.shape, lambda b, e, i, j: fast_silu(k1[b, e, i, j] + b1[e]), name="k1a")
    q2p = _pool_padded(k1a, spec.pool2, spec.conv2.padding, spec.conv1.out, "q2p",
                       channels=spec.embed, channel=spec.conv1.channel)
    k2 = _grouped_conv(q2p, w2, spec.conv2, "k2")
    k2a = te.compute(k2.shape, lambda b, e, i, j: fast_silu(k2[b, e, i, j] + b2[e]), name="k2a")
    re = te.reduce_axis((0, spec.expand_in), name="a0_re")
    h2, w2_ = spec.condensed
    # The 1x1 expansion over the flattened condensed map (its taps make the flat map
    # contiguous). Flat in the definition, not by fusing rows and columns in a schedule: a
    # tile of a fused loop that does not divide the row width makes the write-back of its
    # accumulators cover whole rows, and it overwrote other tiles' results (72x72 was 26 % off).
    a0 = te.compute(
        (spec.batch, spec.channels, h2 * w2_),
        lambda b, c, f: te.sum(
            k2a[b, spec.conv2.channel(re), f // w2_, f % w2_] * w3[re, c], axis=re),
        name="a0")
    # ``t`` stays flat too: a consumer indexing a0[i * W2 + j] leaves TVM to invert that
    # index when it computes ``t`` at the expansion's loop, which it does not do exactly.
    t = te.compute(a0.shape, lambda b, c, f: 1.0 + s[c] * fast_sigmoid(a0[b, c, f] + b3[c]),
                   name="t")
    near_h, near_w = _nearest(h2, spec.height), _nearest(w2_, spec.width)
    tw = te.compute((spec.batch, spec.channels, h2, spec.width),
                    lambda b, c, i, x: t[b, c, i * w2_ + near_w(x)], name="tw")
    out = te.compute(v.shape, lambda b, c, y, x: v[b, c, y, x] * tw[b, c, near_h(y), x],
                     name=OUTPUT_BLOCK)
    return [v, w1, b1, w2, b2, w3, b3, s], out


def dcac_prim_func(spec: DCACSpec) -> Any:
    """The operator as an (unscheduled) TensorIR PrimFunc, annotated for MetaSchedule."""
    from tvm import te
    from tvm.s_tir import Schedule

    inputs, out = dcac_compute(spec)
    func = te.create_prim_func([*inputs, out])
    sch = Schedule(func)
    root = sch.get_sblock("root")
    for block in [root, *sch.get_child_blocks(root)]:
        rule = SCHEDULE_RULE if sch.get(block).name_hint == OUTPUT_BLOCK else "None"
        sch.annotate(block, "schedule_rule", rule)
    # No global symbol: the module that adds the function names it (see fuse_dcac).
    return sch.mod["main"].without_attr("global_symbol").with_attrs({
        "op_pattern": OP_PATTERN_OPAQUE,
        FUNC_ATTR: spec.name,
    })
