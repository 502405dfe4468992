"""Frontends: a zoo model via torch.export, the same network as .onnx and as .pt2, each built for
the host and run in TVM's VM, match PyTorch within 1e-5 relative error; import errors are
one-line UserErrors.

Each AttendNeXt build here costs about a minute on a 2-core machine (most of it in
FoldConstant): those tests are marked slow.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import RTOL, assert_depends_on_input, inputs, rel_err

from tvmc_attend.compiler.build import build_executable
from tvmc_attend.compiler.frontend import ImportedModel, ModelSource, import_model
from tvmc_attend.compiler.prepare import prepare
from tvmc_attend.errors import UserError
from tvmc_attend.models import create_model
from tvmc_attend.targets import get_board

SIZE = 64  # AttendNeXt input resolution for these tests
DCAC_SIZE = 16


def run_in_tvm(imported: ImportedModel, xs: list[np.ndarray]) -> list[np.ndarray]:
    """Prepare (without the DC-AC fusion), build for the host, run ``xs`` in the Relax VM."""
    import tvm

    executable = build_executable(prepare(imported, fuse_dcac=False).mod, get_board("host"))
    vm = tvm.relax.VirtualMachine(executable, tvm.cpu())
    outs = []
    for x in xs:
        out = vm["main"](tvm.runtime.tensor(x))
        assert not isinstance(out, (tuple, list)), "single output expected (unwrapped tuple)"
        outs.append(out.numpy())
    return outs


def assert_matches(imported: ImportedModel, reference_module: torch.nn.Module) -> None:
    xs = inputs(imported.input_shape)
    refs = assert_depends_on_input(reference_module, xs)
    for out, ref in zip(run_in_tvm(imported, xs), refs, strict=True):
        assert out.shape == ref.shape == imported.output_shape
        err = rel_err(out, ref)
        assert err <= RTOL, f"relative error {err:.3g} > {RTOL}"


@pytest.fixture(scope="module")
def attendnext() -> torch.nn.Module:
    return create_model("attendnext", input_size=SIZE, seed=0)


def export_onnx(module: torch.nn.Module, shape: tuple[int, ...], path) -> None:
    """torch 2.14 exports with the dynamo exporter (onnxscript); the TorchScript exporter is
    the fallback when that is not available."""
    example = (torch.zeros(shape),)
    try:
        torch.onnx.export(module, example, str(path), dynamo=True, input_names=["image"],
                          output_names=["logits"])
    except Exception:  # noqa: BLE001  (onnxscript missing or an exporter gap)
        torch.onnx.export(module, example, str(path), dynamo=False, input_names=["image"],
                          output_names=["logits"], opset_version=17)


# ---------------------------------------------------------------------------- numerics


@pytest.mark.slow
def test_zoo_model_via_torch_export_matches_pytorch(attendnext) -> None:
    imported = import_model(ModelSource("attendnext", input_size=SIZE))
    assert (imported.name, imported.source) == ("attendnext", "zoo")
    assert imported.input_shape == (1, 3, SIZE, SIZE) and imported.input_dtype == "float32"
    assert imported.output_shape == (1, 1000) and imported.output_dtype == "float32"
    assert imported.torch_module is not None
    # the frontend's PyTorch module is the zoo's, with the same (seeded) weights
    x = inputs(imported.input_shape, n=1)[0]
    with torch.no_grad():
        assert torch.equal(imported.torch_module(torch.from_numpy(x)),
                           attendnext(torch.from_numpy(x)))
    assert_matches(imported, attendnext)


@pytest.mark.slow
def test_onnx_file_matches_pytorch(attendnext, tmp_path) -> None:
    path = tmp_path / "attendnext.onnx"
    export_onnx(attendnext, (1, 3, SIZE, SIZE), path)
    imported = import_model(ModelSource(str(path)))
    assert (imported.name, imported.source) == ("attendnext", ".onnx")
    assert imported.input_name == "image"
    assert imported.input_shape == (1, 3, SIZE, SIZE)
    assert imported.output_shape == (1, 1000)
    assert_matches(imported, attendnext)


def test_pt2_file_matches_pytorch(tmp_path) -> None:
    module = create_model("dcac", input_size=DCAC_SIZE, seed=0)
    shape = (1, 40, DCAC_SIZE, DCAC_SIZE)
    path = tmp_path / "block.pt2"
    with torch.no_grad():
        torch.export.save(torch.export.export(module, (torch.zeros(shape),)), str(path))
    imported = import_model(ModelSource(str(path)))
    assert (imported.name, imported.source) == ("block", ".pt2")
    assert imported.input_shape == shape and imported.output_shape == shape
    assert_matches(imported, module)


def test_zoo_input_size_sets_the_shape() -> None:
    imported = import_model(ModelSource("dcac", input_size=8))
    assert imported.input_shape == (1, 40, 8, 8) == imported.output_shape


# ---------------------------------------------------------------------------- errors


def _one_line(excinfo: pytest.ExceptionInfo, *fragments: str) -> None:
    message = str(excinfo.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message


def test_unknown_zoo_model() -> None:
    with pytest.raises(UserError) as excinfo:
        import_model(ModelSource("resnet9000"))
    _one_line(excinfo, "resnet9000", "attendnext")


@pytest.mark.parametrize("suffix", [".onnx", ".pt2"])
def test_missing_model_file(tmp_path, suffix) -> None:
    with pytest.raises(UserError) as excinfo:
        import_model(ModelSource(str(tmp_path / f"absent{suffix}")))
    _one_line(excinfo, "does not exist")


@pytest.mark.parametrize(("suffix", "fragment"), [(".onnx", "cannot read"),
                                                  (".pt2", "cannot load")])
def test_garbage_model_file(tmp_path, suffix, fragment) -> None:
    path = tmp_path / f"garbage{suffix}"
    path.write_bytes(b"this is not a model\n" * 4)
    with pytest.raises(UserError) as excinfo:
        import_model(ModelSource(str(path)))
    _one_line(excinfo, fragment, str(path))


def test_onnx_with_two_inputs_is_refused(tmp_path) -> None:
    class TwoInputs(torch.nn.Module):
        def forward(self, a, b):
            return a + b

    path = tmp_path / "two.onnx"
    example = (torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))
    try:
        torch.onnx.export(TwoInputs().eval(), example, str(path), dynamo=True)
    except Exception:  # noqa: BLE001
        torch.onnx.export(TwoInputs().eval(), example, str(path), dynamo=False)
    with pytest.raises(UserError) as excinfo:
        import_model(ModelSource(str(path)))
    _one_line(excinfo, "2 inputs", "single-input")
