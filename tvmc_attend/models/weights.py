"""Weights for zoo models: a user's checkpoint, or a deterministic, non-degenerate initialisation.

No public AttendNeXt weights exist. A randomly initialised deep SiLU/BN network with default BN
statistics (mean 0, var 1) can collapse so that its logits equal the classifier bias; numerics
tests comparing TVM with PyTorch would then pass while testing nothing. Calibrating the BN running
statistics on a seeded random batch keeps every layer's activations at unit scale.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from tvmc_attend.errors import UserError

CALIBRATION_BATCH = 2
CALIBRATION_PASSES = 2
_EXAMPLES = 3  # how many offending keys an error message names


def init_weights(
    model: nn.Module, input_shape: tuple[int, ...], seed: int = 0, passes: int = CALIBRATION_PASSES
) -> nn.Module:
    """Calibrate BatchNorm running statistics in place and return the model in eval mode.

    Parameters keep their (seeded) initialisation: call ``torch.manual_seed(seed)`` before building
    the model. The statistics are the cumulative average (``momentum=None``) over ``passes``
    train-mode forwards of seeded N(0, 1) batches of ``CALIBRATION_BATCH`` at ``input_shape``.
    """
    bns = [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]
    if not bns:
        return model.eval()
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    generator = torch.Generator().manual_seed(seed)
    shape = (CALIBRATION_BATCH, *input_shape[1:])
    model.train()
    try:
        with torch.no_grad():
            for _ in range(passes):
                model(torch.randn(shape, generator=generator))
    finally:
        for bn, momentum in zip(bns, momenta, strict=True):
            bn.momentum = momentum
        model.eval()
    return model


def _first_line(err: BaseException, limit: int = 160) -> str:
    text = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load a checkpoint file and unwrap a bare, ``state_dict``- or ``model``-nested state dict."""
    hint = "save it with torch.save(model.state_dict(), path)"
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found; pass the path of a file ({hint})")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors come in many types, all multi-line
        raise UserError(f"cannot read checkpoint {path} ({_first_line(err)}); {hint}") from None
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if (
        not isinstance(obj, Mapping)
        or not obj
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    ):
        raise UserError(
            f"checkpoint {path} is not a state dict (it holds a {type(obj).__name__} that is not a "
            f"non-empty name -> tensor mapping); {hint}, bare or under 'state_dict' or 'model'"
        )
    state = dict(obj)
    if all(k.startswith("module.") for k in state):  # saved from DataParallel / DDP
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def _mismatch_message(
    model: nn.Module, state: dict[str, torch.Tensor], path: Path, name: str
) -> str | None:
    """One line naming what does not fit, or None when ``state`` fits ``model`` exactly."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k}: checkpoint {list(state[k].shape)} vs model {list(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    parts = [
        f"{len(items)} {label} (e.g. {', '.join(items[:_EXAMPLES])})"
        for label, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", shapes),
        )
        if items
    ]
    if not parts:
        return None
    return (
        f"checkpoint {path} does not fit {name}: {', '.join(parts)}; "
        f"use a checkpoint saved from {name} with the same number of classes"
    )


def load_checkpoint(model: nn.Module, path: str | Path, name: str) -> nn.Module:
    """Load a state dict strictly into ``model`` (named ``name`` in messages); eval mode."""
    path = Path(path)
    state = _read_state_dict(path)
    # Old checkpoints often lack BN batch counters; they do not affect inference.
    for key, value in model.state_dict().items():
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = value
    message = _mismatch_message(model, state, path, name)
    if message:
        raise UserError(message)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:  # e.g. a dtype that cannot be copied
        raise UserError(
            f"checkpoint {path} does not load into {name} ({_first_line(err)})"
        ) from None
    return model.eval()
