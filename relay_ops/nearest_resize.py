"""FixTorchNearestResize: nearest-neighbour upsampling imported from PyTorch, made PyTorch's.

TVM 0.27's torch frontend maps ``F.interpolate(mode="nearest")`` to ``resize2d`` with
``half_pixel`` coordinates and ``round``: that is PyTorch's "nearest-exact", not "nearest".
The two agree only for whole-number scale factors, so AttendNeXt's 4 -> 14 gate upsampling
came out 6 % wrong. PyTorch's "nearest" is ``asymmetric`` coordinates with ``floor``.
Apply to torch-imported modules only (the ONNX frontend reads the right mode from the file).
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator


@mutator
class _NearestToAsymmetricFloor(PyExprMutator):
    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.image.resize2d"):
            return call
        attrs = call.attrs
        if attrs.method != "nearest_neighbor" or attrs.coordinate_transformation_mode == \
                "asymmetric":
            return call
        return relax.op.image.resize2d(
            call.args[0], call.args[1], roi=tuple(float(v) for v in attrs.roi),
            layout=attrs.layout, method="nearest_neighbor",
            coordinate_transformation_mode="asymmetric", rounding_method="floor",
            out_dtype=attrs.out_dtype,
        )


@tvm.transform.module_pass(opt_level=0, name="tvmc_attend.FixTorchNearestResize")
class FixTorchNearestResize:
    """Every torch-style nearest ``resize2d`` rewritten to PyTorch's "nearest" semantics."""

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext,
                         ) -> tvm.IRModule:
        updated = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs)
        for gvar, func in mod.functions_items():
            if isinstance(func, relax.Function):
                updated[gvar] = _NearestToAsymmetricFloor().visit_expr(func)
        return updated
