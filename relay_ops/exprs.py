"""What the graph rewrites ask of a Relax expression: its operator, its static shape, its
constant data (TVM 0.27 spellings in one place)."""

from __future__ import annotations

from typing import Any

import numpy as np
import tvm
from tvm import relax


def op_name(expr: Any) -> str | None:
    """``"relax.add"`` and the like for a call of a TVM operator, else None."""
    if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
        return expr.op.name
    return None


def static_shape(expr: Any) -> tuple[int, ...] | None:
    """The tensor's shape when every dimension is a constant, else None."""
    values = getattr(getattr(expr.ty, "shape", None), "values", None)
    if values is None or not all(isinstance(v, tvm.tirx.IntImm) for v in values):
        return None
    return tuple(int(v) for v in values)


def mutate_functions(mutator: Any, mod: tvm.IRModule) -> tvm.IRModule:
    """``mod`` with every Relax function rewritten by ``mutator`` (a ``PyExprMutator`` made
    over ``mod``): the loop each mutator pass runs."""
    for gvar, func in mod.functions_items():
        if isinstance(func, relax.Function):
            mutator.builder_.update_func(gvar, mutator.visit_expr(func))
    return mutator.builder_.get()


def tensor_constant(expr: Any) -> np.ndarray | None:
    """The data of a tensor constant (TVM 0.27: ``GenericConst`` holding a Tensor), else None."""
    if isinstance(expr, tvm.ir.expr.GenericConst) and \
            isinstance(expr.value, tvm.runtime.Tensor):
        return expr.value.numpy()
    return None
