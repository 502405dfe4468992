"""The compile pipeline: model source -> Relax -> graph rewrites -> build -> bundle."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tvmc_attend.errors import UserError
from tvmc_attend.relay_ops import fold_for_inference
from tvmc_attend.targets import Board

from .build import build_executable, require_cross_compiler
from .bundle import TuningInfo, check_output_dir, write_bundle
from .database import TuningDatabase
from .frontend import ImportedModel, ModelSource, import_model


@dataclass
class PreparedModel:
    """An imported model after the graph rewrites, ready for task extraction or build."""

    imported: ImportedModel
    mod: Any
    fused_dcac: int = 0


def prepare_model(source: ModelSource, fuse_dcac: bool = True) -> PreparedModel:
    """Import ``source`` and apply the inference rewrites: BatchNorm folding, then (unless
    ``fuse_dcac`` is False) the DC-AC fusion."""
    imported = import_model(source)
    stock = PreparedModel(imported=imported, mod=fold_for_inference(imported.mod))
    return with_dcac_fused(stock) if fuse_dcac else stock


def with_dcac_fused(prepared: PreparedModel) -> PreparedModel:
    """``prepared`` with every DC-AC block replaced by the fused operator; blocks the matcher
    could not match are left alone and logged. Expects folded BatchNorm (conv + bias)."""
    import logging

    from tvmc_attend.relay_ops import fuse_dcac

    fusion = fuse_dcac(prepared.mod)
    for reason in fusion.unmatched:
        logging.getLogger("tvmc_attend.relay_ops").warning("DC-AC not fused: %s", reason)
    return PreparedModel(imported=prepared.imported, mod=fusion.mod,
                         fused_dcac=prepared.fused_dcac + fusion.fused)


def named_database(database_dir: str, board: Board) -> TuningDatabase:
    """A database asked for by name (--database): it must exist and match the target, since
    refusing is the only safe answer for it."""
    named = TuningDatabase(database_dir)
    if not named.exists():
        raise UserError(f"no tuning database at {database_dir}; tune first or drop --database")
    named.check_target(board)
    return named


def open_database(board: Board, model_name: str, log_dir: str | None,
                  database_dir: str | None) -> tuple[Any, TuningInfo, list[str]]:
    """The tuning database to build with, how it is recorded, and warnings for the user.

    An explicit ``database_dir`` must exist and match the target; the default one
    (``<log_dir>/<target>/<model>``) is used when present, else the build is untuned.
    """
    warnings: list[str] = []
    if database_dir:
        db_dir = named_database(database_dir, board)
    else:
        db_dir = TuningDatabase.for_model(log_dir, board, model_name)
    if not db_dir.exists():
        warnings.append(f"no tuning database at {db_dir.path}: building untuned (run "
                        f"`tvmc-attend tune --model {model_name} --target {board.name}`)")
        return None, TuningInfo(), warnings
    try:
        info = db_dir.check_target(board)
    except UserError as err:
        # The default database was tuned on another machine (e.g. a committed host database
        # and a different CPU): its schedules may not even run here, so build untuned.
        warnings.append(f"{err}; building untuned")
        return None, TuningInfo(), warnings
    database = db_dir.open(board, model_name)
    records = len(database)
    if info.emulated:
        warnings.append(f"{db_dir.path} was tuned on an emulated board: its schedules were "
                        "chosen by emulated timings; retune on a real "
                        f"{board.name} for deployment")
    tuning = TuningInfo(tuned=records > 0, database=db_dir.path, records=records,
                        emulated=info.emulated, extra={"devices": info.devices})
    return database, tuning, warnings


def compile_bundle(source: ModelSource, board: Board, out_dir: str, untuned: bool = False,
                   log_dir: str | None = None, database_dir: str | None = None,
                   fuse_dcac: bool = True,
                   warn: Callable[[str], None] = print) -> dict[str, Any]:
    """Compile ``source`` for ``board`` into the bundle ``out_dir``; return its metadata.

    The (target, model) tuning database is applied unless ``untuned`` (``warn`` gets why a
    database was skipped or is suspect); DC-AC blocks are fused unless ``fuse_dcac`` is False.
    """
    require_cross_compiler(board)  # fail before minutes of import and build
    check_output_dir(os.path.abspath(out_dir))
    if not untuned and database_dir:  # refuse a wrong --database before the import, too
        named_database(database_dir, board)
    return compile_prepared(prepare_model(source, fuse_dcac=fuse_dcac), board, out_dir,
                            untuned=untuned, log_dir=log_dir, database_dir=database_dir,
                            warn=warn)


def compile_prepared(prepared: PreparedModel, board: Board, out_dir: str,
                     untuned: bool = False, log_dir: str | None = None,
                     database_dir: str | None = None,
                     warn: Callable[[str], None] = print) -> dict[str, Any]:
    """Build an already prepared model into a bundle (importing and folding a model takes up
    to a minute: callers that build one model several ways prepare it once)."""
    database, tuning = None, TuningInfo()
    if not untuned:
        database, tuning, warnings = open_database(board, prepared.imported.name, log_dir,
                                                   database_dir)
        for message in warnings:
            warn(message)
    executable = build_executable(prepared.mod, board, database=database)
    return write_bundle(out_dir, prepared.imported, board, executable, tuning=tuning,
                        fused_dcac=prepared.fused_dcac)
