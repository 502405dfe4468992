"""BlockedLayout: carry activations channel-blocked (NCHW{b}c) from convolution to convolution.

TVM's Relax CPU pipeline computes every conv2d in NCHW, vectorised along the image width:
fine on 56x56 maps, wasteful on AttendNeXt's 14x14 and 7x7 ones. Here tensors are grouped into
components that must share one layout (joined by element-wise ops, pools and means that work
channel by channel), and each component touched by a convolution gets a ``ChannelLayout``:
blocked by the target's vector width, each conv group padded to whole blocks, unless padding
would grow it by more than ``max_padding`` (AttendNeXt's stage 1, 4 groups of 10 channels,
stays NCHW: tuned NCHW kernels measured 2x faster there). Then:
- every conv2d touching a blocked component becomes ``relay_ops.blocked_conv`` (weights packed
  at compile time), reading its input's layout (NCHW for the stem) and writing its output's;
- element-wise ops, pools and H/W means run on the blocked tensors; per-channel constants
  (biases, scales) are packed at compile time;
- a classifier (matmul by constant weights) is first made a 1x1 conv (``DenseAsConv``);
- anything else (reshape, matmul, the fused DC-AC operator, the function's result) gets its
  input unpacked to NCHW first: those ``unpack``/``pack`` ops are the layout transforms the
  pass reports (``transforms``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from .blocked_conv import OP_PATTERN_OUT_ELEMWISE_FUSABLE, BlockedConv, blocked_conv_compute
from .channel_layout import ChannelLayout
from .dense_as_conv import DenseAsConv
from .exprs import op_name, static_shape, tensor_constant

# Ops that work channel by channel, so their inputs and output share a layout.
UNARY = {"relax.sigmoid", "relax.nn.relu", "relax.nn.silu", "relax.tanh", "relax.exp",
         "relax.negative", "relax.clip", "relax.nn.gelu", "relax.nn.gelu_tanh", "relax.sqrt",
         "relax.nn.leakyrelu", "relax.abs", "relax.nn.relu6"}
BINARY = {"relax.add", "relax.multiply", "relax.subtract", "relax.divide", "relax.maximum",
          "relax.minimum"}
POOLS = {"relax.nn.max_pool2d", "relax.nn.avg_pool2d"}
MEAN = "relax.mean"
CONV = "relax.nn.conv2d"
DEFAULT_MAX_PADDING = 1.25


def _per_channel(arr: np.ndarray, channels: int) -> np.ndarray | None:
    """``arr`` as (1, C, 1, 1) if it broadcasts per channel (or is a scalar) against NCHW."""
    if arr.ndim > 4:
        return None
    arr4 = arr.reshape((1,) * (4 - arr.ndim) + arr.shape)
    if arr4.shape[0] != 1 or arr4.shape[2:] != (1, 1) or arr4.shape[1] not in (1, channels):
        return None
    return np.ascontiguousarray(np.broadcast_to(arr4, (1, channels, 1, 1)))


def _is_float32_nchw_conv(call: relax.Call) -> bool:
    a = call.attrs
    data = static_shape(call.args[0])
    return (a.data_layout == "NCHW" and a.kernel_layout == "OIHW"
            and a.out_layout in ("NCHW", "") and str(call.ty.dtype) == "float32"
            and tuple(int(d) for d in a.dilation) == (1, 1) and data is not None
            and len(data) == 4 and tensor_constant(call.args[1]) is not None)


def _keeps_channels(call: relax.Call) -> bool:
    """A mean over H and W that keeps the dims (global pooling before a classifier)."""
    axes = call.attrs.axis
    return axes is not None and sorted(int(a) % 4 for a in axes) == [2, 3] and \
        bool(call.attrs.keepdims)


class _Components:
    """Union-find over the function's 4-D tensors."""

    def __init__(self) -> None:
        self.parent: dict[Any, Any] = {}

    def find(self, v: Any) -> Any:
        self.parent.setdefault(v, v)
        while self.parent[v] is not v:
            self.parent[v] = self.parent[self.parent[v]]
            v = self.parent[v]
        return v

    def union(self, a: Any, b: Any) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra is not rb:
            self.parent[ra] = rb


@dataclass
class _Constraints:
    channels: int
    convs: int = 0
    groups: set[tuple[int, int]] = field(default_factory=set)  # (groups, channels per group)


def choose_layout(constraints: _Constraints, blocks: Sequence[int],
                  max_padding: float) -> ChannelLayout | None:
    """The widest block whose padding stays within ``max_padding``; None: stay NCHW."""
    if not constraints.convs:
        return None
    c = constraints.channels
    for block in blocks:
        # Grouped convs whose groups do not fill whole blocks need per-group padding; two
        # different group counts cannot both be padded for (depthwise groups never are).
        misaligned = {g for g, per_group in constraints.groups
                      if per_group > 1 and per_group % block}
        if len(misaligned) > 1:
            continue
        layout = ChannelLayout(c, block, misaligned.pop() if misaligned else 1)
        if layout.padded <= max_padding * c:
            return layout
    return None


def assign_layouts(func: relax.Function, blocks: Sequence[int],
                   max_padding: float) -> dict[Any, ChannelLayout | None]:
    """A layout (None: NCHW) for every 4-D tensor of ``func``."""
    values = {b.var: b.value for block in func.body.blocks for b in block.bindings
              if isinstance(b, relax.VarBinding)}
    tensors = [v for v in [*func.params, *values] if len(static_shape(v) or ()) == 4]
    four_d = set(tensors)
    sets = _Components()
    for var in tensors:
        value = values.get(var)
        name = op_name(value)
        if name in UNARY or name in POOLS or (name == MEAN and _keeps_channels(value)):
            if value.args[0] in four_d:
                sets.union(var, value.args[0])
        elif name in BINARY:
            for arg in value.args:
                if arg in four_d and static_shape(arg)[1] == static_shape(var)[1]:
                    sets.union(var, arg)
    constraints = {}
    for var in tensors:
        constraints.setdefault(sets.find(var), _Constraints(static_shape(var)[1]))
    for var in tensors:
        value = values.get(var)
        if op_name(value) == CONV and _is_float32_nchw_conv(value):
            groups = int(value.attrs.groups)
            for tensor in (value.args[0], var):
                found = constraints[sets.find(tensor)]
                found.convs += 1
                if groups > 1:
                    found.groups.add((groups, static_shape(tensor)[1] // groups))
    chosen = {root: choose_layout(c, blocks, max_padding) for root, c in constraints.items()}
    # The function's inputs arrive in NCHW (a 3-channel image is not worth blocking).
    for param in func.params:
        if param in four_d:
            chosen[sets.find(param)] = None
    return {var: chosen[sets.find(var)] for var in tensors}


class _Rewriter:
    """Emits the function again with blocked tensors, converting at the edges."""

    def __init__(self, mod: tvm.IRModule, layouts: dict[Any, ChannelLayout | None],
                 registers: int) -> None:
        self.bb = relax.BlockBuilder(tvm.IRModule(
            {gv: f for gv, f in mod.functions_items() if gv.name_hint != "main"},
            attrs=mod.attrs))
        self.layouts = layouts
        self.registers = registers
        self.new: dict[Any, tuple[Any, ChannelLayout | None]] = {}
        self.in_nchw: dict[Any, Any] = {}
        self.transforms = 0
        self.blocked_convs = 0

    def nchw(self, var: Any) -> Any:
        """``var`` as it is in the original function (NCHW when 4-D)."""
        expr, layout = self.new.get(var, (var, None))
        if layout is None:
            return expr
        if var not in self.in_nchw:
            self.in_nchw[var] = self.bb.emit(self.bb.call_te(
                layout.unpack_te, expr, primfunc_name_hint="unpack_channels"))
            self.transforms += 1
        return self.in_nchw[var]

    def in_layout(self, var: Any, layout: ChannelLayout) -> Any:
        expr, have = self.new.get(var, (var, None))
        if have == layout:
            return expr
        self.transforms += 1
        return self.bb.emit(self.bb.call_te(layout.pack_te, self.nchw(var),
                                            primfunc_name_hint="pack_channels"))

    def function(self, func: relax.Function) -> tvm.IRModule:
        bb = self.bb
        with bb.function("main", list(func.params),
                         attrs=dict(func.attrs) if func.attrs else None):
            with bb.dataflow():
                for block in func.body.blocks:
                    for binding in block.bindings:
                        self.binding(binding.var, binding.value)
                result = self._with_nchw_vars(func.body.body)
                output = bb.emit_output(result)
            bb.emit_func_output(output)
        return bb.get()

    def binding(self, var: Any, value: Any) -> None:
        layout = self.layouts.get(var)
        name = op_name(value)
        result = None
        if layout is not None:
            if name == CONV and _is_float32_nchw_conv(value):
                result = self._conv(var, value, layout)
            elif name in UNARY:
                result = relax.Call(value.op, [self.in_layout(value.args[0], layout),
                                               *value.args[1:]], value.attrs)
            elif name in POOLS:
                result = self._pool(value, layout)
            elif name == MEAN:
                result = relax.op.mean(self.in_layout(value.args[0], layout), axis=[2, 3],
                                       keepdims=True)
            elif name in BINARY:
                result = self._binary(value, layout)
        if result is None:  # not layout-aware: the op runs as before, on NCHW inputs
            self.new[var] = (self.bb.emit(self._with_nchw_vars(value)), None)
        else:
            self.new[var] = (self.bb.emit(result), layout)

    def _conv(self, var: Any, call: relax.Call, layout: ChannelLayout) -> Any:
        data = call.args[0]
        n, c, h, w = static_shape(data)
        source = self.layouts.get(data) or ChannelLayout(c)
        a = call.attrs
        conv = BlockedConv(batch=n, height=h, width=w, in_layout=source, out_layout=layout,
                           groups=int(a.groups), kernel=tuple(static_shape(call.args[1])[2:]),
                           strides=tuple(int(s) for s in a.strides),
                           padding=tuple(int(p) for p in a.padding))
        weight = relax.const(conv.pack_weight(tensor_constant(call.args[1])))
        inp = self.in_layout(data, source) if source.blocked else self.nchw(data)
        self.blocked_convs += 1
        return self.bb.call_te(
            lambda d, wt: blocked_conv_compute(conv, d, wt, registers=self.registers),
            inp, weight, primfunc_name_hint="blocked_conv2d",
            primfunc_attrs={"op_pattern": OP_PATTERN_OUT_ELEMWISE_FUSABLE})

    def _pool(self, call: relax.Call, layout: ChannelLayout) -> Any:
        a = call.attrs
        kwargs = dict(pool_size=[int(v) for v in a.pool_size],
                      strides=[int(v) for v in a.strides],
                      padding=[int(v) for v in a.padding],
                      dilation=[int(v) for v in a.dilation], ceil_mode=bool(a.ceil_mode),
                      layout=f"NCHW{layout.block}c")
        data = self.in_layout(call.args[0], layout)
        if op_name(call) == "relax.nn.avg_pool2d":
            return relax.op.nn.avg_pool2d(data, count_include_pad=bool(a.count_include_pad),
                                          **kwargs)
        return relax.op.nn.max_pool2d(data, **kwargs)

    def _binary(self, call: relax.Call, layout: ChannelLayout) -> Any:
        """The op on blocked tensors. Pad channels must stay finite (a conv weighs them with
        zero, and 0 x inf is NaN): a scalar stays a scalar, a per-channel divisor is packed
        with ones, and a tensor is never divided by a blocked tensor (whose pads may be 0)."""
        divide = op_name(call) == "relax.divide"
        args = []
        for i, arg in enumerate(call.args):
            divisor = divide and i == 1
            if self.layouts.get(arg) == layout and not divisor:
                args.append(self.in_layout(arg, layout))
                continue
            arr = tensor_constant(arg)
            if arr is not None and arr.size == 1:
                args.append(arg)
                continue
            per_channel = _per_channel(arr, layout.channels) if arr is not None else None
            if per_channel is None:
                return None
            args.append(relax.const(layout.pack(per_channel, pad=1.0 if divisor else 0.0)))
        return relax.Call(call.op, args, call.attrs)

    def _with_nchw_vars(self, expr: Any) -> Any:
        rewriter = self

        @mutator
        class _NCHW(PyExprMutator):
            def visit_var_(self, v: Any) -> Any:
                return rewriter.nchw(v) if v in rewriter.new else v

            def visit_dataflow_var_(self, v: Any) -> Any:
                return self.visit_var_(v)

        return _NCHW().visit_expr(expr)


@tvm.transform.module_pass(opt_level=0, name="tvmc_attend.BlockedLayout")
class BlockedLayout:
    """``main``'s convolutions and the ops between them in channel-blocked layouts.

    ``blocks``: candidate block sizes, widest first (the target's vector widths);
    ``registers``: its vector registers (the schedule's register tile). After a run,
    ``blocked_convs``, ``transforms`` and ``layouts`` (one line per component) say what it did.
    """

    def __init__(self, blocks: Sequence[int], registers: int,
                 max_padding: float = DEFAULT_MAX_PADDING) -> None:
        self.blocks = tuple(blocks)
        self.registers = registers
        self.max_padding = max_padding
        self.blocked_convs = 0
        self.transforms = 0
        self.layouts: list[str] = []

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext,
                         ) -> tvm.IRModule:
        # A classifier streams its weights best as a blocked conv: made one where it blocks.
        mod = DenseAsConv(lambda outputs: choose_layout(
            _Constraints(outputs, convs=1), self.blocks, self.max_padding) is not None)(mod)
        func = mod["main"]
        layouts = assign_layouts(func, self.blocks, self.max_padding)
        rewriter = _Rewriter(mod, layouts, self.registers)
        new_mod = rewriter.function(func)
        self.blocked_convs, self.transforms = rewriter.blocked_convs, rewriter.transforms
        self.layouts = sorted({layout.name for layout in layouts.values() if layout})
        return relax.transform.DeadCodeElimination()(new_mod)
