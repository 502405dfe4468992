"""Any CNN a user brings: one small network per family (channel shuffle, squeeze-excite with
depthwise convs, dense concat, attention) exported by both of PyTorch's ONNX exporters compiles
for the host and verifies against ONNX Runtime; a file TVM cannot take fails in one line that
names the stage and the operator, and ``--debug`` shows the traceback.

The TorchScript exporter (``dynamo=False``, how most ONNX files in circulation were made)
computes reshape targets at run time (Shape -> Gather -> Concat -> Reshape); those files failed
to import before their shape computations were folded (``compile/onnx_shapes.py``).
"""

from __future__ import annotations

import contextlib
import io
import warnings

import onnx
import pytest
import torch
from helpers import assert_cli_error, cli_here, output
from torch import nn

from tvmc_attend.compiler.frontend import ModelSource, import_model
from tvmc_attend.compiler.onnx_shapes import SHAPE_OPS, fold_runtime_shapes, has_runtime_shapes
from tvmc_attend.compiler.stages import StageError, run_passes


def _shufflenet() -> nn.Module:
    from torchvision.models import ShuffleNetV2

    return ShuffleNetV2([2, 2, 2], [8, 16, 32, 64, 128], num_classes=10)


def _mobilenet_v3() -> nn.Module:
    from torchvision.models import mobilenet_v3_small

    return mobilenet_v3_small(num_classes=10, width_mult=0.25)


def _densenet() -> nn.Module:
    from torchvision.models import DenseNet

    return DenseNet(growth_rate=8, block_config=(2, 2), num_init_features=16, bn_size=2,
                    num_classes=10)


def _vit() -> nn.Module:
    from torchvision.models import VisionTransformer

    return VisionTransformer(image_size=32, patch_size=8, num_layers=1, num_heads=2,
                             hidden_dim=32, mlp_dim=64, num_classes=10)


# family -> (a small network of it, the input size it is exported at)
FAMILIES = {
    "channel-shuffle": (_shufflenet, 48),
    "squeeze-excite-depthwise": (_mobilenet_v3, 48),
    "dense-concat": (_densenet, 40),
    "attention": (_vit, 32),
}
EXPORTERS = {"torchscript": False, "dynamo": True}


def export(module: nn.Module, size: int, path, dynamo: bool,
           dynamic: dict[int, str] | None = None) -> str:
    """``module`` exported to ONNX at ``size``; TorchScript exports get a symbolic batch (and
    ``dynamic`` dims), as files made for deployment usually have."""
    torch.manual_seed(0)
    module = module.eval()
    example = torch.randn(1, 3, size, size)
    # both exporters print progress and deprecation notes; the file is what matters here
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), str(path), dynamo=dynamo, input_names=["x"],
                          output_names=["y"], opset_version=17,
                          **({} if dynamo else {"dynamic_axes": {"x": dynamic or {0: "batch"}}}))
    return str(path)


@pytest.mark.slow
@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("family", FAMILIES)
def test_family_compiles_and_verifies_from_both_exporters(family, exporter, tmp_path) -> None:
    make, size = FAMILIES[family]
    path = export(make(), size, tmp_path / f"{family}.onnx", EXPORTERS[exporter])
    out = tmp_path / "bundle"
    result = cli_here("compile", "--model", path, "--target", "host", "-o", out, "--untuned")
    assert result.returncode == 0, output(result)
    assert "verified against onnxruntime" in result.stdout, output(result)
    assert "Traceback" not in result.stderr


def test_torchscript_shape_chains_fold_to_constants(tmp_path) -> None:
    """The folded graph has no shape computation left, keeps the bound input shape, and
    computes what the file computes (ONNX Runtime on both, at two inputs)."""
    import numpy as np
    import onnxruntime as ort

    path = export(_shufflenet(), 48, tmp_path / "shuffle.onnx", dynamo=False,
                  dynamic={0: "batch", 2: "height", 3: "width"})
    proto = onnx.load(path)
    assert has_runtime_shapes(proto), "the TorchScript export computes shapes at run time"
    for shape in ([1, 3, 48, 48], [1, 3, 33, 65]):  # the exported size and another
        folded = fold_runtime_shapes(proto, "x", shape)
        assert not {n.op_type for n in folded.graph.node} & SHAPE_OPS
        dims = [d.dim_value for d in folded.graph.input[0].type.tensor_type.shape.dim]
        assert dims == shape
        x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
        want = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None,
                                                                                 {"x": x})[0]
        got = ort.InferenceSession(folded.SerializeToString(),
                                   providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_unsupported_operator_is_one_line_naming_stage_and_operator(tmp_path) -> None:
    class WithCelu(nn.Module):  # CELU: a standard ONNX operator TVM's frontend lacks
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return nn.functional.celu(self.conv(x))

    path = export(WithCelu(), 16, tmp_path / "celu.onnx", dynamo=False)
    out = tmp_path / "bundle"
    result = cli_here("compile", "--model", path, "-o", out, "--untuned")
    assert_cli_error(result, "import (TVM's ONNX frontend) failed", "Celu",
                     "report the model file")
    assert result.returncode == StageError.exit_code and not out.exists()
    debug = cli_here("compile", "--model", path, "-o", out, "--untuned", "--debug")
    assert debug.returncode == StageError.exit_code and not out.exists()
    assert "Traceback" in debug.stderr and "Celu" in debug.stderr.splitlines()[-1]


def test_a_failing_pass_is_named(tmp_path) -> None:
    """run_passes applies real Relax passes in order, and names the one that raised (a
    pass written to fail: no Relax pass fails on a valid model on purpose)."""
    from tvm import relax

    mod = import_model(ModelSource("dcac", input_size=8)).mod
    legalized = run_passes([relax.transform.LegalizeOps()], mod, kind="lowering")
    assert legalized is not mod

    @relax.transform.function_pass(opt_level=0, name="RaisesOnPurpose")
    class RaisesOnPurpose:
        def transform_function(self, func, _mod, _ctx):
            raise ValueError("the pass refuses this function")

    with pytest.raises(StageError) as excinfo:
        run_passes([relax.transform.LegalizeOps(), RaisesOnPurpose()], mod)
    message = str(excinfo.value)
    assert "graph rewrite (RaisesOnPurpose) failed" in message and "\n" not in message
    assert "the pass refuses this function" in message


@pytest.mark.slow
def test_hub_name_compiles_for_a_board_and_verifies(tmp_path) -> None:
    """A torchvision classifier by name, cross-compiled for rpi4 and checked on its host twin
    against PyTorch; the library's file name has no colon (scp reads one as host:path)."""
    out = tmp_path / "bundle"
    result = cli_here("compile", "--model", "torchvision:squeezenet1_1", "--input-size", 48,
                      "--target", "rpi4", "-o", out, "--untuned")
    assert result.returncode == 0, output(result)
    assert "verified against pytorch on host twin of rpi4" in result.stdout, output(result)
    assert [p.name for p in out.glob("*.so")] == ["torchvision-squeezenet1_1-rpi4.so"]


def test_models_all_lists_every_accepted_name() -> None:
    import json

    result = cli_here("models", "--all", "--json")
    assert result.returncode == 0, output(result)
    names = json.loads(result.stdout)
    assert names["zoo"][0] == "attendnext"
    assert "torchvision:inception_v3" in names["torchvision"]
    assert "timm:mobilenetv3_large_100" in names["timm"] and len(names["timm"]) > 500


@pytest.mark.slow
def test_sweep_records_each_build_and_resumes(tmp_path) -> None:
    """`sweep` on the DC-AC block (one exporter, the host): one verified build in the JSON and
    the Markdown table; a rerun with the same JSON builds nothing again."""
    import json

    report, table = tmp_path / "sweep.json", tmp_path / "sweep.md"
    args = ("sweep", "--models", "dcac", "--targets", "host", "--paths", "torchscript",
            "--json", report, "--markdown", table)
    first = cli_here(*args)
    assert first.returncode == 0, output(first)
    assert "dcac torchscript host: ok" in first.stdout
    (build,) = json.loads(report.read_text())["builds"]
    assert build["ok"] and build["max_rel_err"] < 1e-4 and build["seconds"] > 0
    assert "| dcac |" in table.read_text() and "1 of 1 builds" in table.read_text()
    again = cli_here(*args)
    assert again.returncode == 0 and "dcac torchscript host" not in again.stdout
    assert len(json.loads(report.read_text())["builds"]) == 1


def test_sweep_rejects_an_unknown_path(tmp_path) -> None:
    result = cli_here("sweep", "--paths", "tflite", "--json", tmp_path / "s.json")
    assert_cli_error(result, "unknown --paths tflite", "torchscript")


def test_sweep_refuses_to_resume_from_another_json(tmp_path) -> None:
    other = tmp_path / "other.json"
    other.write_text('{"model": "attendnext"}')
    result = cli_here("sweep", "--models", "dcac", "--json", other)
    assert_cli_error(result, "is not a sweep report to resume", "another --json")
    assert other.read_text() == '{"model": "attendnext"}'  # left as it was


class _DividesByNumbers(nn.Module):
    """Division by a Python number in each rounding mode, on float32 and on an int64 arange."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        index = torch.arange(x.shape[-1])
        return (x // 2 + torch.div(x, 3, rounding_mode="trunc") + x / 4
                + (index // 2).to(x.dtype) + torch.div(x * 5, 1.5, rounding_mode="floor"))


@pytest.mark.parametrize("shape", [(1, 3, 5, 7), (2, 1, 1, 1), (1, 4, 8, 16)])
def test_torch_export_divisions_by_numbers_keep_their_dtype(shape) -> None:
    """TVM 0.27 imports ``tensor // number`` with an int32 constant whatever the tensor's
    dtype (EdgeNeXt failed to import through torch.export): compile/torch_converters.py."""
    import numpy as np
    import tvm
    from tvm import relax

    from tvmc_attend.compiler.frontend import _from_exported_program

    net = _DividesByNumbers().eval()
    x = torch.from_numpy(np.random.default_rng(1).standard_normal(shape).astype("float32") * 9)
    mod = _from_exported_program(torch.export.export(net, (x,)))
    vm = relax.VirtualMachine(relax.build(mod, target="llvm"), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x.numpy())).numpy()
    np.testing.assert_allclose(got, net(x).numpy(), rtol=1e-6, atol=1e-5)
