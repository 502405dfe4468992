"""Hub-style model names, offline: ``timm:<name>`` and ``torchvision:<name>``.

Any classification architecture timm or torchvision defines is a model by name, as in
``torch.hub`` or ``timm.create_model``, built with random weights (or ``--checkpoint FILE``):
nothing is downloaded at run time. The registry asks ``register_hub(name)`` about names it does
not know; a hub name is registered on first use, unlisted: ``list_models`` lists the zoo.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable

from torch import nn

from tvmc_attend.errors import UserError
from tvmc_attend.models.registry import register_model, register_resolver

DEFAULT_SIZE = 224


def _timm_names() -> list[str]:
    import timm

    return list(timm.list_models())


def _timm_size(arch: str) -> int:
    import timm

    size = getattr(timm.get_pretrained_cfg(arch), "input_size", None)  # (C, H, W)
    return int(size[-1]) if size else DEFAULT_SIZE


def _timm_factory(arch: str) -> Callable[..., nn.Module]:
    def factory(num_classes: int = 1000) -> nn.Module:
        import timm

        return timm.create_model(arch, pretrained=False, num_classes=num_classes)
    return factory


def _torchvision_names() -> list[str]:
    import torchvision

    # classification models only: the module filter leaves out detection, video, ...
    return list(torchvision.models.list_models(module=torchvision.models))


def _torchvision_size(arch: str) -> int:
    """The crop size its published weights were trained at (299 for Inception v3), read from
    the weights' metadata (nothing is downloaded)."""
    import torchvision

    try:
        weights = torchvision.models.get_model_weights(arch).DEFAULT
        crop = weights.transforms().crop_size
    except (ValueError, AttributeError, KeyError):
        return DEFAULT_SIZE
    return int(crop[0])


def _torchvision_factory(arch: str) -> Callable[..., nn.Module]:
    def factory(num_classes: int = 1000) -> nn.Module:
        import torchvision

        return torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    return factory


# hub -> (the names it accepts, an architecture's input size, its factory)
HUBS: dict[str, tuple[Callable[[], list[str]], Callable[[str], int],
                      Callable[[str], Callable[..., nn.Module]]]] = {
    "timm": (_timm_names, _timm_size, _timm_factory),
    "torchvision": (_torchvision_names, _torchvision_size, _torchvision_factory),
}


def hub_names(hub: str) -> list[str]:
    """Every ``hub:<name>`` the hub accepts."""
    names, _size, _factory = HUBS[hub]
    return [f"{hub}:{arch}" for arch in names()]


@register_resolver
def register_hub(name: str) -> bool:
    """Register ``timm:<arch>`` / ``torchvision:<arch>``; False for a name without a hub
    prefix; a UserError naming the closest architectures for an unknown one."""
    hub, sep, arch = name.partition(":")
    if not sep or hub not in HUBS:
        return False
    names, size_of, factory = HUBS[hub]
    try:
        known = names()
    except ImportError:
        raise UserError(f"model {name!r} needs {hub}; install it with "
                        "`pip install timm torchvision`") from None
    if arch not in known:
        close = difflib.get_close_matches(arch, known, n=3)
        hint = f"; did you mean {', '.join(f'{hub}:{c}' for c in close)}?" if close else ""
        raise UserError(f"{hub} has no model {arch!r}{hint} (`tvmc-attend models --all` "
                        "lists them)")
    size = size_of(arch)
    register_model(description=f"{arch} ({hub}, random weights)", family=hub, name=name,
                   default_input_shape=(1, 3, size, size), input_multiple=1,
                   listed=False)(factory(arch))
    return True
