"""Export a PyTorch module to ONNX (for ONNX Runtime baselines and the ONNX frontend)."""

from __future__ import annotations

import contextlib
import io
import warnings
from typing import Any

from tvmc_attend.errors import UserError


def export_onnx(module: Any, example: Any, path: str, input_name: str = "x") -> str:
    """Write ``module`` traced at ``example`` to ``path`` with opset >= 17.

    The TorchScript exporter takes ~4 s for AttendNeXt where the torch.export-based one takes
    ~25 s and prints progress to stdout; the latter is the fallback for models the former
    cannot trace.
    """
    import torch

    kwargs = {"input_names": [input_name], "output_names": ["output"], "opset_version": 17}
    errors = []
    for dynamo in (False, True):
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                torch.onnx.export(module, (example,), path, dynamo=dynamo, **kwargs)
            return path
        except Exception as err:  # try the other exporter, then report both
            errors.append(f"{'dynamo' if dynamo else 'torchscript'}: {type(err).__name__}")
    raise UserError(f"could not export the model to ONNX ({'; '.join(errors)})")
