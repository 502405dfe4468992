"""How a model is lowered into tuning tasks, as far as a database records it: the layout and the
compiler's lowering version. TVM-free, so commands check databases before importing TVM."""

from __future__ import annotations

# Bump when a change to preparation or lowering changes the tuning tasks of a model (their
# workloads): databases tuned before then are not applied (their records would match nothing,
# or, worse, something else). 1: fast-math sigmoid/exp, channel layouts (Dec 2026).
LOWERING_VERSION = 1

# The layouts convolutions can compute in (compile.prepare has the pass for each).
LAYOUT_NAMES = ("blocked", "nhwc", "nchw")
DEFAULT_LAYOUT = "blocked"


def lowering_of(layout: str) -> str:
    """The lowering a database tuned with ``layout`` records (e.g. ``blocked-v1``)."""
    return f"{layout}-v{LOWERING_VERSION}"
