"""ONNX Runtime node by node (`benchmark --op in-model`'s comparison): its profile read into
layers of the right kind, in execution order, and TVM's calls matched to them. Cheap: a tiny
network through the real ONNX Runtime, no TVM build (the whole op runs in test_tune.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from tvmc_attend.bench.versus_onnxruntime import Layer, Versus, onnxruntime_layers
from tvmc_attend.compiler.onnx_export import export_onnx


class TinyNet(nn.Module):
    """Stem 3x3 stride 2, depthwise 5x5, pointwise 1x1, a squeeze-excite gate (its convs on a
    1x1 map), a classifier: one convolution of each kind, on a non-square input."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 24, 3, stride=2, padding=1)
        self.dw = nn.Conv2d(24, 24, 5, padding=2, groups=24)
        self.pw = nn.Conv2d(24, 40, 1)
        self.se_reduce, self.se_expand = nn.Conv2d(40, 8, 1), nn.Conv2d(8, 40, 1)
        self.fc = nn.Linear(40, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pw(torch.relu(self.dw(torch.relu(self.stem(x)))))
        gate = torch.sigmoid(self.se_expand(torch.relu(self.se_reduce(x.mean((2, 3), True)))))
        return self.fc((x * gate).mean((2, 3)))


KINDS = ["conv dense 3x3", "conv depthwise 5x5", "conv pointwise 1x1", "conv on a 1x1 map",
         "conv on a 1x1 map", "classifier (2-d matmul)"]
OUT_HW = [(10, 13), (10, 13), (10, 13), (1, 1), (1, 1), (1, 1)]


@pytest.fixture(scope="module")
def tiny_profile(tmp_path_factory) -> tuple[list[Layer], float]:
    work = tmp_path_factory.mktemp("versus")
    x = np.random.default_rng(0).standard_normal((1, 3, 19, 25)).astype(np.float32)
    path = export_onnx(TinyNet().eval(), torch.from_numpy(x), str(work / "tiny.onnx"))
    return onnxruntime_layers(path, x, threads=2, runs=5, work_dir=str(work))


def test_the_profile_gives_every_node_in_order_with_its_kind(tiny_profile) -> None:
    layers, whole_ms = tiny_profile
    convs = [layer for layer in layers if layer.out_hw is not None]
    assert [c.kind for c in convs] == KINDS and [c.out_hw for c in convs] == OUT_HW
    assert all(layer.us > 0 for layer in layers) and whole_ms > 0
    assert len({layer.name for layer in layers}) == len(layers)


def _tvm_calls(convs_hw: list[tuple[int, int]], classifier: str = "fused_matmul_add",
               ) -> list[tuple[str, float, tuple | None]]:
    """What the in-model timer reports for a run: builtins, fused conv kernels, a mean, the
    classifier (a 2-d matmul, or a 1x1 conv: ``DenseAsConv``)."""
    calls = [("vm.builtin.alloc_storage", 1.0, None)]
    calls += [(f"fused_blocked_conv2d{i}_add_relu", 10.0 + i, hw)
              for i, hw in enumerate(convs_hw)]
    return calls + [("mean1", 1.0, (1, 1)), (classifier, 5.0, (1, 1))]


def test_convolutions_match_by_order_and_take_onnxruntime_kinds(tiny_profile) -> None:
    layers, whole_ms = tiny_profile
    # TVM fuses the gate's multiply into its last conv: that kernel writes the whole map.
    for classifier in ("fused_matmul_add", "fused_blocked_conv2d9_add"):
        versus = Versus.of(_tvm_calls([*OUT_HW[:4], (10, 13)], classifier), layers, whole_ms)
        assert versus.conv_match.startswith("matched: 6 "), versus.conv_match
        assert [a.kind for a, _ in versus.pairs] == KINDS
    by_kind = {row["kind"]: row for row in versus.by_kind()}
    assert by_kind["conv on a 1x1 map"]["tvm_layers"] == 2
    assert by_kind["conv on a 1x1 map"]["tvm_us"] == pytest.approx(13.0 + 14.0)
    assert by_kind["VM builtins"]["onnxruntime_layers"] == 0
    assert [p["position"] for p in versus.conv_pairs()] != []


@pytest.mark.parametrize("tvm_hw, reason", [
    (OUT_HW[:4], "TVM runs 5 convolution and classifier kernels, ONNX Runtime 6"),
    ([(10, 13), (5, 7), *OUT_HW[2:5]], "1 convolutions' output sizes differ"),
])
def test_unmatched_convolutions_keep_class_totals_only(tiny_profile, tvm_hw, reason) -> None:
    layers, whole_ms = tiny_profile
    versus = Versus.of(_tvm_calls(tvm_hw), layers, whole_ms)
    assert reason in versus.conv_match and not versus.pairs and versus.conv_pairs() == []
    assert {row["kind"] for row in versus.by_kind()} >= {"conv", "conv depthwise 5x5"}
