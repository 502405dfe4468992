"""Build a Relax module for a board, with or without a tuning database, and export the .so."""

from __future__ import annotations

import os
import tempfile
from typing import Any

from tvmc_attend.targets import Board

from .lowering import legalize_and_fuse
from .stages import stage


def build_executable(mod: Any, board: Board, database: Any = None) -> Any:
    """Compile ``mod`` for ``board``: every task with a record in ``database`` gets its best
    measured schedule, our operators without one their default schedule, and the rest of
    TVM's kernels stay unscheduled loops (what an untuned CPU build is)."""
    return build_scheduled(schedule_module(mod, board, database), board.tvm_target())


def schedule_module(mod: Any, board: Board, database: Any = None) -> Any:
    """``mod`` legalised, fused and scheduled for ``board`` (records of ``database``, then
    our operators' default schedules where no record applied), not yet lowered: the one graph
    and set of schedules that ``build_scheduled`` turns into code for the board, or for this
    host when a board's build is verified here (its "host twin")."""
    import tvm
    from tvm import relax

    from tvmc_attend.schedules import apply_default_schedules

    target = board.tvm_target()
    mod = legalize_and_fuse(mod, board)
    if database is not None:
        with stage("applying tuning records"), target, database, \
                tvm.transform.PassContext(opt_level=3):
            mod = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(mod)
    with stage("lowering (default schedules of our operators)"):
        return apply_default_schedules(mod, target)


def build_scheduled(mod: Any, target: Any) -> Any:
    """Lower a module from ``schedule_module`` and generate code for ``target`` (what
    ``tvm.compile`` and MetaSchedule's ``compile_relax`` do after fusion)."""
    import tvm
    from tvm import relax
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    # Our targets are all CPUs. (relax.pipeline.dataflow_lower_passes fails for them in 0.27:
    # cpu_generic does not export it; compile_relax falls back to the same list.)
    lower = tvm.transform.Sequential([*cpu.dataflow_lower_passes(target),
                                      *cpu.finalize_passes(target)])
    with stage("build"), target, tvm.transform.PassContext(opt_level=3):
        return relax.build(mod, target=target, relax_pipeline=lower)


def export_library(executable: Any, board: Board, path: str) -> None:
    """Write the shared library for ``board`` atomically (cross-compiled for remote boards)."""
    from tvm.support import cc

    board.require_toolchain()
    fcompile = cc.cross_compiler(board.cross_compiler) if board.cross_compiler else None
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=directory)
    os.close(fd)
    try:
        with stage(f"build (linking with {board.cross_compiler or 'the host compiler'})"):
            if fcompile is None:
                executable.export_library(tmp)
            else:
                executable.export_library(tmp, fcompile=fcompile)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
