"""DenseAsConv: a classifier (a matmul by constant weights, plus its bias) as a 1x1 convolution
on a 1x1 map, so that the channel-blocked layout computes it as it does the head convolution.

A classifier's weights are read once per inference: megabytes from memory (MobileNetV3-L 5 MB,
FBNet-C 8 MB), so its speed is how well the kernel streams them. TVM's matmul kernel reads the
transposed weights (C, O) with each thread on a slice of every row, 17 GB/s inside the model,
while the blocked conv reads its packed weights (O/b, C, 1, 1, b) as one contiguous panel per
output block: measured 2026-12-06 (AMD EPYC Zen 4, 2 threads, MobileNetV3-L in the model),
the 4.9 MB head conv 120 us against the 5.1 MB classifier matmul's 278 us (ONNX Runtime's
Gemm 175 us).

``matmul(x, W)`` with ``x`` of shape (N, C) and ``W`` a constant (C, O), optionally plus a
constant bias of O values, becomes ``reshape(conv2d(x4, W') + b', (N, O))`` where ``x4`` is the
(N, C, 1, 1) tensor ``x`` was flattened from (or ``x`` reshaped), ``W'`` = W transposed to
(O, C, 1, 1), for N up to ``MAX_ROWS``. A transformer's projections (3-d, or flattened to
hundreds of rows) are left alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from .exprs import mutate_functions, op_name, static_shape, tensor_constant

# A classifier's rows are its batch. Hundreds of rows are a transformer's tokens flattened to
# 2-d (MobileViT-XS): a GEMM the matmul schedules handle; as N images of 1x1 the blocked conv
# ran them at ~100 GFLOPS against the matmul's ~170 (measured 2026-12-06, Zen 4).
MAX_ROWS = 8


@mutator
class _DenseToConv(PyExprMutator):
    def __init__(self, mod: tvm.IRModule, biased: set[Any],
                 outputs_ok: Callable[[int], bool] | None) -> None:
        super().__init__(mod)
        self.rewritten = 0
        self.biased = biased  # matmul vars whose bias add is rewritten with them
        self.outputs_ok = outputs_ok
        self._var: Any = None  # the var of the binding being visited

    def visit_var_binding_(self, binding: Any) -> None:
        self._var = binding.var
        super().visit_var_binding_(binding)

    def _map_of(self, x: Any, n: int, c: int) -> Any:
        """The (N, C, 1, 1) tensor ``x`` (N, C) was reshaped from, or ``x`` reshaped."""
        if isinstance(x, relax.Var):
            bound = self.lookup_binding(x)
            if op_name(bound) == "relax.reshape" and \
                    static_shape(bound.args[0]) == (n, c, 1, 1):
                return bound.args[0]
        return relax.op.reshape(x, (n, c, 1, 1))

    def _constant(self, expr: Any) -> np.ndarray | None:
        """A constant tensor's data, also through a var bound to a constant's transpose (as
        imported, before ``FoldSmallConstants``)."""
        bound = self.lookup_binding(expr) if isinstance(expr, relax.Var) else None
        if op_name(bound) == "relax.permute_dims":
            data = tensor_constant(bound.args[0])
            axes = bound.attrs.axes
            if data is not None and data.ndim == 2 and (axes is None or
                                                        [int(a) for a in axes] == [1, 0]):
                return data.T
        return tensor_constant(expr)

    def _as_conv(self, matmul: Any, bias: np.ndarray | None) -> Any | None:
        x, w = matmul.args
        weight, shape = self._constant(w), static_shape(x)
        if weight is None or weight.ndim != 2 or shape is None or len(shape) != 2:
            return None
        (n, c), o = shape, weight.shape[1]
        if n > MAX_ROWS or weight.shape[0] != c or str(x.ty.dtype) != "float32" or \
                (self.outputs_ok is not None and not self.outputs_ok(o)):
            return None
        kernel = relax.const(np.ascontiguousarray(weight.T.reshape(o, c, 1, 1)))
        out = self.builder_.emit(relax.op.nn.conv2d(self._map_of(x, n, c), kernel))
        if bias is not None:
            out = self.builder_.emit(relax.op.add(out, relax.const(bias.reshape(1, o, 1, 1))))
        self.rewritten += 1
        return relax.op.reshape(out, (n, o))

    def _bias_and_matmul(self, call: Any) -> tuple[Any, np.ndarray] | None:
        """(the matmul call, its bias) when ``call`` is ``add`` of a matmul and O constants."""
        for mine, other in ((0, 1), (1, 0)):
            arg = call.args[mine]
            bound = self.lookup_binding(arg) if isinstance(arg, relax.Var) else arg
            bias = self._constant(call.args[other])
            if op_name(bound) == "relax.matmul" and bias is not None:
                out = static_shape(bound)
                if out is not None and bias.size == out[-1] and bias.shape[-1] == out[-1]:
                    return bound, bias
        return None

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        name = op_name(call)
        conv = None
        if name == "relax.add":
            found = self._bias_and_matmul(call)
            if found is not None:
                conv = self._as_conv(*found)
        elif name == "relax.matmul" and self._var not in self.biased:
            conv = self._as_conv(call, None)
        return call if conv is None else conv


def _biased_matmuls(func: relax.Function) -> set[Any]:
    """The vars of ``func``'s matmuls that an add with a constant uses (bias adds)."""
    matmuls, biased = set(), set()
    for block in func.body.blocks:
        for binding in block.bindings:
            name = op_name(binding.value)
            if name == "relax.matmul":
                matmuls.add(binding.var)
            elif name == "relax.add":
                a, b = binding.value.args
                for arg, other in ((a, b), (b, a)):
                    if arg in matmuls and tensor_constant(other) is not None:
                        biased.add(arg)
    return biased


@tvm.transform.module_pass(opt_level=0, name="tvmc_attend.DenseAsConv")
class DenseAsConv:
    """Every float32 matmul of a 2-d activation by constant weights (and its constant bias)
    as a 1x1 convolution, when ``outputs_ok`` accepts its output count (the blocked layout
    asks whether it would block them: a 10-class head padded to 16 would stay a plain conv,
    no better than the matmul); ``rewritten`` counts them after a run."""

    def __init__(self, outputs_ok: Callable[[int], bool] | None = None) -> None:
        self.outputs_ok = outputs_ok  # which output counts to rewrite (None: all)
        self.rewritten = 0

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext,
                         ) -> tvm.IRModule:
        biased = set().union(*(_biased_matmuls(func) for _, func in mod.functions_items()
                               if isinstance(func, relax.Function)))
        rewriter = _DenseToConv(mod, biased, self.outputs_ok)
        updated = mutate_functions(rewriter, mod)
        self.rewritten = rewriter.rewritten
        return relax.transform.DeadCodeElimination()(updated)
