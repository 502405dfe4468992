"""An AttendNeXt design: the few fields `tvmc-attend explore` varies, and the model they build.

A ``Design`` names one point: per-stage widths and depths, which stages carry a DC-AC block,
the DC-AC reduction and the number of columns (groups); its name is derived from those fields
alone (``explore-<hash>``), so a saved design (``saved.py``) compiles by name. The default is
the hand reconstruction (``AttendNeXtConfig``'s defaults).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from tvmc_attend.errors import UserError
from tvmc_attend.models.attendnext import DCAC, AttendNeXt, AttendNeXtConfig, StageConfig

NAME_PREFIX = "explore-"
STAGE_BLOCKS = ("basic", "basic", "bottleneck", "bottleneck")
STAGE_STRIDES = (1, 2, 2, 2)
# The last stage's final block widens by this factor (372 -> 744 in the reconstruction).
HEAD_EXPANSION = 2


@dataclass(frozen=True)
class Design:
    """One point of the space; ``dcac[i]`` says whether stage ``i + 1`` has a DC-AC block."""

    widths: tuple[int, ...] = (40, 84, 176, 372)
    depths: tuple[int, ...] = (4, 4, 7, 2)
    dcac: tuple[bool, ...] = (True, True, True, True)
    dcac_reduction: int = 4
    groups: int = 4

    @property
    def name(self) -> str:
        """A stable name derived from the design alone (same design, same name, any run)."""
        digest = hashlib.sha1(json.dumps(self.as_dict(), sort_keys=True).encode()).hexdigest()
        return f"{NAME_PREFIX}{digest[:8]}"

    def as_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Design:
        try:
            design = cls(widths=tuple(int(w) for w in data["widths"]),
                         depths=tuple(int(d) for d in data["depths"]),
                         dcac=tuple(bool(b) for b in data["dcac"]),
                         dcac_reduction=int(data["dcac_reduction"]), groups=int(data["groups"]))
        except (KeyError, TypeError, ValueError) as err:
            raise UserError(f"not a design ({type(err).__name__}: {err}); expected keys widths, "
                            "depths, dcac, dcac_reduction, groups") from None
        design.validate()
        return design

    def validate(self) -> None:
        """Refuse designs outside the space (e.g. a hand-edited saved config)."""
        stages = len(STAGE_BLOCKS)
        if not (len(self.widths) == len(self.depths) == len(self.dcac) == stages):
            raise UserError(f"a design needs {stages} widths, depths and dcac flags")
        if not self.dcac[0]:
            raise UserError("stage 1 must have a DC-AC block (early self-attention)")
        if self.groups < 2 or any(w % self.groups for w in self.widths):
            raise UserError(f"widths {list(self.widths)} must be multiples of groups "
                            f"{self.groups} (at least 2 columns)")
        if any(a > b for a, b in zip(self.widths[:-1], self.widths[1:], strict=True)):
            raise UserError(f"widths {list(self.widths)} must not shrink from stage to stage")
        if min(self.depths) < 1 or self.dcac_reduction < 1:
            raise UserError("depths and the DC-AC reduction must be positive")

    def config(self, num_classes: int = 1000) -> AttendNeXtConfig:
        stages = tuple(
            StageConfig(width=w, depth=d, block=block, stride=stride,
                        out_width=w * HEAD_EXPANSION if i == len(self.widths) - 1 else None)
            for i, (w, d, block, stride) in enumerate(
                zip(self.widths, self.depths, STAGE_BLOCKS, STAGE_STRIDES, strict=True)))
        return AttendNeXtConfig(num_classes=num_classes, stages=stages, groups=self.groups,
                                dcac_reduction=self.dcac_reduction)


def build_model(design: Design, num_classes: int = 1000) -> AttendNeXt:
    """The AttendNeXt of ``design`` (untrained). A stage without a DC-AC keeps an Identity in
    its place, since ``AttendNeXtConfig`` has no per-stage switch for it."""
    model = AttendNeXt(design.config(num_classes))
    for stage, keep in zip(model.stages, design.dcac, strict=True):
        if not isinstance(stage[1], DCAC):  # guards the layout _stage() builds
            raise TypeError("AttendNeXt stage layout changed: expected [transition, DC-AC, ...]")
        if not keep:
            stage[1] = nn.Identity()
    return model
