"""NASWOT: a training-free accuracy proxy (Mellor et al., "Neural Architecture Search without
Training", ICML 2021).

Each input of a mini-batch gets a binary code: one bit per activation unit, set when the unit's
pre-activation is positive (for ReLU, "the unit is active"; for SiLU and other smooth gates we
take the sign of the pre-activation, as the issue asks). With c_i the code of input i and N_A the
number of units, K_H[i, j] = N_A - Hamming(c_i, c_j), and the score is log|det K_H|: networks
that map different inputs to more different activation patterns score higher, and in the paper
the score correlates with trained accuracy. Higher is better.

Differences from the paper, all forced by what this project has: no dataset ships here, so the
mini-batch is seeded N(0, 1) noise rather than images; the network is our deterministic seeded
initialisation (BatchNorm statistics calibrated, eval mode) rather than PyTorch's default init
in train mode; both keep the score reproducible for a seed.
"""

from __future__ import annotations

import torch
from torch import nn

# Activation modules whose pre-activation sign makes the code (timm's peers use these too).
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.LeakyReLU)
BATCH = 32


def naswot_score(model: nn.Module, input_shape: tuple[int, ...], batch: int = BATCH,
                 seed: int = 0) -> float:
    """log|det K_H| of ``model`` over a seeded N(0, 1) mini-batch of ``batch`` inputs shaped
    like ``input_shape`` (NCHW; its batch dimension is replaced)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((batch, *input_shape[1:]), generator=generator)
    kernel = torch.zeros(batch, batch, dtype=torch.float64)

    def accumulate(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        codes = (inputs[0].detach().flatten(1) > 0).to(torch.float64)
        # Agreements = units both on + units both off = N_A - Hamming distance.
        kernel.add_(codes @ codes.T + (1 - codes) @ (1 - codes).T)

    hooks = [m.register_forward_pre_hook(accumulate) for m in model.modules()
             if isinstance(m, ACTIVATIONS)]
    if not hooks:
        raise ValueError("the model has no activation modules to take codes from")
    try:
        with torch.no_grad():
            model(x)
    finally:
        for hook in hooks:
            hook.remove()
    sign, logdet = torch.linalg.slogdet(kernel)
    # K_H is a Gram matrix (positive semi-definite): sign 0 means identical codes, -inf.
    return float(logdet) if float(sign) > 0 else float("-inf")
