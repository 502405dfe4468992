"""Converters that replace TVM's own for torch.export operators it imports wrongly.

Passed to ``from_exported_program(custom_convert_map=...)``; each entry names the TVM release
it was written against, so that a newer pin can check whether it is still needed.
"""

from __future__ import annotations

from typing import Any


def _div_with_rounding(node: Any, importer: Any) -> Any:
    """``aten.div.Tensor_mode`` (``//``, ``torch.div(..., rounding_mode=...)``) by a Python
    number. TVM 0.27 makes the number an int32 constant whatever the tensor's dtype, and Relax
    refuses float32 // int32: EdgeNeXt's positional encoding divides a float32 arange by 2."""
    from tvm import relax

    args = importer.retrieve_args(node)
    lhs, rhs = args[0], args[1]
    mode = args[2] if len(node.args) > 2 else node.kwargs.get("rounding_mode")
    if isinstance(rhs, int | float) and isinstance(lhs, relax.Expr):
        rhs = relax.const(rhs, lhs.ty.dtype)
    elif isinstance(lhs, int | float) and isinstance(rhs, relax.Expr):
        lhs = relax.const(lhs, rhs.ty.dtype)
    emit = importer.block_builder.emit
    if mode is None:
        return emit(relax.op.divide(lhs, rhs))
    if mode == "floor":
        return emit(relax.op.floor_divide(lhs, rhs))
    if mode == "trunc":
        return emit(relax.op.trunc(emit(relax.op.divide(lhs, rhs))))
    raise ValueError(f"unsupported rounding_mode {mode!r} in {node.target}")


# torch.export operator name (as TVM's translator keys it) -> converter
TORCH_CONVERTERS = {
    "div.Tensor_mode": _div_with_rounding,  # TVM 0.27.0
}
