"""ONNX Runtime node by node beside TVM's calls in the same model: which kinds of layer each
runtime runs faster.

ONNX Runtime's profiler (``SessionOptions.enable_profiling``) records each node's kernel time
in every run; the in-model check's timing instrument records each TVM call's. Both sides are
classed by what a layer computes (depthwise, pointwise, dense convolution; matmul; softmax;
pooling; layout copies; the rest), and convolutions are also matched one to one: both runtimes
run a model's convolutions in graph order, one node in ONNX Runtime and one fused kernel in
TVM per convolution, so the k-th of one is the k-th of the other. The match is checked by each
output's height and width and dropped (class totals only) when counts or sizes disagree.

Both profilers add a few microseconds per call (TVM's instrument 3-4 us, ONNX Runtime's
less); the whole-model times beside them are taken without either.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .variants import SETTLE_S, onnxruntime_session, onnxruntime_variant

# Layer kinds by name pattern, first match wins (TVM kernel names carry the fused ops' names;
# ONNX Runtime's carry the op type). Convolutions are split further by ``conv_kind``.
CONV = "conv"
MATMUL = "matmul"
CLASSIFIER = "classifier (2-d matmul)"
TVM_KINDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("VM builtins", ("vm.builtin.",)),
    (CONV, ("conv2d",)),
    ("fused DC-AC", ("dcac",)),
    (MATMUL, ("matmul", "dense")),
    ("softmax", ("softmax",)),
    ("pool / mean", ("mean", "pool")),
    ("layout / copy", ("layout_transform", "transpose", "reshape", "concat", "split",
                       "strided_slice", "unpack", "pack", "take", "squeeze")),
)
ONNXRUNTIME_KINDS: dict[str, str] = {
    **dict.fromkeys(("Conv", "FusedConv", "NhwcFusedConv", "QLinearConv"), CONV),
    **dict.fromkeys(("MatMul", "Gemm", "FusedMatMul", "FusedGemm"), MATMUL),
    "Softmax": "softmax",
    **dict.fromkeys(("GlobalAveragePool", "AveragePool", "MaxPool", "GlobalMaxPool",
                     "ReduceMean", "ReduceMax", "ReduceSum"), "pool / mean"),
    **dict.fromkeys(("Transpose", "Reshape", "ReorderInput", "ReorderOutput", "Flatten",
                     "Squeeze", "Unsqueeze", "Concat", "Split", "Slice", "Gather", "Expand"),
                    "layout / copy"),
}
OTHER = "element-wise / other"


@dataclass
class Layer:
    """One call of a whole-model run: its name, kind, output (height, width) for
    convolutions, and median microseconds per run."""

    name: str
    kind: str
    us: float
    out_hw: tuple[int, int] | None = None


def tvm_kind(name: str) -> str:
    return next((kind for kind, parts in TVM_KINDS if any(p in name for p in parts)), OTHER)


def conv_kind(weight_shape: Sequence[int], out_hw: tuple[int, int]) -> str:
    """A convolution's class from its OIHW weight shape and output size: what sets its speed
    (a 1x1 output is all weight traffic and launch, a depthwise one all memory)."""
    _out, in_per_group, kh, kw = weight_shape
    if out_hw == (1, 1):
        return "conv on a 1x1 map"
    if in_per_group == 1:
        return f"conv depthwise {kh}x{kw}"
    return "conv pointwise 1x1" if (kh, kw) == (1, 1) else f"conv dense {kh}x{kw}"


def _shape(entry: dict[str, Any]) -> list[int]:
    return next(iter(entry.values()))


def onnxruntime_layers(onnx_path: str, x: np.ndarray, threads: int, runs: int,
                       work_dir: str) -> tuple[list[Layer], float]:
    """(every node of one run, in execution order, with its median kernel time; the median
    whole-run time without the profiler, in ms, timed as ``compare`` times ONNX Runtime) for
    ``onnx_path`` at ``threads``."""
    # One session at a time: each has its own pool, whose workers spin after a call and
    # would slow the other's runs on a 2-core machine.
    profiled = onnxruntime_session(onnx_path, threads,
                                   os.path.join(work_dir, "onnxruntime-profile"))
    feed = {profiled.get_inputs()[0].name: x}
    for _ in range(5 + runs):  # warm-up, then the runs kept
        profiled.run(None, feed)
    with open(profiled.end_profiling()) as f:
        events = json.load(f)
    del profiled
    time.sleep(SETTLE_S)
    plain = onnxruntime_variant(onnx_path, threads)
    for _ in range(5):
        plain.run(x)
    whole = plain.time_runs(x, runs)
    run_spans = [(e["ts"], e["ts"] + e["dur"]) for e in events
                 if e.get("cat") == "Session" and e.get("name") == "model_run"][-runs:]
    per_node: dict[str, list[float]] = {}
    nodes: dict[str, Layer] = {}
    first_start, first_end = run_spans[0]
    for e in sorted(events, key=lambda e: e.get("ts", 0)):
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        if not any(lo <= e["ts"] <= hi for lo, hi in run_spans):
            continue  # a warm-up run
        name = e["name"].removesuffix("_kernel_time")
        per_node.setdefault(name, []).append(float(e["dur"]))
        if first_start <= e["ts"] <= first_end:
            args = e["args"]
            kind = ONNXRUNTIME_KINDS.get(args["op_name"], OTHER)
            out_hw = None
            if kind == CONV:  # classed by its weights
                out_hw = tuple(_shape(args["output_type_shape"][0])[2:4])
                kind = conv_kind(_shape(args["input_type_shape"][1]), out_hw)
            elif kind == MATMUL and len(_shape(args["input_type_shape"][0])) == 2:
                kind, out_hw = CLASSIFIER, (1, 1)
            nodes[name] = Layer(name, kind, 0.0, out_hw)
    for name, layer in nodes.items():
        layer.us = statistics.median(per_node[name])
    return list(nodes.values()), statistics.median(whole)


def in_sequence(layer: Layer) -> bool:
    """Convolutions and classifiers: one kernel or node each in both runtimes, in graph
    order (TVM may run a classifier as a conv, ``DenseAsConv``). A layer's ``out_hw`` is set
    for these only ((1, 1) for a 2-d output)."""
    return layer.out_hw is not None and (layer.kind.startswith(CONV) or
                                         layer.kind in (MATMUL, CLASSIFIER))


@dataclass
class Versus:
    """TVM's and ONNX Runtime's layers of one model, side by side; ``pairs``: the matched
    convolutions (TVM's, ONNX Runtime's), empty when they could not be matched."""

    tvm: list[Layer]
    onnxruntime: list[Layer]
    onnxruntime_whole_ms: float
    conv_match: str
    pairs: list[tuple[Layer, Layer]]

    @classmethod
    def of(cls, calls: list[tuple[str, float, tuple[int, int] | None]],
           onnxruntime: list[Layer], onnxruntime_whole_ms: float) -> Versus:
        """TVM's ``calls`` of one run (callee, us, output size) as layers beside ONNX
        Runtime's, each TVM convolution classed by its ONNX Runtime twin when they match."""
        layers = [Layer(name, tvm_kind(name), us, out_hw) for name, us, out_hw in calls]
        ours = [layer for layer in layers if in_sequence(layer)]
        theirs = [layer for layer in onnxruntime if in_sequence(layer)]
        # A conv on a 1x1 map (a squeeze-excite gate) may write a whole map in TVM: the
        # multiply by the gate is fused into it, where ONNX Runtime runs a node of its own.
        # (A classifier's (1, 1) matches TVM's 1x1 conv or 2-d matmul alike.)
        differ = (sum(a.out_hw != b.out_hw and b.out_hw != (1, 1)
                      for a, b in zip(ours, theirs, strict=True))
                  if len(ours) == len(theirs) else None)
        if differ is None:
            match = (f"not matched: TVM runs {len(ours)} convolution and classifier kernels, "
                     f"ONNX Runtime {len(theirs)} such nodes")
        elif differ:
            match = f"not matched: {differ} convolutions' output sizes differ in order"
        else:
            match = (f"matched: {len(ours)} convolutions and classifiers one to one by graph "
                     "order, output sizes agree")
            for a, b in zip(ours, theirs, strict=True):
                a.kind = b.kind
        pairs = list(zip(ours, theirs, strict=True)) if differ == 0 else []
        return cls(layers, onnxruntime, onnxruntime_whole_ms, match, pairs)

    def by_kind(self) -> list[dict[str, Any]]:
        """Per kind: layers and summed median us on each side, largest time first."""
        kinds: dict[str, dict[str, Any]] = {}
        for side, layers in (("tvm", self.tvm), ("onnxruntime", self.onnxruntime)):
            for layer in layers:
                row = kinds.setdefault(layer.kind, {"kind": layer.kind, "tvm_us": 0.0,
                                                    "tvm_layers": 0, "onnxruntime_us": 0.0,
                                                    "onnxruntime_layers": 0})
                row[f"{side}_us"] += layer.us
                row[f"{side}_layers"] += 1
        return sorted(kinds.values(), key=lambda r: -max(r["tvm_us"], r["onnxruntime_us"]))

    def conv_pairs(self) -> list[dict[str, Any]]:
        """Matched convolutions in graph order (position), the ones TVM loses most on first."""
        rows = [{"position": i, "kind": b.kind, "out_hw": list(b.out_hw), "tvm": a.name,
                 "onnxruntime": b.name, "tvm_us": a.us, "onnxruntime_us": b.us}
                for i, (a, b) in enumerate(self.pairs)]
        return sorted(rows, key=lambda p: p["onnxruntime_us"] - p["tvm_us"])

    def as_json(self) -> dict[str, Any]:
        return {"onnxruntime_whole_ms": self.onnxruntime_whole_ms,
                "tvm_layers_us": sum(layer.us for layer in self.tvm),
                "onnxruntime_nodes_us": sum(layer.us for layer in self.onnxruntime),
                "conv_match": self.conv_match, "by_kind": self.by_kind(),
                "conv_pairs": self.conv_pairs(),
                "tvm_calls": [asdict(layer) for layer in self.tvm],
                "onnxruntime_nodes": [asdict(layer) for layer in self.onnxruntime]}
