"""Channel layouts: NCHW, or channel-blocked NCHW{b}c with each channel group padded.

A ``ChannelLayout`` says where each of a tensor's C channels is stored. Blocked, the channel
axis is cut into blocks of ``block`` channels (the vector width: 16 floats on AVX-512, 8 on
AVX2, 4 on NEON) stored innermost, so a kernel loads one output-channel vector at a time. The
channels are split into ``groups`` runs (a grouped convolution's groups) and each run is padded
with zero channels to whole blocks, so that no block straddles two groups: AttendNeXt's
stage-3 tensor (4 groups of 44) is stored as 4 x 48 channels, 12 blocks of 16.

Padded channels may hold any finite value, as nothing reads them: a convolution weighs them
with zeros, and element-wise ops keep them per channel. Finite matters: 0 x inf is NaN, so
constants that divide are padded with ones (see ``BlockedLayout``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ChannelLayout:
    channels: int
    block: int = 1  # 1: plain NCHW
    groups: int = 1  # runs padded separately to whole blocks

    @property
    def blocked(self) -> bool:
        return self.block > 1

    @property
    def per_group(self) -> int:
        return self.channels // self.groups

    @property
    def padded_per_group(self) -> int:
        return -(-self.per_group // self.block) * self.block

    @property
    def padded(self) -> int:
        return self.groups * self.padded_per_group

    @property
    def name(self) -> str:
        if not self.blocked:
            return "NCHW"
        if self.padded == self.channels:
            return f"NCHW{self.block}c ({self.channels} channels)"
        runs = f" in {self.groups} groups" if self.groups > 1 else ""
        return f"NCHW{self.block}c ({self.channels} -> {self.padded} channels{runs})"

    def shape(self, n: int, h: int, w: int) -> tuple[int, ...]:
        if not self.blocked:
            return (n, self.channels, h, w)
        return (n, self.padded // self.block, h, w, self.block)

    def position(self, c: Any) -> Any:
        """Padded position of real channel ``c`` (an int or a TE expression)."""
        if self.padded_per_group == self.per_group:
            return c
        return c // self.per_group * self.padded_per_group + c % self.per_group

    def source(self, p: Any) -> Any:
        """A real channel for padded position ``p``: itself, or for a pad the last channel
        of its group (any valid index: what a pad reads is weighed with zero)."""
        if self.padded_per_group == self.per_group:
            return p
        from tvm import te

        return p // self.padded_per_group * self.per_group + te.min(
            p % self.padded_per_group, self.per_group - 1)

    def is_pad(self, p: Any) -> Any:
        """True where padded position ``p`` holds no real channel."""
        from tvm import tirx

        if self.padded == self.channels:
            return tirx.const(False)
        return p % self.padded_per_group >= self.per_group

    # -- constants are packed at compile time, in numpy

    def pack(self, arr: np.ndarray, pad: float = 0.0) -> np.ndarray:
        """(N, C, H, W) -> this layout; pad channels hold ``pad`` (zero, or one for a
        divisor)."""
        n, c, h, w = arr.shape
        out = np.full((n, self.padded, h, w), pad, arr.dtype)
        out[:, [self.position(i) for i in range(c)]] = arr
        if not self.blocked:
            return out
        return np.ascontiguousarray(
            out.reshape(n, self.padded // self.block, self.block, h, w).transpose(0, 1, 3, 4, 2))

    def unpack(self, arr: np.ndarray) -> np.ndarray:
        """This layout -> (N, C, H, W)."""
        if self.blocked:
            n, cb, h, w, b = arr.shape
            arr = arr.transpose(0, 1, 4, 2, 3).reshape(n, cb * b, h, w)
        return arr[:, [self.position(i) for i in range(self.channels)]]

    # -- and tensors at run time, where a blocked tensor meets an op that needs NCHW

    def pack_te(self, x: Any) -> Any:
        """TE: an NCHW tensor in this layout (zero pads)."""
        from tvm import te, tirx

        n, _, h, w = x.shape

        def body(b: Any, cb: Any, y: Any, col: Any, ci: Any) -> Any:
            p = cb * self.block + ci
            return tirx.if_then_else(self.is_pad(p), tirx.const(0, x.dtype),
                                     x[b, self.source(p), y, col])

        return te.compute((n, self.padded // self.block, h, w, self.block), body,
                          name="pack_channels")

    def unpack_te(self, x: Any) -> Any:
        """TE: a tensor in this layout back in NCHW."""
        from tvm import te

        n, _, h, w, _ = x.shape

        def body(b: Any, c: Any, y: Any, col: Any) -> Any:
            p = self.position(c)
            return x[b, p // self.block, y, col, p % self.block]

        return te.compute((n, self.channels, h, w), body, name="unpack_channels")
