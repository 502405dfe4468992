"""The compile pipeline: model source -> Relax -> graph rewrites -> build -> bundle."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tvmc_attend.relay_ops import fold_for_inference
from tvmc_attend.targets import Board

from .build import build_executable, require_cross_compiler
from .bundle import TuningInfo, write_bundle
from .frontend import ImportedModel, ModelSource, import_model


@dataclass
class PreparedModel:
    """An imported model after the graph rewrites, ready for task extraction or build."""

    imported: ImportedModel
    mod: Any
    fused_dcac: int = 0


def prepare_model(source: ModelSource) -> PreparedModel:
    """Import ``source`` and apply the inference rewrites (BatchNorm folding)."""
    imported = import_model(source)
    return PreparedModel(imported=imported, mod=fold_for_inference(imported.mod))


def compile_bundle(source: ModelSource, board: Board, out_dir: str,
                   database: Any = None, tuning: TuningInfo | None = None) -> dict[str, Any]:
    """Compile ``source`` for ``board`` into the bundle ``out_dir``; return its metadata."""
    require_cross_compiler(board)  # fail before minutes of import and build
    prepared = prepare_model(source)
    executable = build_executable(prepared.mod, board, database=database)
    return write_bundle(out_dir, prepared.imported, board, executable, tuning=tuning,
                        fused_dcac=prepared.fused_dcac)
