"""Register only the tensor intrinsics of the board's ISA before MetaSchedule needs them.

Every ``TuneContext`` runs ``import tvm.s_tir.tensor_intrin``, which parses the CUDA, ROCm,
Hexagon, RISC-V, ARM and x86 intrinsics as TVMScript. Parsing walks ``inspect.stack()``,
whose cost grows with ``sys.modules``, so after torch is imported it takes 50-75 s here, for
intrinsics a CPU float32 model never uses. We create the package without running its
``__init__`` and import only the CPU module that matches the target (x86 ~1 s, arm ~10 s).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

from tvmc_attend.targets import Board

_PACKAGE = "tvm.s_tir.tensor_intrin"
# Which intrinsic module serves which target architecture (the triple's first field).
_ISA_MODULES = {"aarch64": "arm_cpu", "arm": "arm_cpu", "host": "x86", "x86_64": "x86"}


def load_tensor_intrinsics(board: Board) -> None:
    """Make ``import tvm.s_tir.tensor_intrin`` cheap, with the board's intrinsics registered."""
    if _PACKAGE not in sys.modules:
        spec = importlib.util.find_spec(_PACKAGE)
        package = types.ModuleType(_PACKAGE)
        package.__path__ = list(spec.submodule_search_locations)
        package.__spec__ = spec
        package.__file__ = spec.origin
        sys.modules[_PACKAGE] = package
    arch = board.triple.split("-")[0]
    importlib.import_module(f"{_PACKAGE}.{_ISA_MODULES.get(arch, 'x86')}")
