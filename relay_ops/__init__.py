"""Graph-level operators and rewrites on Relax modules.

The user asked for "Relay ops"; Relay was removed from TVM in 0.20, and its successor is
Relax, so these are Relax passes. One rewrite per file.
"""

from .inference import fold_for_inference
from .nearest_resize import fix_torch_nearest_resize

__all__ = ["fix_torch_nearest_resize", "fold_for_inference"]
