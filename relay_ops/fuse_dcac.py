"""FuseDCAC: find DC-AC blocks in a Relax module (after BatchNorm folding) and call the fused
operator instead.

What a DC-AC looks like once imported, from either frontend (torch.export or ONNX):

    q1 = max_pool2d(V)                  k1 = silu(conv2d(q1, W1) [+ b1])
    q2 = max_pool2d(k1)                 k2 = silu(conv2d(q2, W2) [+ b2])
    a0 = conv2d_1x1(k2, W3) [+ b3]      g  = sigmoid(resize2d_nearest(a0, (H, W)))
    out = V + product(V, g, S)          (S a per-channel constant)

SiLU comes as ``x * sigmoid(x)`` (either operand order) or ``nn.silu``; bias adds take either
operand order and may be missing; the product ``V * g * S`` may be associated and ordered any
way. Every ``resize2d`` is a candidate block: the matcher walks from it to the pools above and
the residual add below, checking each op's attributes and that no intermediate value is used
outside the block. A match is replaced by one ``call_tir`` of the fused operator
(``dcac_op``), with the weights as constant arguments; the rest of the chain becomes dead code.
A candidate that does not match is left as it is, and reported with the reason: after a run,
the pass instance says how many blocks it fused (``fused``) and why it left the others
(``unmatched``), for the bundle's metadata and the log.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from .dcac_op import Conv, DCACSpec, Pool, dcac_prim_func, pack_weights
from .exprs import op_name, static_shape, tensor_constant


class _NoMatch(Exception):
    """A candidate is not a DC-AC block we can fuse (the message says why)."""


def _static_shape(expr: Any) -> tuple[int, ...]:
    shape = static_shape(expr)
    if shape is None:
        raise _NoMatch("a tensor in the block has no static shape")
    return shape


def _ints(values: Any) -> tuple[int, ...]:
    return tuple(int(v) for v in values)


class _Function:
    """The bindings of one Relax function: who produces each variable, how often it is used."""

    def __init__(self, func: relax.Function) -> None:
        self.value: dict[relax.Var, Any] = {}
        self.uses: dict[relax.Var, int] = {}
        for block in func.body.blocks:
            for binding in block.bindings:
                if isinstance(binding, relax.VarBinding):
                    self.value[binding.var] = binding.value
                    self._count(binding.value)
        self._count(func.body.body)
        self.consumers: dict[relax.Var, list[relax.Var]] = {}
        for var, value in self.value.items():
            for arg in self._args(value):
                self.consumers.setdefault(arg, []).append(var)

    @staticmethod
    def _args(value: Any) -> list[relax.Var]:
        found: list[relax.Var] = []
        relax.analysis.post_order_visit(
            value, lambda e: found.append(e) if isinstance(e, relax.Var) else None)
        return found

    def _count(self, expr: Any) -> None:
        for var in self._args(expr):
            self.uses[var] = self.uses.get(var, 0) + 1

    def producer(self, expr: Any, *ops: str) -> relax.Call:
        """The call that binds ``expr``, which must be one of ``ops``."""
        value = self.value.get(expr) if isinstance(expr, relax.Var) else None
        name = op_name(value)
        if name not in ops:
            found = name or type(value if value is not None else expr).__name__
            raise _NoMatch(f"expected {' or '.join(ops)}, found {found}")
        return value


@dataclass
class _Match:
    """The pieces of one matched block."""

    inner: list[relax.Var] = field(default_factory=list)  # values computed inside the block
    weights: dict[str, np.ndarray | None] = field(default_factory=dict)  # graph layouts
    args: list[np.ndarray] = field(default_factory=list)  # the operator's layouts


class _Matcher:
    def __init__(self, fn: _Function) -> None:
        self.fn = fn

    def match(self, resize_var: relax.Var) -> tuple[DCACSpec, _Match, relax.Var, relax.Var]:
        """Match the block around ``resize_var``; return (spec, match, V, output var)."""
        m = _Match()
        resize = self.fn.value[resize_var]
        a = resize.attrs
        if a.method != "nearest_neighbor" or a.coordinate_transformation_mode != "asymmetric" \
                or a.rounding_method not in ("floor", "") or a.layout != "NCHW":
            raise _NoMatch(f"resize2d is {a.method}/{a.coordinate_transformation_mode}/"
                           f"{a.rounding_method}, not nearest/asymmetric/floor (PyTorch nearest)")
        m.inner.append(resize_var)
        a0, m.weights["b3"] = self._bias(resize.args[0], m)
        conv3 = self.fn.producer(a0, "relax.nn.conv2d")
        m.inner.append(a0)
        k2a = conv3.args[0]
        spec3 = self._conv(conv3, "w3", m)
        if spec3.kernel != (1, 1) or spec3.groups != 1 or any(spec3.padding):
            raise _NoMatch("the expansion conv is not a 1x1 conv without groups and padding")
        spec2, pool2, k1a = self._condenser(k2a, 2, m)
        spec1, pool1, v = self._condenser(k1a, 1, m)
        out_var = self._gate(resize_var, v, m)

        n, c, h, w = _static_shape(v)
        if str(v.ty.dtype) != "float32":
            raise _NoMatch(f"the block computes in {v.ty.dtype}; the fused operator is float32")
        if _static_shape(resize_var) != (n, c, h, w):
            raise _NoMatch("resize2d does not restore the input size")
        if spec1.in_channels != c or spec3.out_channels != c or \
                spec2.in_channels != spec1.out_channels or spec3.in_channels != spec2.out_channels:
            raise _NoMatch("channel counts do not chain")
        spec = DCACSpec(batch=n, channels=c, height=h, width=w, pool1=pool1, conv1=spec1,
                        pool2=pool2, conv2=spec2, expand_in=spec3.in_channels)
        try:
            m.args = pack_weights(spec, m.weights)
        except ValueError as err:
            raise _NoMatch(str(err)) from None
        self._check_private(m, v, out_var)
        return spec, m, v, out_var

    # ------------------------------------------------------------------------------ pieces

    def _condenser(self, k: Any, index: int, m: _Match) -> tuple[Conv, Pool, Any]:
        """``k`` = silu(conv_i(max_pool2d(x)) [+ b_i]) -> (conv_i, its pool, x)."""
        k = self._silu(k, m)
        k, m.weights[f"b{index}"] = self._bias(k, m)
        conv = self.fn.producer(k, "relax.nn.conv2d")
        m.inner.append(k)
        spec = self._conv(conv, f"w{index}", m)
        pooled = conv.args[0]
        pool = self._pool(pooled, m)
        return spec, pool, self.fn.value[pooled].args[0]

    def _pool(self, var: relax.Var, m: _Match) -> Pool:
        pool = self.fn.producer(var, "relax.nn.max_pool2d")
        a = pool.attrs
        if any(_ints(a.padding)) or _ints(a.dilation) != (1, 1) or a.layout != "NCHW":
            raise _NoMatch("a max pool has padding, dilation or a non-NCHW layout")
        m.inner.append(var)
        return Pool(size=_ints(a.pool_size), stride=_ints(a.strides),
                    out=_static_shape(var)[2:])

    def _conv(self, conv: relax.Call, name: str, m: _Match) -> Conv:
        a = conv.attrs
        if _ints(a.strides) != (1, 1) or _ints(a.dilation) != (1, 1) or a.data_layout != "NCHW" \
                or a.kernel_layout != "OIHW" or a.out_layout not in ("NCHW", ""):
            raise _NoMatch("a conv is strided, dilated or not NCHW/OIHW")
        m.weights[name] = self._constant(conv.args[1], "a conv weight")
        oc, _, kh, kw = m.weights[name].shape
        return Conv(out_channels=int(oc), in_channels=_static_shape(conv.args[0])[1],
                    groups=int(a.groups), kernel=(int(kh), int(kw)),
                    padding=_ints(a.padding), out=_static_shape(conv)[2:])

    def _bias(self, var: Any, m: _Match) -> tuple[Any, np.ndarray | None]:
        """``var`` = x + b (either order) -> (x, b); otherwise (var, None)."""
        value = self.fn.value.get(var) if isinstance(var, relax.Var) else None
        if op_name(value) != "relax.add":
            return var, None
        lhs, rhs = value.args
        if tensor_constant(lhs) is not None:
            lhs, rhs = rhs, lhs
        m.inner.append(var)
        return lhs, self._constant(rhs, "a bias")

    def _silu(self, var: Any, m: _Match) -> Any:
        """``var`` = silu(x), as nn.silu or x * sigmoid(x) (either order) -> x."""
        value = self.fn.producer(var, "relax.nn.silu", "relax.multiply")
        m.inner.append(var)
        if op_name(value) == "relax.nn.silu":
            return value.args[0]
        for gate, x in (value.args, value.args[::-1]):
            sig = self.fn.value.get(gate) if isinstance(gate, relax.Var) else None
            if op_name(sig) == "relax.sigmoid" and sig.args[0].same_as(x):
                m.inner.append(gate)
                return x
        raise _NoMatch("expected SiLU (x * sigmoid(x)), found another multiply")

    def _gate(self, resize_var: relax.Var, v: Any, m: _Match) -> relax.Var:
        """Match ``V + V * sigmoid(resize) * S`` below the resize; return the output var."""
        sig = self._only_consumer(resize_var, "relax.sigmoid")
        m.inner.append(sig)
        node, leaves = sig, [sig]
        # Climb the chain of multiplies until the residual add; collect the product's leaves.
        while True:
            consumer = self._only_consumer(node, "relax.multiply", "relax.add")
            call = self.fn.value[consumer]
            other = call.args[1] if call.args[0].same_as(node) else call.args[0]
            if op_name(call) == "relax.add":
                if not other.same_as(v):
                    raise _NoMatch("the residual add does not add the block's input")
                break
            m.inner.append(consumer)
            leaves.extend(self._product_leaves(other, m))
            node = consumer
        scale = [leaf for leaf in leaves if tensor_constant(leaf) is not None]
        inputs = [leaf for leaf in leaves if isinstance(leaf, relax.Var) and leaf.same_as(v)]
        if len(leaves) != 3 or len(scale) != 1 or len(inputs) != 1:
            raise _NoMatch("the gate is not V * sigmoid(A) * S with a constant scale S")
        m.weights["s"] = tensor_constant(scale[0])
        return consumer

    def _product_leaves(self, expr: Any, m: _Match) -> list[Any]:
        """Leaves of a product subtree private to the block (e.g. the ``S * V`` of
        ``(S * V) * g``)."""
        value = self.fn.value.get(expr) if isinstance(expr, relax.Var) else None
        if op_name(value) == "relax.multiply" and self.fn.uses.get(expr, 0) == 1:
            m.inner.append(expr)
            return [leaf for arg in value.args for leaf in self._product_leaves(arg, m)]
        return [expr]

    def _only_consumer(self, var: relax.Var, *ops: str) -> relax.Var:
        consumers = self.fn.consumers.get(var, [])
        if len(consumers) != 1 or self.fn.uses.get(var, 0) != 1:
            raise _NoMatch(f"{var.name} is used outside the block")
        consumer = consumers[0]
        self.fn.producer(consumer, *ops)
        return consumer

    @staticmethod
    def _constant(expr: Any, what: str) -> np.ndarray:
        value = tensor_constant(expr)
        if value is None:
            raise _NoMatch(f"{what} is not a constant (bind the parameters first)")
        return value

    def _check_private(self, m: _Match, v: Any, out_var: relax.Var) -> None:
        """Every value computed inside the block must be used only inside it."""
        inner = {var for var in m.inner if not var.same_as(v)}
        allowed = inner | {out_var}
        for var in inner:
            consumers = self.fn.consumers.get(var, [])
            # ``uses`` also counts the function's return value, which no binding consumes.
            if len(consumers) != self.fn.uses.get(var, 0) or \
                    any(c not in allowed for c in consumers):
                raise _NoMatch(f"{var.name} is used outside the block")


@mutator
class _Rewriter(PyExprMutator):
    """Replaces the residual add of each matched block by the fused operator's call."""

    def __init__(self, mod: tvm.IRModule) -> None:
        super().__init__(mod)
        self.calls: dict[relax.Var, relax.Call] = {}
        self.funcs: dict[DCACSpec, tvm.ir.GlobalVar] = {}

    def add_match(self, spec: DCACSpec, match: _Match, v: Any, out_var: relax.Var) -> None:
        if spec not in self.funcs:  # one PrimFunc per shape: identical blocks share a task
            self.funcs[spec] = self.builder_.add_func(dcac_prim_func(spec), spec.name)
        args = [v] + [relax.const(arr, "float32") for arr in match.args]
        self.calls[out_var] = relax.call_tir(self.funcs[spec], args,
                                             relax.TensorType(v.ty.shape, "float32"))

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        if binding.var in self.calls:
            call = self.builder_.normalize(self.calls[binding.var])
            self.builder_.emit_normalized(relax.VarBinding(binding.var, call))
        else:
            super().visit_var_binding_(binding)


@tvm.transform.module_pass(opt_level=0, name="tvmc_attend.FuseDCAC")
class FuseDCAC:
    """Every DC-AC block of the module's Relax functions replaced by the fused operator.

    Run after BatchNorm folding (``FoldBatchNorm``): the matcher expects conv + bias. After a
    run, ``fused`` counts the replaced blocks and ``unmatched`` says why each other candidate
    (a ``resize2d``) was left alone."""

    def __init__(self) -> None:
        self.fused = 0
        self.unmatched: list[str] = []

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext,
                         ) -> tvm.IRModule:
        rewriter = _Rewriter(mod)
        self.unmatched = []
        funcs = [(gv, f) for gv, f in mod.functions_items() if isinstance(f, relax.Function)]
        for gv, func in funcs:
            fn = _Function(func)
            for var, value in fn.value.items():
                if op_name(value) != "relax.image.resize2d":
                    continue
                try:
                    rewriter.add_match(*_Matcher(fn).match(var))
                except _NoMatch as why:
                    self.unmatched.append(f"{gv.name_hint}: resize2d {var.name}: {why}")
        self.fused = len(rewriter.calls)
        if not rewriter.calls:
            return mod
        for gv, func in funcs:
            rewriter.builder_.update_func(gv, rewriter.visit_expr(func))
        return relax.transform.DeadCodeElimination()(rewriter.builder_.get())
