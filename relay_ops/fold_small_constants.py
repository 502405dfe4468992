"""FoldSmallConstants: evaluate, in numpy, the constant expressions the frontends emit.

The ONNX frontend reshapes every conv bias (``reshape(const, [1, C, 1, 1])``) and transposes
linear weights (``permute_dims(const)``); BatchNorm folding scales weights. Relax's
``FoldConstant`` evaluates such expressions by compiling and running each one, tens of seconds
per model on a 2-core machine. The few ops that occur are computed here directly, in
microseconds each; ``FoldConstant`` still runs afterwards when a constant expression of any
other op is left (none in the zoo or its ONNX exports), so the result is the same.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from .exprs import mutate_functions

Const = tvm.ir.expr.GenericConst


def _shape(expr: Any) -> list[int] | None:
    values = getattr(expr, "values", None)
    if values is None or not all(isinstance(v, tvm.tirx.IntImm) for v in values):
        return None
    return [int(v) for v in values]


def _reshape(call: Any, x: np.ndarray) -> np.ndarray | None:
    shape = _shape(call.args[1])
    return None if shape is None else x.reshape(shape)


def _permute(call: Any, x: np.ndarray) -> np.ndarray:
    axes = call.attrs.axes
    return np.transpose(x, None if axes is None else [int(a) for a in axes])


def _binary(fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Callable[..., np.ndarray]:
    return lambda _call, a, b: fn(a, b)


# op -> numpy evaluation of a call whose tensor arguments are all constants (None: leave it)
EVALUATE: dict[str, Callable[..., np.ndarray | None]] = {
    "relax.reshape": _reshape,
    "relax.permute_dims": _permute,
    "relax.add": _binary(np.add),
    "relax.subtract": _binary(np.subtract),
    "relax.multiply": _binary(np.multiply),
    "relax.divide": _binary(np.divide),
    "relax.sqrt": lambda _call, x: np.sqrt(x),
}
ONE_TENSOR = {"relax.reshape", "relax.permute_dims", "relax.sqrt"}


@mutator
class _Folder(PyExprMutator):
    def __init__(self, mod: tvm.IRModule) -> None:
        super().__init__(mod)
        self.left = 0  # constant expressions of other ops, for FoldConstant

    def visit_call_(self, call: Any) -> Any:
        call = super().visit_call_(call)
        name = getattr(call.op, "name", None)
        tensors = call.args[:1] if name in ONE_TENSOR else call.args
        if not tensors or not all(isinstance(a, Const) for a in tensors):
            return call
        evaluate = EVALUATE.get(name)
        value = evaluate(call, *(a.value.numpy() for a in tensors)) if evaluate else None
        if value is None:
            self.left += 1
            return call
        dtype = str(call.ty.dtype) if hasattr(call.ty, "dtype") else value.dtype
        return relax.const(np.ascontiguousarray(value).astype(dtype))


@tvm.transform.module_pass(opt_level=0, name="tvmc_attend.FoldSmallConstants")
class FoldSmallConstants:
    """Constant reshapes, transposes and element-wise arithmetic evaluated in numpy."""

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext,
                         ) -> tvm.IRModule:
        folder = _Folder(mod)
        folded = mutate_functions(folder, mod)
        passes = [relax.transform.CanonicalizeBindings()]
        if folder.left:
            passes.append(relax.transform.FoldConstant())
        passes.append(relax.transform.DeadCodeElimination())
        return tvm.transform.Sequential(passes)(folded)
