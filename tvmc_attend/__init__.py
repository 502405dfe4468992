"""tvmc-attend: compile, autotune and ship attention-condenser backbones with Apache TVM.

Pipeline (each stage a folder; imports flow one way): models -> compile.frontend (Relax) ->
compile.prepare (relay_ops passes) -> compile.tuning (MetaSchedule, schedules/, device/ for RPC)
-> compile.build -> compile.bundle (.so + metadata + attend_runtime.py); bench and explore build
on the compiler, cli on everything.
"""

__version__ = "0.1.0"
