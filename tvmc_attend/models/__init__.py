"""The model zoo: AttendNeXt, its DC-AC block and the timm peers it is compared with,
AttendNeXt designs saved by `explore`, and any timm or torchvision classifier by hub-style name
(``timm:<name>``, ``torchvision:<name>``).

Importing the model modules registers them (``@register_model``), in the order ``list_models``
reports; ``saved`` and ``hub`` register the lookup of saved designs and of hub names. timm and
torchvision are imported only when one of their models is asked for.
"""

from tvmc_attend.models import (  # noqa: F401  (registration side effect)
    attendnext,
    hub,
    saved,
    timm_peers,
)
from tvmc_attend.models.attendnext import (
    DCAC,
    AttendNeXt,
    AttendNeXtConfig,
    DCACConfig,
    StageConfig,
)
from tvmc_attend.models.registry import (
    ModelSpec,
    create_model,
    get_model_spec,
    list_models,
    register_model,
)
from tvmc_attend.models.stats import ModelStats, model_stats
from tvmc_attend.models.weights import init_weights, load_checkpoint

__all__ = [
    "DCAC",
    "AttendNeXt",
    "AttendNeXtConfig",
    "DCACConfig",
    "ModelSpec",
    "ModelStats",
    "StageConfig",
    "create_model",
    "get_model_spec",
    "init_weights",
    "list_models",
    "load_checkpoint",
    "model_stats",
    "register_model",
]
