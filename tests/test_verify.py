"""`compile` verifies what it writes, and models with dynamic input dims compile or say why.

Every bundle is run on a seeded input and compared with its framework (PyTorch for zoo models
and .pt2 files, ONNX Runtime for .onnx files) before it is written; the result is recorded in
the metadata. A mismatch writes nothing. Symbolic dims of .onnx/.pt2 inputs are bound from
--input-shape (a symbolic batch alone becomes 1); otherwise one line names them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import (
    RTOL,
    assert_bundle_matches,
    assert_cli_error,
    cli_here,
    onnx_reference,
    output,
    run_cli,
    torch_reference,
)
from torch import nn

DCAC = ("--model", "dcac", "--input-size", "12")


class TinyNet(nn.Module):
    """Conv, grouped conv, depthwise conv, pooling and a classifier: any H and W."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(16, 16, 3, padding=1, groups=4), nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.SiLU(),
            nn.MaxPool2d(2, 2, ceil_mode=True))
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))


def export_onnx(path: Path, dynamic: dict[int, str]) -> Path:
    torch.onnx.export(TinyNet().eval(), (torch.zeros(1, 3, 32, 32),), str(path),
                      input_names=["x"], output_names=["y"], dynamic_axes={"x": dynamic},
                      dynamo=False)
    return path


def metadata(bundle: Path) -> dict:
    return json.loads((bundle / "metadata.json").read_text())


# --------------------------------------------------------------------------- verification


def test_compile_records_what_it_verified(tmp_path) -> None:
    result = cli_here("compile", *DCAC, "--target", "host", "-o", tmp_path / "b")
    assert result.returncode == 0, output(result)
    verified = metadata(tmp_path / "b")["verified"]
    assert verified["reference"] == "pytorch" and verified["where"] == "host"
    assert 0 < verified["max_rel_err"] < verified["tolerance"] == 1e-5
    assert "verified against pytorch on host" in result.stdout


def test_a_mismatch_writes_nothing_and_says_what_to_try(tmp_path) -> None:
    """A tolerance no float32 build meets: the real check, failing, as a mismatch would."""
    out = tmp_path / "b"
    result = cli_here("compile", *DCAC, "--target", "host", "--tolerance", "1e-12", "-o", out)
    assert_cli_error(result, "differs from pytorch")
    for hint in ("--no-fuse-dcac", "--no-verify", "--tolerance"):
        assert hint in result.stderr
    assert not out.exists() and not list(tmp_path.glob(".bundle-*"))


def test_the_default_bound_widens_to_the_float32_floor_only() -> None:
    """Against PyTorch, the default bound is max(1e-5, 2 x PyTorch float32's distance to its
    own float64 output); an explicit --tolerance is exact."""
    from tvmc_attend.compiler.frontend import ImportedModel
    from tvmc_attend.compiler.verify import verify

    torch.manual_seed(0)
    net = nn.Sequential(*[nn.Sequential(nn.Linear(64, 64), nn.Tanh()) for _ in range(8)]).eval()
    imported = ImportedModel(name="mlp", source="zoo", mod=None, input_name="x",
                             input_shape=(4, 64), input_dtype="float32", output_shape=(4, 64),
                             output_dtype="float32", torch_module=net)
    import copy
    net64 = copy.deepcopy(net).double()

    def exact(x: np.ndarray) -> np.ndarray:  # float64 rounded to float32: the exact answer
        with torch.inference_mode():
            return net64(torch.from_numpy(x).double()).float().numpy()

    floor = verify(exact, imported, "host", tolerance=0.0).max_rel_err
    assert 0 < floor < 1e-5
    off = 1 + 5e-5  # a wrong answer: farther off than any float32 floor
    wrong = verify(lambda x: exact(x) * off, imported, "host")
    assert not wrong.passed and wrong.float32_floor > 0 and wrong.bound == 1e-5
    assert wrong.float64_err > wrong.bound  # the build's own distance: as far off
    strict = verify(exact, imported, "host", tolerance=floor / 2)
    assert not strict.passed and strict.float32_floor == 0


class _Cancelling(nn.Module):
    """x / 1000 computed as (x / 1000 + 1e4) - 1e4: float32 keeps ~3 digits of it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * 1e-3 + 1e4) - 1e4


def test_a_build_nearer_the_float64_answer_than_the_bound_passes() -> None:
    """A build may miss the float32 reference by more than the bound yet sit nearer the exact
    answer than the reference does (its float32 noise went the other way): the check then
    measures the build's own distance to the float64 output and passes on that, and a wrong
    answer, far from both, still fails."""
    from tvmc_attend.compiler.frontend import ImportedModel
    from tvmc_attend.compiler.verify import verify

    net = _Cancelling().eval()
    imported = ImportedModel(name="cancel", source="zoo", mod=None, input_name="x",
                             input_shape=(2, 33), input_dtype="float32", output_shape=(2, 33),
                             output_dtype="float32", torch_module=net)

    def exact(x: np.ndarray) -> np.ndarray:
        return x.astype(np.float64) * 1e-3

    def float32(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return net(torch.from_numpy(x)).numpy()

    def mirrored(x: np.ndarray) -> np.ndarray:  # 1.5 x the reference's error, other side
        return (exact(x) - 1.5 * (float32(x) - exact(x))).astype(np.float32)

    near = verify(mirrored, imported, "host")
    assert near.max_rel_err > near.bound > near.float64_err > near.float32_floor > 1e-5
    assert near.passed
    wrong = verify(lambda x: exact(x).astype(np.float32) * 1.5, imported, "host")
    assert wrong.float64_err > wrong.bound and not wrong.passed


def test_onnx_float64_reference_is_exact_and_widens_the_bound(tmp_path) -> None:
    """For an .onnx file the float32 floor comes from ONNX's reference evaluator in float64:
    it matches PyTorch in float64 (conv, BatchNorm, grouped conv, flatten, linear) far below
    float32's own error, so a deep net's float32 noise widens the bound and a wrong answer
    still fails."""
    from tvmc_attend.compiler.frontend import ImportedModel
    from tvmc_attend.compiler.verify import onnx_float64, verify

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 8, 3, groups=4, padding=1), nn.Flatten(),
                        nn.Linear(8 * 9 * 7, 5)).eval()
    path = tmp_path / "net.onnx"
    x = np.random.default_rng(3).standard_normal((1, 3, 11, 9)).astype(np.float32)
    torch.onnx.export(net, (torch.from_numpy(x),), str(path), dynamo=False,
                      input_names=["x"], opset_version=17)
    with torch.inference_mode():
        want = net.double()(torch.from_numpy(x).double()).numpy()
    got = onnx_float64(str(path), x)
    assert got.dtype == np.float64
    # ~2e-8, not 1e-15: the exporter folds BatchNorm into the conv's float32 weights
    assert np.abs(got - want).max() <= 1e-7 * np.abs(want).max()
    imported = ImportedModel(name="net", source=".onnx", mod=None, input_name="x",
                             input_shape=(1, 3, 11, 9), input_dtype="float32",
                             output_shape=(1, 5), output_dtype="float32", path=str(path))
    exact = lambda x: onnx_float64(str(path), x).astype(np.float32)  # noqa: E731
    noisy = verify(lambda x: exact(x) * (1 + 3e-7), imported, "host", tolerance=1e-7)
    assert not noisy.passed and noisy.float32_floor == 0  # explicit tolerance: exact
    wrong = verify(lambda x: exact(x) * (1 + 5e-4), imported, "host")
    assert not wrong.passed and wrong.float32_floor > 0 and wrong.bound < 5e-4


def test_no_verify_records_none(tmp_path) -> None:
    result = cli_here("compile", *DCAC, "--target", "host", "--no-verify", "-o", tmp_path / "b")
    assert result.returncode == 0, output(result)
    assert metadata(tmp_path / "b")["verified"] is None
    assert "not verified (--no-verify)" in result.stdout


def test_board_bundle_is_verified_on_its_host_twin(tmp_path) -> None:
    result = cli_here("compile", *DCAC, "--target", "rpi4", "-o", tmp_path / "b")
    assert result.returncode == 0, output(result)
    verified = metadata(tmp_path / "b")["verified"]
    assert verified["where"] == "host twin of rpi4" and verified["max_rel_err"] < RTOL


def test_onnx_bundle_is_verified_against_onnxruntime(tmp_path) -> None:
    path = export_onnx(tmp_path / "tiny.onnx", {})
    result = cli_here("compile", "--model", path, "--target", "host", "-o", tmp_path / "b")
    assert result.returncode == 0, output(result)
    assert metadata(tmp_path / "b")["verified"]["reference"] == "onnxruntime"


def test_no_verify_refuses_device_flags(tmp_path) -> None:
    result = cli_here("compile", *DCAC, "--no-verify", "--rpc-host", "127.0.0.1:9",
                     "-o", tmp_path / "b")
    assert_cli_error(result, "--no-verify")


@pytest.mark.slow
def test_attendnext_at_288_matches_pytorch(tmp_path) -> None:
    """288x288 puts the stage-1 DC-AC at 72x72, where the fused operator was 14 % off."""
    from tvmc_attend.models import create_model

    bundle = tmp_path / "an288"
    result = cli_here("compile", "--model", "attendnext", "--input-size", "288", "--target",
                     "host", "--untuned", "-o", bundle)
    assert result.returncode == 0, output(result)
    assert metadata(bundle)["fused_dcac"] == 4
    assert_bundle_matches(bundle, create_model("attendnext", input_size=288))


# ------------------------------------------------------------------------- dynamic inputs


def test_dynamic_onnx_without_a_shape_names_the_dims(tmp_path) -> None:
    path = export_onnx(tmp_path / "dyn.onnx", {0: "N", 2: "H", 3: "W"})
    result = cli_here("compile", "--model", path, "--target", "host", "-o", tmp_path / "b")
    assert_cli_error(result, "symbolic dimensions H, W")
    assert "--input-shape" in result.stderr and not (tmp_path / "b").exists()


def test_dynamic_onnx_with_input_shape_compiles_and_matches(tmp_path) -> None:
    path = export_onnx(tmp_path / "dyn.onnx", {0: "N", 2: "H", 3: "W"})
    bundle = tmp_path / "b"
    result = cli_here("compile", "--model", path, "--input-shape", "1x3x40x24", "--target",
                     "host", "-o", bundle)
    assert result.returncode == 0, output(result)
    meta = metadata(bundle)
    assert meta["input"]["shape"] == [1, 3, 40, 24]
    assert meta["verified"]["reference"] == "onnxruntime"
    assert_bundle_matches(bundle, onnx_reference(path))


def test_a_symbolic_batch_alone_becomes_one(tmp_path) -> None:
    path = export_onnx(tmp_path / "batch.onnx", {0: "batch"})
    result = cli_here("compile", "--model", path, "--target", "host", "-o", tmp_path / "b")
    assert result.returncode == 0, output(result)
    assert metadata(tmp_path / "b")["input"]["shape"] == [1, 3, 32, 32]


@pytest.mark.parametrize("shape, fragment", [("1x4x32x32", "does not fit"),
                                             ("1x3x32", "does not fit"),
                                             ("1x3xbig", "is not a shape")])
def test_bad_input_shape(shape, fragment, tmp_path) -> None:
    path = export_onnx(tmp_path / "dyn.onnx", {0: "N", 2: "H", 3: "W"})
    result = cli_here("compile", "--model", path, "--input-shape", shape, "-o", tmp_path / "b")
    assert_cli_error(result, fragment)


def test_dynamic_pt2(tmp_path) -> None:
    module = TinyNet().eval()
    quarter = torch.export.Dim("quarter", min=2, max=64)  # H = W = 4Q: the ceil-mode pool's guard
    exported = torch.export.export(module, (torch.zeros(2, 3, 32, 32),), dynamic_shapes={
        "x": {0: torch.export.Dim("N", max=16), 2: 4 * quarter, 3: 4 * quarter}})
    path = tmp_path / "dyn.pt2"
    torch.export.save(exported, str(path))
    result = cli_here("compile", "--model", path, "--target", "host", "-o", tmp_path / "b")
    assert_cli_error(result, "symbolic dimension")
    bundle = tmp_path / "b"
    result = cli_here("compile", "--model", path, "--input-shape", "1x3x48x48", "--target",
                     "host", "-o", bundle)
    assert result.returncode == 0, output(result)
    assert metadata(bundle)["verified"]["reference"] == "pytorch"
    # TinyNet's random-init output hardly moves with its input: compare, do not ask it to
    assert_bundle_matches(bundle, lambda x: torch_reference(module, x))


def test_zoo_models_take_input_size_not_shape(tmp_path) -> None:
    result = cli_here("compile", *DCAC, "--input-shape", "1x40x12x12", "-o", tmp_path / "b")
    assert_cli_error(result, "--input-size")


def test_benchmark_checks_an_onnx_model_against_onnxruntime(tmp_path) -> None:
    path = export_onnx(tmp_path / "tiny.onnx", {0: "N"})
    json_path = tmp_path / "bench.json"
    result = run_cli("benchmark", "--model", path, "--target", "host", "--log-dir",
                     tmp_path / "logs", "--rounds", 1, "--runs-per-round", 1, "--json", json_path)
    assert result.returncode == 0, output(result)
    data = json.loads(json_path.read_text())
    assert data["reference"] == "onnxruntime"
    assert data["tvm_untuned"]["max_rel_err"] is not None
    assert data["tvm_untuned"]["max_rel_err"] <= RTOL


@pytest.mark.emulated
def test_board_bundle_is_verified_on_the_board(emulated_rpi4, tmp_path) -> None:
    bundle = tmp_path / "b"
    result = cli_here("compile", *DCAC, "--target", "rpi4", "--rpc-tracker",
                     emulated_rpi4.tracker, "--rpc-key", emulated_rpi4.key, "-o", bundle)
    assert result.returncode == 0, output(result)
    verified = metadata(bundle)["verified"]
    assert emulated_rpi4.key in verified["where"] and "emulated" in verified["where"]
    assert verified["max_rel_err"] < RTOL
