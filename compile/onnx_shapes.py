"""Fold an ONNX graph's run-time shape computations once its input shape is fixed.

Files from PyTorch's TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``, the
way most ONNX files in circulation were made) compute reshape targets at run time:
``Shape -> Gather -> Unsqueeze -> Concat -> Reshape`` in channel shuffles and flattens. TVM's
Relax frontend carries those values as symbolic shapes, and a convolution or reshape fed by one
fails to import or to legalise. With the input shape bound, every such chain is a constant.

ONNX Runtime folds them: its basic graph optimisations (constant folding, which folds
``Shape`` of a tensor whose shape is known, and redundant-node elimination) keep to standard
ONNX operators. It is the reference every ``.onnx`` build is verified against, and already a
dependency; on a TorchScript-exported ShuffleNetV2 it gives the same graph as onnxslim
(954 -> 186 nodes) in 0.12 s instead of 2.1 s.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from typing import Any

# Operators whose output is a property of a tensor's shape rather than of its values.
SHAPE_OPS = frozenset({"Shape", "Size"})


def has_runtime_shapes(proto: Any) -> bool:
    """Whether the graph computes anything from a tensor's shape at run time."""
    return any(node.op_type in SHAPE_OPS for node in proto.graph.node)


def with_input_shape(proto: Any, input_name: str, shape: Sequence[int]) -> Any:
    """A copy of ``proto`` whose input ``input_name`` has the static ``shape``."""
    import onnx

    fixed = onnx.ModelProto()
    fixed.CopyFrom(proto)
    (graph_input,) = [i for i in fixed.graph.input if i.name == input_name]
    dims = graph_input.type.tensor_type.shape.dim
    del dims[:]
    for size in shape:
        dims.add().dim_value = int(size)
    return fixed


def fold_runtime_shapes(proto: Any, input_name: str, shape: Sequence[int]) -> Any:
    """``proto`` with its input bound to ``shape`` and every shape computation folded to a
    constant by ONNX Runtime's basic graph optimisations."""
    import onnx
    import onnxruntime as ort

    fixed = with_input_shape(proto, input_name, shape)
    with tempfile.TemporaryDirectory(prefix="tvmc-attend-onnx-") as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = os.path.join(tmp, "folded.onnx")
        options.log_severity_level = 3  # its warnings are about the session, not the file
        ort.InferenceSession(fixed.SerializeToString(), options,
                             providers=["CPUExecutionProvider"])
        return onnx.load(options.optimized_model_filepath)
