"""Graph-level operators and rewrites on Relax modules.

The user asked for "Relay ops"; Relay was removed from TVM in 0.20, and its successor is
Relax, so these are Relax passes. One rewrite per file.
"""

from .dcac_op import DCACSpec, dcac_compute, dcac_prim_func
from .dcac_pattern import DCACFusion, fuse_dcac
from .inference import fold_for_inference
from .nearest_resize import fix_torch_nearest_resize

__all__ = [
    "DCACFusion",
    "DCACSpec",
    "dcac_compute",
    "dcac_prim_func",
    "fix_torch_nearest_resize",
    "fold_for_inference",
    "fuse_dcac",
]
