"""Graph preparation: the Relax rewrites between import and build, as one pass pipeline.

``preparation_passes`` composes the ``relay_ops`` passes in a ``tvm.transform.Sequential``:
PyTorch's nearest resize (torch imports only; the ONNX frontend reads the right mode from the
file), BatchNorm folded into the convolutions, then, unless asked not to, every DC-AC block
replaced by the fused operator (which expects the folded conv + bias form). Tuning and the build
then both start from ``legalize_and_fuse``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import tvm

from tvmc_attend.relay_ops import FixTorchNearestResize, FoldBatchNorm, FuseDCAC
from tvmc_attend.targets import Board

from .frontend import ImportedModel, ModelSource, import_model

TORCH_SOURCES = ("zoo", ".pt2")  # imported through torch.export
_LOG = logging.getLogger("tvmc_attend.relay_ops")


@dataclass
class PreparedModel:
    """An imported model after the graph rewrites, ready for task extraction or build."""

    imported: ImportedModel
    mod: Any  # tvm.IRModule
    fused_dcac: int = 0


def preparation_passes(source: str, fuse: FuseDCAC | None = None) -> tvm.transform.Pass:
    """The rewrites a model imported from ``source`` ("zoo", ".onnx", ".pt2") gets, in order;
    ``fuse`` (a ``FuseDCAC`` instance, which then reports what it did) last, when given."""
    passes = [FixTorchNearestResize()] if source in TORCH_SOURCES else []
    passes.append(FoldBatchNorm())
    if fuse is not None:
        passes.append(fuse)
    return tvm.transform.Sequential(passes, name="tvmc_attend.prepare")


def prepare(imported: ImportedModel, fuse_dcac: bool = True) -> PreparedModel:
    """``imported`` rewritten by ``preparation_passes`` (DC-AC fusion unless ``fuse_dcac`` is
    False); blocks the fusion could not match are left alone and logged."""
    fuse = FuseDCAC() if fuse_dcac else None
    mod = preparation_passes(imported.source, fuse)(imported.mod)
    return PreparedModel(imported=imported, mod=mod, fused_dcac=_fused(fuse))


def prepare_model(source: ModelSource, fuse_dcac: bool = True) -> PreparedModel:
    """Import ``source`` and prepare it (see ``prepare``)."""
    return prepare(import_model(source), fuse_dcac=fuse_dcac)


def with_dcac_fused(prepared: PreparedModel) -> PreparedModel:
    """A model prepared without the fusion, fused now: importing and folding a model takes up
    to a minute, so the DC-AC benchmark prepares it once and builds it both ways."""
    fuse = FuseDCAC()
    return PreparedModel(imported=prepared.imported, mod=fuse(prepared.mod),
                         fused_dcac=prepared.fused_dcac + _fused(fuse))


def _fused(fuse: FuseDCAC | None) -> int:
    """How many blocks ``fuse`` replaced in its run; why it left the others goes to the log."""
    if fuse is None:
        return 0
    for reason in fuse.unmatched:
        _LOG.warning("DC-AC not fused: %s", reason)
    return fuse.fused


def legalize_and_fuse(mod: Any, board: Board) -> Any:
    """``mod`` legalised and fused the way ``compile_relax`` does before it applies a database:
    the one form tuning extracts its tasks from and the build looks them up in, so that both
    share workload keys."""
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
