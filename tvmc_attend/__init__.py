"""tvmc-attend: compile, autotune and ship attention-condenser backbones with Apache TVM.

Pipeline (each stage a sub-package; imports flow one way):
models -> compile.frontend (Relax) -> relay_ops (graph rewrites) -> compile.tune
(MetaSchedule, schedules/, device/ for RPC) -> compile.build -> compile.bundle
(.so + metadata + attend_runtime.py).
"""

__version__ = "0.1.0"
