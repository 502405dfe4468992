"""The channel-blocked convolution: conv2d from any ``ChannelLayout`` to a blocked one.

One TE definition serves dense, grouped and depthwise convolutions, any kernel, stride and
padding, reading NCHW (the stem, whose 3 input channels are not worth blocking) or a blocked
layout, and always writing a blocked one:

    out[n, ob, y, x, oi] = sum over (rc, ry, rx) of
        in[n, channel(group(ob, oi), rc), y * sh + ry, x * sw + rx] * w[ob, rc, ry, rx, oi]

Weights are packed at compile time as (O'/b, R, kh, kw, b): output channels innermost, so a
kernel multiplies one broadcast input value by one weight vector per tap. R, the input
positions a group reduces over, is the group's whole padded span when the input is blocked
(whole blocks, zero weights on pad channels: the reduction splits into blocks without index
arithmetic), and its real channels otherwise.

Block names and annotations are what ``schedules/blocked_conv.py`` schedules: ``pad`` (the
input with its zero border, only when the conv pads) and ``conv``, whose ``schedule_rule``
names our MetaSchedule rule and whose ``blocks_per_group``, ``in_block`` and
``vector_registers`` tell it how to tile.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .channel_layout import ChannelLayout

SCHEDULE_RULE = "blocked_conv"
OUTPUT_BLOCK = "conv"
# Relax's OpPatternKind::kOutEWiseFusable: FuseOps fuses the element-wise ops after it.
OP_PATTERN_OUT_ELEMWISE_FUSABLE = 4


@dataclass(frozen=True)
class BlockedConv:
    """Everything that shapes one blocked convolution (the weights are an argument)."""

    batch: int
    height: int
    width: int
    in_layout: ChannelLayout
    out_layout: ChannelLayout  # blocked
    groups: int
    kernel: tuple[int, int]
    strides: tuple[int, int]
    padding: tuple[int, int, int, int]  # top, left, bottom, right

    @property
    def out_hw(self) -> tuple[int, int]:
        (kh, kw), (sh, sw), (t, left, b, r) = self.kernel, self.strides, self.padding
        return ((self.height + t + b - kh) // sh + 1, (self.width + left + r - kw) // sw + 1)

    @property
    def in_per_group(self) -> int:
        return self.in_layout.channels // self.groups

    @property
    def out_per_group(self) -> int:
        return self.out_layout.channels // self.groups

    @property
    def lane_to_lane(self) -> bool:
        """A depthwise conv whose input and output share one blocked layout: output position
        p reads input position p, pads included (finite values weighed by zero). The general
        index maps a pad lane to a real channel (``ChannelLayout.source``, a ``min``), which
        turns every input load into a gather when the channels are not whole blocks (72 on
        AVX-512: 4-5x slower, measured in MobileNetV3-L)."""
        return (self.in_layout.blocked and self.in_layout == self.out_layout
                and self.in_per_group == 1 and self.out_per_group == 1)

    @property
    def reduce_per_group(self) -> int:
        """Input positions one group reduces over (see the module docstring)."""
        il = self.in_layout
        if self.lane_to_lane:
            return 1
        if not il.blocked:
            return self.in_per_group
        if self.groups == 1:
            return il.padded
        if il.groups == self.groups:
            return il.padded_per_group
        if il.groups != 1:
            raise ValueError(f"input padded for {il.groups} groups, conv has {self.groups}")
        return self.in_per_group  # real channels in place (pads only at the end)

    @property
    def blocks_per_group(self) -> int:
        """Output blocks of one conv group; all of them for a dense conv, and for a depthwise
        one, whose groups are single channels within a block."""
        ol = self.out_layout
        blocks = ol.padded // ol.block
        if self.groups == 1 or self.out_per_group < ol.block:
            return blocks
        return blocks // self.groups

    def check(self) -> None:
        """Output blocks must not straddle groups (their lanes would read different inputs)."""
        ol = self.out_layout
        depthwise = self.in_per_group == 1 and self.out_per_group == 1
        if self.groups > 1 and not depthwise and not (
                ol.groups == self.groups or
                (ol.groups == 1 and self.out_per_group % ol.block == 0)):
            raise ValueError(f"output layout {ol} splits the conv's {self.groups} groups")
        self.reduce_per_group  # noqa: B018 (raises for an input padded for other groups)

    def weight_shape(self) -> tuple[int, ...]:
        ob = self.out_layout.block
        return (self.out_layout.padded // ob, self.reduce_per_group, *self.kernel, ob)

    def pack_weight(self, weight: np.ndarray) -> np.ndarray:
        """OIHW (I per group) -> (O'/b, R, kh, kw, b), zeros for pad outputs and inputs."""
        o, i = self.out_layout, self.in_layout
        cin = self.in_per_group
        full = np.zeros((o.padded, self.reduce_per_group, *weight.shape[2:]), weight.dtype)
        # Real input channel r of a group sits at offset position(r) of the group's span.
        columns = [i.position(r) for r in range(cin)] if self.reduce_per_group != cin \
            else list(range(cin))
        for oc in range(o.channels):
            full[o.position(oc), columns] = weight[oc]
        return np.ascontiguousarray(
            full.reshape(o.padded // o.block, o.block, *full.shape[1:]).transpose(0, 2, 3, 4, 1))


def blocked_conv_compute(conv: BlockedConv, data: Any, weight: Any, registers: int) -> Any:
    """The output tensor of ``conv`` over TE tensors ``data`` (its input layout) and
    ``weight`` (packed); ``registers``: the target's vector registers (bounds the schedule's
    register tile)."""
    from tvm import te, tirx

    conv.check()
    il, ol = conv.in_layout, conv.out_layout
    (kh, kw), (sh, sw), (pt, pl, pb, pr) = conv.kernel, conv.strides, conv.padding
    oh, ow = conv.out_hw
    src = data
    if any(conv.padding):
        zero = tirx.const(0, data.dtype)

        def padded(*idx: Any) -> Any:
            b, c, y, x, *lane = idx
            inside = tirx.all(y >= pt, y < pt + conv.height, x >= pl, x < pl + conv.width)
            return tirx.if_then_else(inside, data[(b, c, y - pt, x - pl, *lane)], zero)

        src = te.compute(il.shape(conv.batch, conv.height + pt + pb, conv.width + pl + pr),
                         padded, name="pad")
    span = conv.reduce_per_group
    rc = te.reduce_axis((0, span), name="rc")
    ry = te.reduce_axis((0, kh), name="ry")
    rx = te.reduce_axis((0, kw), name="rx")
    ob, opg, cin = ol.block, conv.out_per_group, conv.in_per_group

    def body(b: Any, cb: Any, y: Any, x: Any, ci: Any) -> Any:
        yy, xx = y * sh + ry, x * sw + rx
        if conv.lane_to_lane:
            return te.sum(src[b, cb, yy, xx, ci] * weight[cb, rc, ry, rx, ci],
                          axis=[rc, ry, rx])
        group = ol.source(cb * ob + ci) // opg
        if il.blocked:
            q = group * span + rc
            value = src[b, q // il.block, yy, xx, q % il.block]
        else:
            value = src[b, group * cin + rc, yy, xx]
        return te.sum(value * weight[cb, rc, ry, rx, ci], axis=[rc, ry, rx])

    in_block = il.block if il.blocked and span % il.block == 0 else 1
    return te.compute((conv.batch, ol.padded // ob, oh, ow, ob), body, name=OUTPUT_BLOCK,
                      attrs={"schedule_rule": SCHEDULE_RULE,
                             "blocks_per_group": conv.blocks_per_group, "in_block": in_block,
                             "vector_registers": registers})
