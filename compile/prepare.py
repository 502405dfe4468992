"""Graph preparation: the Relax rewrites between import and build, one pass after another.

``preparation_passes`` lists the ``relay_ops`` passes, applied one at a time (``run_passes``):
PyTorch's nearest resize (torch imports only; the ONNX frontend reads the right mode from the
file), BatchNorm folded into the convolutions, then, unless asked not to, every DC-AC block
replaced by the fused operator (which expects the folded conv + bias form), then the layout
the convolutions compute in (``LAYOUTS``; channel-blocked by default, which depends on the
target's vector width). Tuning and the build then both start from ``lowering.legalize_and_fuse``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import tvm

from tvmc_attend.relay_ops import (
    BlockedLayout,
    FixTorchNearestResize,
    FoldBatchNorm,
    FuseDCAC,
)
from tvmc_attend.targets import Board, vector_isa

from .frontend import ImportedModel, ModelSource, import_model
from .lowering import LAYOUT_NAMES, lowering_of
from .stages import run_passes, stage

TORCH_SOURCES = ("zoo", ".pt2")  # imported through torch.export
_LOG = logging.getLogger("tvmc_attend.relay_ops")


def _blocked(board: Board) -> tvm.transform.Pass:
    isa = vector_isa(board.tvm_target())
    return BlockedLayout(blocks=isa.channel_blocks, registers=isa.registers)


def _nhwc(_board: Board) -> tvm.transform.Pass:
    from tvm import relax

    return relax.transform.ConvertLayout({"relax.nn.conv2d": ["NHWC", "OHWI"]})


# The layouts convolutions can compute in: the pass that converts to each (None: as imported).
LAYOUTS: dict[str, Callable[[Board], tvm.transform.Pass] | None] = {
    "blocked": _blocked,  # NCHW{b}c where padding is cheap, NCHW elsewhere (relay_ops)
    "nhwc": _nhwc,  # TVM's ConvertLayout; stock legalisation
    "nchw": None,
}
assert tuple(LAYOUTS) == LAYOUT_NAMES


@dataclass
class LayoutReport:
    """What the layout step did, for the bundle's metadata and the log."""

    name: str = "nchw"
    blocked_convs: int = 0
    transforms: int = 0  # pack/unpack (or layout_transform) ops left in the graph
    components: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "blocked_convs": self.blocked_convs,
                "transforms": self.transforms, "components": list(self.components)}


@dataclass
class PreparedModel:
    """An imported model after the graph rewrites, ready for task extraction or build."""

    imported: ImportedModel
    mod: Any  # tvm.IRModule
    fused_dcac: int = 0
    layout: LayoutReport = field(default_factory=LayoutReport)

    @property
    def lowering(self) -> str:
        """How its tuning tasks were made (a database records it, to be applied only alike)."""
        return lowering_of(self.layout.name)


def preparation_passes(source: str, fuse: FuseDCAC | None = None) -> list[Any]:
    """The rewrites a model imported from ``source`` ("zoo", ".onnx", ".pt2") gets, in order;
    ``fuse`` (a ``FuseDCAC`` instance, which then reports what it did) last, when given."""
    passes = [FixTorchNearestResize()] if source in TORCH_SOURCES else []
    passes.append(FoldBatchNorm())
    if fuse is not None:
        passes.append(fuse)
    return passes


def prepare(imported: ImportedModel, fuse_dcac: bool = True, layout: str = "nchw",
            board: Board | None = None) -> PreparedModel:
    """``imported`` rewritten by ``preparation_passes`` (DC-AC fusion unless ``fuse_dcac`` is
    False), then converted to ``layout`` (one of ``LAYOUTS``) for ``board``'s vector ISA;
    blocks the fusion could not match are left alone and logged."""
    fuse = FuseDCAC() if fuse_dcac else None
    # one pass at a time, so that a failure names the pass (compile/stages.py)
    mod = run_passes(preparation_passes(imported.source, fuse), imported.mod)
    with stage(f"layout conversion ({layout})"):
        mod, report = convert_layout(mod, layout, board)
    return PreparedModel(imported=imported, mod=mod, fused_dcac=_fused(fuse), layout=report)


def prepare_model(source: ModelSource, fuse_dcac: bool = True, layout: str = "nchw",
                  board: Board | None = None) -> PreparedModel:
    """Import ``source`` and prepare it (see ``prepare``)."""
    return prepare(import_model(source), fuse_dcac=fuse_dcac, layout=layout, board=board)


def convert_layout(mod: Any, layout: str, board: Board | None) -> tuple[Any, LayoutReport]:
    """``mod`` with its convolutions in ``layout``, and what that took."""
    from tvmc_attend.errors import UserError

    if layout not in LAYOUTS:
        raise UserError(f"unknown layout '{layout}'; choose one of {', '.join(LAYOUTS)}")
    make = LAYOUTS[layout]
    if make is None:
        return mod, LayoutReport(layout)
    if board is None:
        raise ValueError(f"layout {layout} depends on the target: pass the board")
    step = make(board)
    converted = step(mod)
    if isinstance(step, BlockedLayout):
        return converted, LayoutReport(layout, step.blocked_convs, step.transforms,
                                       step.layouts)
    return converted, LayoutReport(layout, transforms=_layout_transforms(converted))


def _layout_transforms(mod: Any) -> int:
    """layout_transform / permute_dims ops on computed (not constant) tensors."""
    from tvm import relax

    count = [0]

    def visit(expr: Any) -> None:
        if isinstance(expr, relax.Call) and getattr(expr.op, "name", None) in (
                "relax.layout_transform", "relax.permute_dims") and \
                not isinstance(expr.args[0], tvm.ir.expr.GenericConst):
            count[0] += 1

    relax.analysis.post_order_visit(mod["main"], visit)
    return count[0]


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
