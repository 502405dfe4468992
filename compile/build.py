"""Build a Relax module for a board, with or without a tuning database, and export the .so."""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

from tvmc_attend.errors import UserError
from tvmc_attend.targets import Board


def build_executable(mod: Any, board: Board, database: Any = None) -> Any:
    """Compile ``mod`` for ``board``. Without a database the CPU build is only legalised and
    fused (loops unscheduled); with one, every tuned task gets its best measured schedule.
    Fused DC-AC operators without a record get their default schedule either way."""
    import tvm

    from tvmc_attend.schedules import apply_default_schedules

    target = board.tvm_target()
    mod = apply_default_schedules(mod, target, database)
    if database is None:
        return tvm.compile(mod, target=target)
    from tvm.s_tir import meta_schedule as ms

    return ms.relax_integration.compile_relax(database, mod, target, params=None)


def fuse_for_tuning(mod: Any, board: Board) -> Any:
    """Legalise and fuse ``mod`` the way ``compile_relax`` does before it applies a database,
    so that extracted tuning tasks and the build's lookups share workload keys."""
    import tvm
    from tvm import relax
    from tvm.relax import pipeline

    target = board.tvm_target()
    with target:
        seq = tvm.transform.Sequential([
            *pipeline.library_dispatch_passes(target),
            relax.transform.LegalizeOps(),
            relax.transform.AnnotateTIROpPattern(),
            relax.transform.FoldConstant(),
            relax.transform.FuseOps(),
            relax.transform.FuseTIR(),
        ])
        return seq(mod)


def require_cross_compiler(board: Board) -> None:
    if board.cross_compiler and shutil.which(board.cross_compiler) is None:
        raise UserError(
            f"cross compiler '{board.cross_compiler}' for target {board.name} is not installed; "
            "run `make setup` or `apt-get install gcc-aarch64-linux-gnu`"
        )


def export_library(executable: Any, board: Board, path: str) -> None:
    """Write the shared library for ``board`` atomically (cross-compiled for remote boards)."""
    from tvm.support import cc

    require_cross_compiler(board)
    fcompile = cc.cross_compiler(board.cross_compiler) if board.cross_compiler else None
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=directory)
    os.close(fd)
    try:
        if fcompile is None:
            executable.export_library(tmp)
        else:
            executable.export_library(tmp, fcompile=fcompile)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
