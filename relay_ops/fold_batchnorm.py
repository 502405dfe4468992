"""FoldBatchNorm: fold BatchNorm into the preceding convolution's weights and a bias.

Both frontends keep BatchNorm as ``batch_norm`` ops. Left alone, they become elementwise
kernels fused around every convolution, which multiplies tuning tasks (66 instead of ~30 on
AttendNeXt) and costs run time. Folding first gives fewer, heavier tasks.

TVM's ``FoldBatchnormToConv2D`` rewrites conv + BatchNorm into expressions over the constants
that ``FoldConstant`` then evaluates, by compiling and running each one: 40-60 s on AttendNeXt
on a 2-core machine. Here the folded weights and bias are computed directly as the rewrite
happens (numpy, float32, in the order TVM's rewrite computes them), and the constant
expressions left (a BatchNorm that follows no convolution, decomposed into scale + shift; the
frontends' constant reshapes) go to ``FoldSmallConstants``: ~0.2 s in all.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tvm
from tvm import relax
from tvm.relax.dpl import TupleGetItemPattern, is_const, is_op, rewrite_call, wildcard

from .fold_small_constants import FoldSmallConstants


@tvm.transform.module_pass(opt_level=0, name="tvmc_attend.FoldBatchNorm")
class FoldBatchNorm:
    """conv2d (OIHW) + BatchNorm over channels -> conv2d with folded weights + a bias."""

    def __init__(self) -> None:
        self.data, self.weight = wildcard(), is_const()
        self.conv = is_op("relax.nn.conv2d")(self.data, self.weight)
        self.gamma, self.beta, self.mean, self.var = (is_const() for _ in range(4))
        self.bn = is_op("relax.nn.batch_norm")(self.conv, self.gamma, self.beta, self.mean,
                                               self.var)
        self.pattern = TupleGetItemPattern(self.bn, 0)  # the normalised tensor

    def _fold(self, expr: Any, matched: dict) -> Any:
        conv, bn = matched[self.conv], matched[self.bn]
        if conv.attrs["kernel_layout"] != "OIHW" or int(bn.attrs["axis"]) != 1:
            return expr
        weight = matched[self.weight].value.numpy()
        gamma, beta, mean, var = (matched[p].value.numpy().astype(weight.dtype)
                                  for p in (self.gamma, self.beta, self.mean, self.var))
        scale = gamma / np.sqrt(var + weight.dtype.type(float(bn.attrs["epsilon"])))
        folded = weight * scale.reshape(-1, 1, 1, 1)
        bias = (beta - mean * scale).reshape(1, -1, 1, 1)
        out = relax.Call(conv.op, (matched[self.data], relax.const(folded)), conv.attrs)
        return relax.op.add(out, relax.const(bias))

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext,
                         ) -> tvm.IRModule:
        updated = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs)
        for gvar, func in mod.functions_items():
            if isinstance(func, relax.Function):
                updated[gvar] = rewrite_call(self.pattern, self._fold, func)
        passes = [relax.transform.CanonicalizeBindings()]
        if _has_batch_norm(updated):  # one that follows no conv: scale + shift
            passes += [relax.transform.DecomposeOpsForInference(),
                       relax.transform.CanonicalizeBindings()]
        passes.append(FoldSmallConstants())
        return tvm.transform.Sequential(passes)(updated)


def _has_batch_norm(mod: tvm.IRModule) -> bool:
    found = []

    def visit(expr: Any) -> None:
        if isinstance(expr, relax.Call) and getattr(expr.op, "name", None) == \
                "relax.nn.batch_norm":
            found.append(expr)

    for _gvar, func in mod.functions_items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return bool(found)
