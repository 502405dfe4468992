"""Graph-level operators and rewrites on Relax modules.

The user asked for "Relay ops"; Relay was removed from TVM in 0.20, and its successor is
Relax, so these are Relax passes (``tvm.transform.module_pass``), one per file, composed by
the compiler's graph preparation (``compile/prepare.py``); and the operators they introduce:
the fused DC-AC and the channel-blocked convolution.
"""

from .blocked_conv import BlockedConv, blocked_conv_compute
from .blocked_layout import BlockedLayout
from .channel_layout import ChannelLayout
from .dcac_op import DCACSpec, dcac_compute, dcac_prim_func
from .dense_as_conv import DenseAsConv
from .fast_math import FAST_MATH_LEGALIZATION, fast_exp, fast_sigmoid, fast_silu
from .fold_batchnorm import FoldBatchNorm
from .fold_small_constants import FoldSmallConstants
from .fuse_dcac import FuseDCAC
from .nearest_resize import FixTorchNearestResize
from .stable_names import StableVarNames

__all__ = [
    "FAST_MATH_LEGALIZATION",
    "BlockedConv",
    "BlockedLayout",
    "ChannelLayout",
    "DCACSpec",
    "DenseAsConv",
    "FixTorchNearestResize",
    "FoldBatchNorm",
    "FoldSmallConstants",
    "FuseDCAC",
    "StableVarNames",
    "blocked_conv_compute",
    "dcac_compute",
    "dcac_prim_func",
    "fast_exp",
    "fast_sigmoid",
    "fast_silu",
]
