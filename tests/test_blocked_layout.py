"""Channel-blocked layouts: the blocked convolution is right for every layout pair, shape and
schedule in its space; the layout pass keeps every model's numerics; bundles and databases
record the layout.

The convolution is checked against PyTorch over dense, grouped and depthwise convs, 1x1/3x3/5x5
kernels, strides 1 and 2, odd, tiny and non-square maps, channel counts that are not a multiple
of the block (3, 12, 20, 44, 84), NCHW and blocked inputs; each with the untuned default
schedule and with random samples of its MetaSchedule design space (outputs poisoned with NaN,
so an element a schedule forgets to write fails). Fast subsets run by default; the full sweeps
are marked slow.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import (
    HOST_DB,
    RTOL,
    assert_bundle_matches,
    assert_cli_error,
    assert_depends_on_input,
    cli_here,
    inputs,
    onnx_reference,
    op_names,
    output,
    rel_err,
    run_cli,
)
from torch import nn

from tvmc_attend.relay_ops import BlockedConv, ChannelLayout, blocked_conv_compute
from tvmc_attend.relay_ops.fast_math import fast_silu
from tvmc_attend.targets import get_board

HOST = get_board("host")
L = ChannelLayout


def _conv_epilogue_func(conv: BlockedConv, residual: bool):
    """conv + bias + SiLU (+ residual), as FuseOps makes of a block's first layer."""
    from tvm import te

    ol = conv.out_layout
    data = te.placeholder(conv.in_layout.shape(conv.batch, conv.height, conv.width), name="d")
    weight = te.placeholder(conv.weight_shape(), name="w")
    bias = te.placeholder((1, ol.padded // ol.block, 1, 1, ol.block), name="bias")
    out = blocked_conv_compute(conv, data, weight, registers=32)
    biased = te.compute(out.shape, lambda *i: out(*i) + bias[0, i[1], 0, 0, i[4]], name="add")
    result = te.compute(out.shape, lambda *i: fast_silu(biased(*i)), name="silu")
    args = [data, weight, bias]
    if residual:
        res = te.placeholder(out.shape, name="res")
        args.append(res)
        result = te.compute(out.shape, lambda *i: result(*i) + res(*i), name="add_residual")
    return te.create_prim_func([*args, result])


def _check_conv(channels, out_channels, groups, height, width, kernel, stride, in_layout,
                out_layout, samples, residual=True):
    import tvm
    from tvm.s_tir import Schedule

    from tvmc_attend.schedules import FixedKnobs, SampledKnobs, schedule_blocked_conv

    pad = kernel // 2
    conv = BlockedConv(1, height, width, in_layout, out_layout, groups, (kernel, kernel),
                       (stride, stride), (pad,) * 4)
    func = _conv_epilogue_func(conv, residual)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, channels, height, width)).astype("float32")
    w = (rng.standard_normal((out_channels, channels // groups, kernel, kernel)) * 0.2
         ).astype("float32")
    b = rng.standard_normal(out_channels).astype("float32")
    ref = torch.nn.functional.silu(torch.nn.functional.conv2d(
        torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), stride=stride,
        padding=pad, groups=groups)).numpy()
    args = [in_layout.pack(x) if in_layout.blocked else x, conv.pack_weight(w),
            out_layout.pack(b.reshape(1, -1, 1, 1))]
    if residual:
        res = rng.standard_normal(ref.shape).astype("float32")
        ref = ref + res
        args.append(out_layout.pack(res))
    dev = tvm.cpu()
    tensors = [tvm.runtime.tensor(a, dev) for a in args]
    out_shape = out_layout.shape(1, *ref.shape[2:])
    schedules = [schedule_blocked_conv(Schedule(func), FixedKnobs())] + [
        schedule_blocked_conv(Schedule(func, seed=seed), SampledKnobs())
        for seed in range(1, samples + 1)]
    for sch in schedules:
        lib = tvm.compile(sch.mod, target=HOST.tvm_target()).jit()
        out = tvm.runtime.tensor(np.full(out_shape, np.nan, "float32"), dev)
        lib["main"](*tensors, out)
        err = rel_err(out_layout.unpack(out.numpy()), ref)
        assert err < RTOL, f"{conv}: {err:.2e} with\n{sch.trace}"


FAST_CONVS = [
    # (C, O, groups, H, W, kernel, stride, in layout, out layout)
    (176, 176, 4, 14, 14, 3, 1, L(176, 16, 4), L(176, 16, 4)),  # AttendNeXt stage 3
    (3, 32, 1, 23, 17, 3, 2, L(3), L(32, 16)),  # the stem: NCHW in, blocked out
    (84, 176, 4, 11, 6, 3, 2, L(84, 8, 4), L(176, 16, 4)),  # block 8 in, 16 out, stride 2
    (24, 24, 24, 13, 13, 3, 1, L(24, 8), L(24, 8)),  # depthwise
    (72, 72, 72, 9, 14, 3, 1, L(72, 16), L(72, 16)),  # depthwise, pads at the end
    (44, 44, 44, 7, 5, 5, 2, L(44, 16, 4), L(44, 16, 4)),  # depthwise, pads per group
    (12, 12, 4, 1, 1, 3, 1, L(12, 4, 4), L(12, 4, 4)),  # 1x1 map, NEON-size blocks
]
FULL_CONVS = FAST_CONVS + [
    (40, 40, 4, 9, 7, 3, 1, L(40, 8, 4), L(40, 8, 4)),
    (84, 176, 1, 5, 6, 1, 1, L(84, 8, 4), L(176, 16, 4)),  # dense 1x1 from group-padded
    (20, 20, 20, 6, 5, 5, 2, L(20, 16), L(20, 16)),  # depthwise 5x5, padded at the end
    (372, 744, 1, 7, 7, 1, 1, L(372, 16, 4), L(744, 16)),
    (32, 64, 1, 2, 3, 1, 1, L(32, 16), L(64, 16, 4)),
    (44, 44, 4, 31, 19, 3, 1, L(44, 16, 4), L(44, 16, 4)),
    (3, 16, 1, 112, 112, 3, 2, L(3), L(16, 8)),
    (20, 44, 4, 1, 64, 3, 1, L(20, 4, 4), L(44, 4, 4)),
]


@pytest.mark.parametrize("case", FAST_CONVS, ids=str)
def test_blocked_conv_default_and_sampled_schedules(case) -> None:
    _check_conv(*case, samples=4)


@pytest.mark.slow
@pytest.mark.parametrize("case", FULL_CONVS, ids=str)
def test_blocked_conv_full_sweep(case) -> None:
    _check_conv(*case, samples=20)


def test_depthwise_conv_reads_its_input_lane_by_lane() -> None:
    """A depthwise conv on channels that are not whole blocks indexes its input as its output
    (an affine index: vector loads), not through the pad-to-real-channel map (a ``min``
    per lane: a gather)."""
    from tvm import te

    for layout in (L(72, 16), L(44, 16, 4)):
        conv = BlockedConv(1, 9, 14, layout, layout, layout.channels, (3, 3), (1, 1), (1,) * 4)
        data = te.placeholder(layout.shape(1, 9, 14), name="d")
        weight = te.placeholder(conv.weight_shape(), name="w")
        out = blocked_conv_compute(conv, data, weight, registers=32)
        script = te.create_prim_func([data, weight, out]).script()
        assert conv.lane_to_lane and "T.min" not in script, layout


def test_channel_layout_packs_and_unpacks() -> None:
    x = np.arange(2 * 84 * 3 * 2, dtype="float32").reshape(2, 84, 3, 2)
    for layout in (L(84), L(84, 8, 4), L(84, 16, 4), L(84, 16), L(84, 4, 1)):
        packed = layout.pack(x)
        assert packed.shape == layout.shape(2, 3, 2)
        assert np.array_equal(layout.unpack(packed), x)
        assert layout.padded >= 84 and layout.padded % layout.block == 0
    assert L(84, 8, 4).padded == 96 and L(84, 16, 4).padded == 128 and L(84, 16).padded == 96


def test_conv_refuses_a_layout_that_splits_groups() -> None:
    with pytest.raises(ValueError, match="splits"):
        BlockedConv(1, 4, 4, L(84), L(84, 16, 1), 4, (3, 3), (1, 1), (1,) * 4).check()


# --------------------------------------------------------------------------- the layout pass


class SmallNet(nn.Module):
    """Stem, grouped and depthwise convs, 1x1s, pools, residual adds, a squeeze-excite gate
    (mean -> 1x1 -> sigmoid -> multiply), a hard-swish (a divide by a scalar), a MobileOne
    block (a 1x1 conv plus an unfolded BatchNorm of its input: a divide by per-channel
    constants, fused before the conv) and a classifier. Channels 3, 24, 84 (4 groups of 21)
    and 20: blocked with padding, none a multiple of 16, two not of 8."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 24, 3, stride=2, padding=1)
        self.grouped = nn.Conv2d(24, 24, 3, padding=1, groups=3)
        self.depthwise = nn.Conv2d(24, 24, 3, padding=1, groups=24)
        self.expand = nn.Conv2d(24, 84, 1)
        self.squeeze = nn.Conv2d(84, 20, 1)
        self.excite = nn.Conv2d(20, 84, 1)
        self.grouped2 = nn.Conv2d(84, 84, 3, padding=1, groups=4)
        self.mobileone = nn.Conv2d(84, 84, 1)
        self.identity_bn = nn.BatchNorm2d(84).eval()
        with torch.no_grad():
            self.identity_bn.running_mean.uniform_(-1, 1)
            self.identity_bn.running_var.uniform_(0.5, 2)
        self.head = nn.Linear(84, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.silu(self.stem(x))
        x = x + nn.functional.silu(self.grouped(x))
        x = nn.functional.relu(self.depthwise(x)) + x
        x = nn.functional.max_pool2d(x, 2, 2, ceil_mode=True)
        x = nn.functional.silu(self.expand(x))
        gate = torch.sigmoid(self.excite(nn.functional.relu(self.squeeze(x.mean((2, 3),
                                                                          keepdim=True)))))
        x = x * gate
        x = nn.functional.avg_pool2d(self.grouped2(x), 2, 2) + x[:, :, ::2, ::2]
        x = x * nn.functional.relu6(x + 3) / 6
        x = nn.functional.relu(self.mobileone(x) + self.identity_bn(x))
        return self.head(x.mean((2, 3)))


def _build_and_run(prepared, xs):
    import tvm
    from tvm import relax

    from tvmc_attend.compiler.build import build_executable

    vm = relax.VirtualMachine(build_executable(prepared.mod, HOST), tvm.cpu())
    return [vm["main"](tvm.runtime.tensor(x)).numpy() for x in xs]


@pytest.mark.parametrize("layout", ["blocked", "nhwc", "nchw"])
@pytest.mark.parametrize("size", [32, 23])
def test_layouts_keep_the_numerics(layout, size, tmp_path) -> None:
    from tvmc_attend.compiler.frontend import ModelSource
    from tvmc_attend.compiler.prepare import prepare_model

    module = SmallNet().eval()
    xs = inputs((1, 3, size, size))
    refs = assert_depends_on_input(module, xs)
    path = tmp_path / "small.pt2"
    torch.export.save(torch.export.export(module, (torch.from_numpy(xs[0]),)), str(path))
    prepared = prepare_model(ModelSource(str(path)), layout=layout, board=HOST)
    if layout == "blocked":
        assert prepared.layout.blocked_convs == 8  # not the 10-class head: 16 pads too much
    for out, ref in zip(_build_and_run(prepared, xs), refs, strict=True):
        assert rel_err(out, ref) < RTOL


class Heads(nn.Module):
    """A classifier on a pooled map (flatten, Linear with bias, 32 classes), a bias-free
    5-class Linear after it, and a Linear over a sequence (a transformer's projection), 3-d
    and flattened to 2-d (28 rows per image)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 20, 3)
        self.classifier, self.plain = nn.Linear(20, 32), nn.Linear(32, 5, bias=False)
        self.tokens = nn.Linear(20, 9)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        logits = self.plain(self.classifier(torch.flatten(y.mean((2, 3), keepdim=True), 1)))
        seq = self.tokens(y.flatten(2).transpose(1, 2))  # (N, HW, 9)
        rows = self.tokens(y.flatten(2).transpose(1, 2).reshape(-1, 20))  # (N * HW, 9)
        return torch.cat([logits, seq.mean(1), rows.reshape(seq.shape).sum(1)], dim=1)


@pytest.mark.parametrize("batch", [1, 3])
def test_dense_as_conv_rewrites_classifiers_only(batch, tmp_path) -> None:
    """2-d matmuls of a few rows by constant weights become 1x1 convs, the token projections
    stay matmuls; in the
    blocked layout only the 32-class one (5 classes would pad to 8: left a matmul);
    numerics match PyTorch."""
    from tvmc_attend.compiler.frontend import ModelSource, import_model
    from tvmc_attend.compiler.prepare import prepare
    from tvmc_attend.relay_ops import DenseAsConv

    module = Heads().eval()
    xs = inputs((batch, 3, 9, 6))
    refs = assert_depends_on_input(module, xs)
    path = tmp_path / "heads.pt2"
    torch.export.save(torch.export.export(module, (torch.from_numpy(xs[0]),)), str(path))
    imported = import_model(ModelSource(str(path)))
    rewrite = DenseAsConv()
    mod = rewrite(imported.mod)
    assert rewrite.rewritten == 2 and {"relax.matmul", "relax.nn.conv2d"} <= op_names(mod)
    prepared = prepare(imported, layout="blocked", board=HOST)
    assert prepared.layout.blocked_convs == 2, prepared.layout
    for out, ref in zip(_build_and_run(prepared, xs), refs, strict=True):
        assert rel_err(out, ref) < RTOL


def test_kernel_block_names_do_not_carry_var_numbers(tmp_path) -> None:
    """A tuning record finds its blocks by name: a mean's reduction block is ``lv_red``, not
    ``lv35_red`` (which moves whenever a rewrite renumbers the graph's vars)."""
    import re

    import tvm

    from tvmc_attend.compiler.frontend import ModelSource, import_model
    from tvmc_attend.compiler.lowering import legalize_and_fuse
    from tvmc_attend.compiler.prepare import prepare

    path = tmp_path / "heads.pt2"
    xs = inputs((1, 3, 9, 6), n=1)
    torch.export.save(torch.export.export(Heads().eval(), (torch.from_numpy(xs[0]),)),
                      str(path))
    prepared = prepare(import_model(ModelSource(str(path))), layout="blocked", board=HOST)
    scripts = [func.script() for _, func in legalize_and_fuse(prepared.mod, HOST)
               .functions_items() if isinstance(func, tvm.tirx.PrimFunc)]
    blocks = {name for text in scripts for name in re.findall(r'sblock\("([^"]+)"', text)}
    assert "lv_red" in blocks, sorted(blocks)
    assert not [b for b in blocks if re.match(r"[lg]v\d+_", b)], sorted(blocks)


def test_blocked_layout_report_and_isa_blocks() -> None:
    """AttendNeXt-S on the host and on a NEON board: blocks follow the vector width."""
    from tvmc_attend.compiler.frontend import ModelSource
    from tvmc_attend.compiler.prepare import prepare_model
    from tvmc_attend.targets import vector_isa

    source = ModelSource("attendnext_s", input_size=64)
    host = prepare_model(source, layout="blocked", board=HOST)
    rpi4 = prepare_model(source, layout="blocked", board=get_board("rpi4"))
    lanes = vector_isa(HOST.tvm_target()).lanes
    assert host.layout.blocked_convs > 0 and rpi4.layout.blocked_convs > 0
    assert all(f"NCHW{lanes}c" in c or f"NCHW{lanes // 2}c" in c
               for c in host.layout.components)
    assert all(c.startswith("NCHW4c") for c in rpi4.layout.components)
    assert host.lowering == "blocked-v1"


def test_unknown_layout_is_a_one_line_error(tmp_path) -> None:
    result = cli_here("compile", "--model", "dcac", "--input-size", "12", "--layout", "nc4hw",
                     "-o", tmp_path / "b")
    assert_cli_error(result, "unknown layout 'nc4hw'", "blocked")


@pytest.mark.slow
@pytest.mark.parametrize("model, size", [
    ("attendnext", None), ("attendnext", 160), ("mobilenetv3_large_100", None),
    ("mobileone_s1", None), ("fbnetc_100", None), ("mobilevit_xs", None)])
def test_zoo_models_verify_in_the_blocked_layout(model, size, tmp_path) -> None:
    """compile verifies against PyTorch; every zoo model, AttendNeXt at 224 and 160 (and at
    288 in test_verify, which builds the default, blocked, layout)."""
    args = ["compile", "--model", model, "--target", "host", "--untuned", "-o", tmp_path / "b"]
    if size:
        args += ["--input-size", size]
    result = run_cli(*args, timeout=900)
    assert result.returncode == 0, output(result)
    meta = json.loads((tmp_path / "b" / "metadata.json").read_text())
    assert meta["layout"]["name"] == "blocked"
    verified = meta["verified"]  # FBNet-C's own float32 error is ~7e-6: the bound widens to it
    assert verified["float32_floor"] < RTOL
    assert verified["max_rel_err"] <= max(RTOL, 2 * verified["float32_floor"])


def test_onnx_model_in_the_blocked_layout_matches_onnxruntime(tmp_path) -> None:

    path = tmp_path / "small.onnx"
    torch.onnx.export(SmallNet().eval(), (torch.zeros(1, 3, 24, 24),), str(path),
                      input_names=["x"], dynamo=False)
    bundle = tmp_path / "b"
    result = cli_here("compile", "--model", path, "--target", "host", "-o", bundle)
    assert result.returncode == 0, output(result)
    meta = json.loads((bundle / "metadata.json").read_text())
    assert meta["layout"]["blocked_convs"] >= 5
    assert_bundle_matches(bundle, onnx_reference(path))


# -------------------------------------------------------------- databases know their layout


def test_a_database_of_another_lowering_is_not_applied(tmp_path) -> None:
    """A database tuned in NCHW is ignored (default database) or refused (--database) by a
    blocked build, and tune will not append blocked tasks to it."""
    logs = tmp_path / "logs"
    common = ["--model", "dcac", "--input-size", "12", "--target", "host", "--log-dir", logs]
    result = run_cli("tune", *common, "--trials", "2", "--layout", "nchw")
    assert result.returncode == 0, output(result)
    database = logs / HOST_DB / "dcac"
    assert json.loads((database / "tuning.json").read_text())["lowering"] == "nchw-v1"
    result = cli_here("compile", *common, "-o", tmp_path / "b")
    assert result.returncode == 0, output(result)
    assert "lowered as nchw-v1, not blocked-v1" in result.stderr
    assert json.loads((tmp_path / "b" / "metadata.json").read_text())["tuned"] is False
    result = cli_here("compile", *common, "--database", database, "-o", tmp_path / "c")
    assert_cli_error(result, "lowered as nchw-v1", "--layout nchw")
    result = run_cli("tune", *common, "--trials", "2")
    assert_cli_error(result, "lowered as nchw-v1")
    result = cli_here("compile", *common, "--layout", "nchw", "-o", tmp_path / "d")
    assert result.returncode == 0, output(result)
    assert json.loads((tmp_path / "d" / "metadata.json").read_text())["tuned"] is True


# ---------------------------------------------------------------------- on the emulated A72


@pytest.mark.emulated
@pytest.mark.parametrize("model, size, flags", [("attendnext_s", 64, ()),
                                                ("dcac", 28, ("--no-fuse-dcac",))])
def test_blocked_bundles_run_on_the_emulated_rpi4(model, size, flags, emulated_rpi4,
                                                  tmp_path) -> None:
    """NEON-blocked bundles (AttendNeXt-S; a DC-AC block whose own convs are blocked) run on
    the emulated Cortex-A72 and match PyTorch there (correctness only)."""
    from tvmc_attend.device import connect
    from tvmc_attend.models import create_model

    bundle = tmp_path / "b"
    result = cli_here("compile", "--model", model, "--input-size", size, "--target", "rpi4",
                     *flags, "-o", bundle)
    assert result.returncode == 0, output(result)
    meta = json.loads((bundle / "metadata.json").read_text())
    assert meta["layout"]["blocked_convs"] > 0
    session = connect(emulated_rpi4.spec, timeout_s=120)
    assert_bundle_matches(bundle, create_model(model, input_size=size), remote=session)
