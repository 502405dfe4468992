"""Inputs for `run` and `benchmark`: a .npy array, an image file, or a seeded random tensor."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from tvmc_attend.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
# ImageNet normalisation, as every zoo model expects.
_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32).reshape(1, 3, 1, 1)
_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32).reshape(1, 3, 1, 1)


def random_input(shape: Sequence[int], dtype: str = "float32", seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(tuple(shape)).astype(dtype)


def _load_image(path: str, shape: Sequence[int]) -> np.ndarray:
    from PIL import Image

    if len(shape) != 4 or shape[1] != 3:
        raise UserError(f"an image input needs a model with input 1x3xHxW, not {list(shape)}; "
                        "pass a .npy array instead")
    try:
        img = Image.open(path).convert("RGB").resize((shape[3], shape[2]), Image.BILINEAR)
    except OSError as err:
        raise UserError(f"cannot read image '{path}' ({err}); pass a PNG/JPEG or .npy") from None
    arr = np.asarray(img, dtype=np.float32).transpose(2, 0, 1)[None] / 255.0
    return (arr - _MEAN) / _STD


def load_input(path: str | None, shape: Sequence[int], dtype: str = "float32") -> np.ndarray:
    """Read the input for a model of ``shape``: .npy as-is, images resized and normalised."""
    if path is None:
        return random_input(shape, dtype)
    if not os.path.isfile(path):
        raise UserError(f"input file '{path}' does not exist")
    if path.lower().endswith(".npy"):
        try:
            return np.load(path, allow_pickle=False)
        except ValueError as err:
            raise UserError(f"cannot read '{path}' as a .npy array ({err})") from None
    if path.lower().endswith(IMAGE_SUFFIXES):
        return _load_image(path, shape).astype(dtype)
    raise UserError(f"unsupported input '{path}': pass a .npy array or an image "
                    f"({', '.join(IMAGE_SUFFIXES)})")


def imagenet_labels(num_classes: int) -> list[str] | None:
    """ImageNet-1k class names (shipped inside torchvision, no download), if they apply."""
    if num_classes != 1000:
        return None
    try:
        from torchvision.models import ResNet18_Weights
    except ImportError:  # on a board without torchvision: indices only
        return None
    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def top_k(logits: np.ndarray, k: int = 5) -> list[tuple[int, float]]:
    """Indices and softmax probabilities of the ``k`` largest logits of a (1, N) output."""
    flat = logits.reshape(-1).astype(np.float64)
    probs = np.exp(flat - flat.max())
    probs /= probs.sum()
    order = np.argsort(-flat)[:k]
    return [(int(i), float(probs[i])) for i in order]
