"""Parameter and multiply-accumulate counts, the size figures the zoo and README quote."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@dataclass(frozen=True)
class ModelStats:
    params: int
    macs: int

    def __str__(self) -> str:
        return f"{self.params / 1e6:.2f} M params, {self.macs / 1e9:.3f} GMACs"


def count_params(model: nn.Module) -> int:
    """Trainable and frozen parameters (buffers such as BN running statistics excluded)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """MACs of one forward pass, traced by FlopCounterMode (convs, linears and attention
    matmuls alike; elementwise ops, norms and pools are not counted). FLOPs // 2."""
    param = next(model.parameters(), None)
    x = torch.zeros(input_shape, dtype=param.dtype if param is not None else torch.float32)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


def model_stats(model: nn.Module, input_shape: tuple[int, ...]) -> ModelStats:
    """Parameters and MACs of ``model`` for a batch of ``input_shape`` (NCHW)."""
    return ModelStats(params=count_params(model), macs=count_macs(model, tuple(input_shape)))
