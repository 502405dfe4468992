"""tvmc-attend: compile, autotune and ship attention-condenser backbones with Apache TVM.

Pipeline (each stage a folder; imports flow one way): models -> compile.frontend (Relax) ->
compile.prepare (relay_ops passes) -> compile.tuning (MetaSchedule, schedules/, device/ for RPC)
-> compile.build -> compile.bundle (.so + metadata + attend_runtime.py); bench and explore build
on the compiler; ``api`` (the Python API) on all of them, and cli on the API.

The Python API (``tvmc_attend.compile``, ``tune``, ``run``, ``benchmark``, ``load``) is
loaded on first use, so that ``import tvmc_attend`` stays cheap (no TVM, no torch).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> (module, attribute): the API and the types its functions return
_API = {
    "compile": ("tvmc_attend.api", "compile"),
    "tune": ("tvmc_attend.api", "tune"),
    "run": ("tvmc_attend.api", "run"),
    "benchmark": ("tvmc_attend.api", "benchmark"),
    "load": ("tvmc_attend.api", "load"),
    "DeviceRequest": ("tvmc_attend.device.choice", "DeviceRequest"),
    "UserError": ("tvmc_attend.errors", "UserError"),
    "RunResult": ("tvmc_attend.api", "RunResult"),
    "Bundle": ("tvmc_attend.compiler.bundle", "Bundle"),
    "TuningResult": ("tvmc_attend.compiler.tuning.progress", "TuneResult"),
    "BenchmarkResult": ("tvmc_attend.bench.benchmark", "BenchmarkReport"),
}
__all__ = [*_API, "__version__"]


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'tvmc_attend' has no attribute {name!r}")
    module, attribute = _API[name]
    return getattr(importlib.import_module(module), attribute)
