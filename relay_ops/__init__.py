"""Graph-level operators and rewrites on Relax modules.

The user asked for "Relay ops"; Relay was removed from TVM in 0.20, and its successor is
Relax, so these are Relax passes (``tvm.transform.module_pass``), one per file, composed by
the compiler's graph preparation (``compile/prepare.py``); and the fused DC-AC operator.
"""

from .dcac_op import DCACSpec, dcac_compute, dcac_prim_func
from .fold_batchnorm import FoldBatchNorm
from .fuse_dcac import FuseDCAC
from .nearest_resize import FixTorchNearestResize

__all__ = [
    "DCACSpec",
    "FixTorchNearestResize",
    "FoldBatchNorm",
    "FuseDCAC",
    "dcac_compute",
    "dcac_prim_func",
]
