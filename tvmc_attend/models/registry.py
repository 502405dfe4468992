"""Model registry in the style of timm: factories register themselves with ``@register_model``.

This module must not import the model definitions (``attendnext``, ``timm_peers``): the package
``__init__`` imports them so that they register, and this module stays import-cycle free.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from tvmc_attend.errors import UserError

# A factory builds an untrained module; ``num_classes`` is None for models without a classifier.
ModelFactory = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelSpec:
    """What the CLI and the compiler need to know about a zoo model without building it."""

    name: str
    description: str
    family: str  # "attendnext" | "timm"
    default_input_shape: tuple[int, int, int, int]
    factory: ModelFactory
    # Spatial sizes must be a multiple of this (the network's total downsampling factor).
    input_multiple: int = 32
    # Default classifier width; None means the model has no classifier (e.g. the lone DC-AC block).
    num_classes: int | None = 1000
    # False for models a resolver registered on first use (hub names, saved designs):
    # ``list_models`` lists the zoo, whatever a process has looked up before.
    listed: bool = True

    def input_shape(self, input_size: int | None = None) -> tuple[int, int, int, int]:
        """The NCHW input shape for a square ``input_size`` (the default shape when None)."""
        if input_size is None:
            return self.default_input_shape
        if (
            isinstance(input_size, bool)
            or not isinstance(input_size, int)
            or input_size <= 0
            or input_size % self.input_multiple
        ):
            raise UserError(
                f"input size {input_size!r} is not valid for {self.name}; "
                f"use a positive multiple of {self.input_multiple} (e.g. 224)"
            )
        n, c = self.default_input_shape[:2]
        return (n, c, input_size, input_size)


_REGISTRY: dict[str, ModelSpec] = {}
# Asked, in order, about a name that is not registered: each registers the model and returns
# True when it knows the name (e.g. a saved `explore` design). Not listed by ``list_models``.
ModelResolver = Callable[[str], bool]
_RESOLVERS: list[ModelResolver] = []


def register_model(
    *,
    description: str,
    family: str,
    default_input_shape: tuple[int, int, int, int] = (1, 3, 224, 224),
    input_multiple: int = 32,
    num_classes: int | None = 1000,
    name: str | None = None,
    listed: bool = True,
) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator registering a factory under its function name (or ``name``), in call order."""

    def decorator(factory: ModelFactory) -> ModelFactory:
        key = name or factory.__name__
        if key in _REGISTRY:
            raise ValueError(f"model {key!r} is registered twice")
        _REGISTRY[key] = ModelSpec(
            name=key,
            description=description,
            family=family,
            default_input_shape=tuple(default_input_shape),
            factory=factory,
            input_multiple=input_multiple,
            num_classes=num_classes,
            listed=listed,
        )
        return factory

    return decorator


def register_resolver(resolver: ModelResolver) -> ModelResolver:
    """Decorator adding ``resolver`` to the names looked up beyond the registered models."""
    _RESOLVERS.append(resolver)
    return resolver


def list_models() -> list[ModelSpec]:
    """The zoo's models, in registration order (the order the CLI lists them)."""
    return [spec for spec in _REGISTRY.values() if spec.listed]


def get_model_spec(name: str) -> ModelSpec:
    """Look a model up by name (asking the resolvers about an unregistered one); a UserError
    lists the valid names."""
    if name not in _REGISTRY:
        any(resolve(name) for resolve in _RESOLVERS)
    try:
        return _REGISTRY[name]
    except KeyError:
        valid = ", ".join(spec.name for spec in list_models())
        raise UserError(
            f"unknown model {name!r}; valid models: {valid} "
            "(or timm:<name>, torchvision:<name>, or a path to a .onnx or .pt2 file)"
        ) from None


def create_model(
    name: str,
    input_size: int | None = None,
    checkpoint: str | Path | None = None,
    seed: int = 0,
    num_classes: int | None = None,
) -> nn.Module:
    """Build a zoo model in eval mode: from ``checkpoint`` if given, else deterministically from
    ``seed`` with BatchNorm statistics calibrated so that outputs depend on the input."""
    import torch

    from tvmc_attend.models.weights import init_weights, load_checkpoint

    spec = get_model_spec(name)
    shape = spec.input_shape(input_size)
    if num_classes is not None:
        if spec.num_classes is None:
            raise UserError(f"model {name!r} has no classifier; drop the number of classes")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes <= 0:
            raise UserError(f"number of classes {num_classes!r} is not valid; use a positive int")
    kwargs = {} if spec.num_classes is None else {"num_classes": num_classes or spec.num_classes}
    torch.manual_seed(seed)
    model = spec.factory(**kwargs)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint, name)
    else:
        init_weights(model, shape, seed)
    return model.eval()
