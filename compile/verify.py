"""Check a compiled model against its framework before its bundle is written.

A compiler whose output can be wrong without a word is worse than a slow one: the fused
DC-AC operator was once 26 % off at 72x72 and nothing said so. ``compile`` therefore runs
what it built on a seeded input and compares it with the framework the model came from:
PyTorch for zoo models and .pt2 programs, ONNX Runtime for .onnx files. The error is relative
to the reference's largest magnitude (random-init models reach 1e7, so absolute errors mean
nothing).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .inputs import random_input

if TYPE_CHECKING:
    from .frontend import ImportedModel

# Max |TVM - reference| / max |reference| that a bundle may show (float32 kernels that
# reorder sums land around 1e-6 on every zoo model). The bound is max(tolerance, 2 x floor),
# floor being the reference's float32 distance to its float64 output (PyTorch in float64, or
# ONNX's reference evaluator in float64 for an .onnx file): a deep random-init network
# (FBNet-C) sits ~1e-5 from the exact answer in float32, and two float32 runtimes each that
# close to it can differ by twice that; a miscompile is orders of magnitude further off.
DEFAULT_TOLERANCE = 1e-5
VERIFY_SEED = 20260  # the seeded input is the same on every machine and every run


def float32_bound(tolerance: float, floor: float) -> float:
    """The relative error a float32 build may show against its reference: ``tolerance``, or
    twice the reference's float32 distance to its float64 output (``floor``) where larger."""
    return max(tolerance, 2 * floor)


@dataclass
class Verification:
    """What ``compile`` checked, as recorded in the bundle's metadata under ``verified``."""

    max_rel_err: float
    reference: str  # "pytorch" or "onnxruntime"
    where: str  # "host", "host twin of rpi4", or the RPC device it ran on
    tolerance: float
    seed: int = VERIFY_SEED
    float32_floor: float = 0.0  # the reference's float32 distance to its float64 output
    # The build's own distance to the float64 output, measured when it misses the float32
    # reference: a build at least as close to the exact answer as the bound is float32 noise
    # on the reference's side (Inception-v3 via ONNX: 5.4e-05 from ONNX Runtime, bound 4.8e-05).
    float64_err: float | None = None

    @property
    def bound(self) -> float:
        return float32_bound(self.tolerance, self.float32_floor)

    @property
    def passed(self) -> bool:
        return bool(self.max_rel_err <= self.bound or
                    (self.float64_err is not None and self.float64_err <= self.bound))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Reference:
    """The framework's own execution of the model."""

    name: str
    run: Callable[[np.ndarray], np.ndarray]
    run_float64: Callable[[np.ndarray], np.ndarray] | None = None  # the same in float64


def rel_err(out: np.ndarray, ref: np.ndarray) -> float:
    """Largest absolute difference relative to the reference's largest magnitude."""
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    if out.shape != ref.shape:
        return float("inf")
    return float(np.abs(out - ref).max() / max(np.abs(ref).max(), 1e-30))


def reference_for(imported: ImportedModel) -> Reference | None:
    """PyTorch for zoo models and .pt2 programs, ONNX Runtime for .onnx files."""
    if imported.torch_module is not None:
        module = imported.torch_module
        return Reference("pytorch", _torch_runner(module), lambda x: torch_float64(module, x))
    if imported.source == ".onnx" and imported.path:
        path = imported.path
        return Reference("onnxruntime", _onnxruntime_runner(path),
                         lambda x: onnx_float64(path, x))
    return None


def _torch_runner(module: Any) -> Callable[[np.ndarray], np.ndarray]:
    import torch

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = module(torch.from_numpy(np.ascontiguousarray(x)))
        if isinstance(out, (tuple, list)):
            (out,) = out
        return out.numpy()
    return run


def torch_float64(module: Any, x: np.ndarray) -> np.ndarray:
    """``module``'s output for ``x`` computed in float64, on a copy (``module`` stays as it
    is): how far float32 itself is from the exact answer."""
    import copy

    return _torch_runner(copy.deepcopy(module).double())(x.astype(np.float64))


def _onnxruntime_runner(path: str) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    # Reference numerics, not speed: no graph rewrites that change float rounding.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(x: np.ndarray) -> np.ndarray:
        return session.run(None, {name: x})[0]
    return run


def onnx_float64(path: str, x: np.ndarray) -> np.ndarray:
    """The ONNX file's output for ``x`` computed in float64 by ONNX's reference evaluator
    (numpy; ONNX Runtime has no float64 convolution): how far float32 itself is from the exact
    answer, as ``torch_float64`` for PyTorch. Only called when the float32 comparison is over
    the tolerance (ResNeXt-50 at 224: about 4 s)."""
    import onnx
    from onnx.reference import ReferenceEvaluator

    proto = onnx.load(path)
    _graph_as_float64(proto.graph)
    name = next(i.name for i in proto.graph.input
                if i.name not in {init.name for init in proto.graph.initializer})
    return ReferenceEvaluator(proto).run(None, {name: x.astype(np.float64)})[0]


def _graph_as_float64(graph: Any) -> None:
    """Every float32 tensor of ``graph`` (weights, constants, declared types, casts) made
    float64, in place."""
    from onnx import AttributeProto, TensorProto, numpy_helper

    def widen(tensor: Any) -> None:
        if tensor.data_type == TensorProto.FLOAT:
            tensor.CopyFrom(numpy_helper.from_array(
                numpy_helper.to_array(tensor).astype(np.float64), tensor.name))

    for init in graph.initializer:
        widen(init)
    for value in [*graph.input, *graph.output, *graph.value_info]:
        if value.type.tensor_type.elem_type == TensorProto.FLOAT:
            value.type.tensor_type.elem_type = TensorProto.DOUBLE
    for node in graph.node:
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT:
                attr.i = TensorProto.DOUBLE
            elif attr.type == AttributeProto.TENSOR:
                widen(attr.t)
            elif attr.type == AttributeProto.GRAPH:
                _graph_as_float64(attr.g)


def verify(run: Callable[[np.ndarray], np.ndarray], imported: ImportedModel, where: str,
           tolerance: float | None = None) -> Verification | None:
    """Run ``run`` (the compiled model) and the reference on the seeded input; None when the
    model has no reference to compare with. ``tolerance`` None: DEFAULT_TOLERANCE, widened to
    the reference's float32 floor (see DEFAULT_TOLERANCE); given, it is the bound."""
    reference = reference_for(imported)
    if reference is None:
        return None
    x = random_input(imported.input_shape, imported.input_dtype, seed=VERIFY_SEED)
    expected = reference.run(x)
    actual = run(x)
    err = rel_err(actual, expected)
    floor, own, widen = 0.0, None, tolerance is None
    tolerance = DEFAULT_TOLERANCE if tolerance is None else tolerance
    if widen and err > tolerance and reference.run_float64 is not None and \
            x.dtype == np.float32:
        try:
            exact = reference.run_float64(x)
        except Exception:  # noqa: BLE001 - a program that fails in float64 has no floor: 0
            exact = None
        if exact is not None:
            floor = rel_err(expected, exact)
            own = rel_err(actual, exact)
    return Verification(max_rel_err=err, reference=reference.name, where=where,
                        tolerance=tolerance, float32_floor=floor, float64_err=own)


@dataclass
class VerifyOptions:
    """How ``compile`` verifies: within ``tolerance``, on ``session`` (an RPC session to the
    board, described by ``device``) or, for a board without one, on the host twin."""

    tolerance: float | None = None  # None: DEFAULT_TOLERANCE or the float32 floor
    session: Any = None
    device: str = "host"
