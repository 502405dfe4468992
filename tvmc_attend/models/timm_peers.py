"""The four timm models AttendNeXt's paper compares against, built without network access.

timm is imported inside the factory, so ``import tvmc_attend.models`` does not pay for it.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from tvmc_attend.errors import UserError
from tvmc_attend.models.registry import register_model

# name -> description; registration order is the order listed.
PEERS = {
    "mobilenetv3_large_100": "MobileNetV3-Large 1.0 (timm), 5.5 M params",
    "mobileone_s1": "MobileOne-S1 (timm, unfused training form), 4.8 M params",
    "fbnetc_100": "FBNet-C (timm), 5.6 M params",
    "mobilevit_xs": "MobileViT-XS (timm), 2.3 M params",
}


def _create_timm(name: str, num_classes: int) -> nn.Module:
    """``timm.create_model`` with random weights: there are no downloads in this pipeline."""
    try:
        import timm
    except ImportError:
        raise UserError(
            f"model {name!r} needs timm; install it with `pip install timm torchvision`"
        ) from None
    return timm.create_model(name, pretrained=False, num_classes=num_classes)


def _make_factory(name: str) -> Callable[..., nn.Module]:
    """One registered factory per peer, sharing ``_create_timm``."""

    def factory(num_classes: int = 1000) -> nn.Module:
        return _create_timm(name, num_classes)

    factory.__name__ = name
    factory.__doc__ = f"{PEERS[name]}, random weights."
    return factory


for _name, _description in PEERS.items():
    register_model(description=_description, family="timm")(_make_factory(_name))
