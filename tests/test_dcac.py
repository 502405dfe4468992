"""The DC-AC custom operator: the rewrite finds every block (torch and ONNX imports, operand
orders, SiLU forms), the fused operator equals the unfused graph and PyTorch for any map size,
its schedule space generates and survives MetaSchedule's postprocessors (x86 and aarch64),
the untuned default and tuned records reach the build, and the block runs on the emulated
Cortex-A72.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import RTOL, assert_depends_on_input, inputs, op_names, rel_err, torch_reference
from torch import nn

from tvmc_attend.compiler.build import build_executable, schedule_module
from tvmc_attend.compiler.frontend import ModelSource
from tvmc_attend.compiler.lowering import legalize_and_fuse
from tvmc_attend.compiler.prepare import preparation_passes, prepare_model
from tvmc_attend.compiler.stages import run_passes
from tvmc_attend.models import DCAC, DCACConfig, init_weights
from tvmc_attend.relay_ops import FuseDCAC
from tvmc_attend.relay_ops.dcac_op import FUNC_ATTR, SCHEDULE_RULE
from tvmc_attend.schedules import (
    ISAS,
    apply_default_schedules,
    isa_for_target,
    register_rules,
    rule_name,
)
from tvmc_attend.schedules.default import SCHEDULED_ATTR
from tvmc_attend.targets import get_board

HOST = get_board("host")
RPI4 = get_board("rpi4")


# ------------------------------------------------------------------------------------ helpers


def dcac_module(channels: int, size: int, seed: int = 0) -> nn.Module:
    """The zoo's DC-AC block with the zoo's deterministic, non-degenerate initialisation."""
    torch.manual_seed(seed)
    return init_weights(DCAC(DCACConfig(channels=channels, input_size=size)),
                        (1, channels, size, size), seed)


def relax_of(module: nn.Module, shape: tuple[int, ...]):
    """``module`` imported from torch.export and prepared without the DC-AC fusion, as the
    pipeline does it."""
    from tvm.relax.frontend.torch import from_exported_program

    with torch.no_grad():
        exported = torch.export.export(module.eval(), (torch.zeros(shape),))
    mod = from_exported_program(exported, keep_params_as_input=False,
                                unwrap_unit_return_tuple=True)
    return run_passes(preparation_passes(".pt2"), mod)


def run(mod, x: np.ndarray, target=None) -> np.ndarray:
    import tvm
    from tvm import relax

    executable = tvm.compile(mod, target=target or HOST.tvm_target())
    vm = relax.VirtualMachine(executable, tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy()


def fuse_dcac(mod):
    """(fused module, the pass that fused it: its ``fused`` and ``unmatched``)."""
    fusion = FuseDCAC()
    return fusion(mod), fusion


def dcac_funcs(mod) -> list:
    import tvm

    return [f for _, f in mod.functions_items()
            if isinstance(f, tvm.tirx.PrimFunc) and f.attrs is not None and FUNC_ATTR in f.attrs]


class RewrittenDCAC(nn.Module):
    """A DC-AC spelled differently from the zoo's: ``F.silu`` and ``k * sigmoid(k)``, conv
    biases instead of BatchNorm (one conv without), the gate as ``(S * V) * g + V``."""

    def __init__(self, channels: int, embed: int, groups: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, embed, 3, padding=1, groups=groups)
        self.conv2 = nn.Conv2d(embed, embed, 3, padding=1, groups=groups, bias=False)
        self.conv3 = nn.Conv2d(embed, channels, 1)
        self.scale = nn.Parameter(torch.rand(1, channels, 1, 1) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        a = F.silu(self.conv1(F.max_pool2d(x, 2, 2, ceil_mode=True)))
        k = self.conv2(F.max_pool2d(a, 2, 2, ceil_mode=True))
        a = self.conv3(torch.sigmoid(k) * k)
        g = torch.sigmoid(F.interpolate(a, size=(h, w), mode="nearest"))
        return (self.scale * x) * g + x


class GateReused(DCAC):
    """The attention gate is also used outside the block: fusing would lose it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        a = self.expand(self.embed2(self.condense2(self.embed1(self.condense1(x)))))
        g = torch.sigmoid(F.interpolate(a, size=(h, w), mode="nearest"))
        return x + self.scale * (x * g) + g


class Bilinear(DCAC):
    """Bilinear instead of nearest expansion: not the operator's computation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        a = self.expand(self.embed2(self.condense2(self.embed1(self.condense1(x)))))
        a = F.interpolate(a, size=(h, w), mode="bilinear")
        return x + self.scale * (x * torch.sigmoid(a))


# ----------------------------------------------------------------------------------- matching


def test_prepare_model_fuses_unless_asked_not_to() -> None:
    source = ModelSource("dcac", input_size=14)
    fused = prepare_model(source)
    assert fused.fused_dcac == 1 and len(dcac_funcs(fused.mod)) == 1
    assert "relax.image.resize2d" not in op_names(fused.mod)
    assert prepare_model(source, fuse_dcac=False).fused_dcac == 0


def test_fuses_every_dcac_of_an_onnx_import(tmp_path) -> None:
    from tvmc_attend.compiler.onnx_export import export_onnx
    from tvmc_attend.models import create_model

    path = export_onnx(create_model("attendnext_s", input_size=64), torch.zeros(1, 3, 64, 64),
                       str(tmp_path / "attendnext_s.onnx"))
    prepared = prepare_model(ModelSource(path))
    assert prepared.fused_dcac == 4  # one per stage
    assert len(dcac_funcs(prepared.mod)) == 4  # four shapes, four operators
    assert "relax.image.resize2d" not in op_names(prepared.mod)


@pytest.mark.slow  # BatchNorm folding of a torch-imported AttendNeXt takes ~40 s here
@pytest.mark.parametrize("model, size", [("attendnext_s", 64), ("attendnext", None)])
@pytest.mark.parametrize("frontend", ["torch", "onnx"])
def test_fuses_the_four_dcac_of_attendnext(model, size, frontend, tmp_path) -> None:
    from tvmc_attend.compiler.onnx_export import export_onnx
    from tvmc_attend.models import create_model

    source = ModelSource(model, input_size=size)
    if frontend == "onnx":
        side = size or 224
        source = ModelSource(export_onnx(create_model(model, input_size=size),
                                         torch.zeros(1, 3, side, side),
                                         str(tmp_path / f"{model}.onnx")))
    _, fusion = fuse_dcac(prepare_model(source, fuse_dcac=False).mod)
    assert (fusion.fused, fusion.unmatched) == (4, [])


def test_matches_other_spellings_of_the_block() -> None:
    module = RewrittenDCAC(16, 8).eval()
    xs = inputs((1, 16, 14, 14))
    refs = assert_depends_on_input(module, xs)
    mod = relax_of(module, xs[0].shape)
    fused, fusion = fuse_dcac(mod)
    assert (fusion.fused, fusion.unmatched) == (1, [])
    for x, ref in zip(xs, refs, strict=True):
        assert rel_err(run(fused, x), ref) < RTOL


@pytest.mark.parametrize("module, reason", [
    (GateReused(DCACConfig(channels=16)), "used outside the block"),
    (Bilinear(DCACConfig(channels=16)), "not nearest"),
])
def test_unmatched_blocks_are_left_alone_and_reported(module, reason) -> None:
    mod = relax_of(module.eval(), (1, 16, 14, 14))
    fused, fusion = fuse_dcac(mod)
    assert fusion.fused == 0 and fused.same_as(mod)
    assert len(fusion.unmatched) == 1 and reason in fusion.unmatched[0]


# ---------------------------------------------------------------------------------- numerics


@pytest.mark.parametrize("channels, size", [(40, 56), (16, 14), (16, 7), (8, 13), (8, 5),
                                            (8, 2)])
def test_fused_operator_equals_the_unfused_graph_and_torch(channels, size) -> None:
    """7x7 condenses to 4x4 then 2x2 (ceil mode) and expands back to the exact size."""
    module = dcac_module(channels, size)
    xs = inputs((1, channels, size, size))
    refs = assert_depends_on_input(module, xs)
    unfused = relax_of(module, xs[0].shape)
    fused, _ = fuse_dcac(unfused)
    scheduled = apply_default_schedules(fused, HOST.tvm_target())
    for x, ref in zip(xs, refs, strict=True):
        expected = run(unfused, x)
        assert rel_err(expected, ref) < RTOL
        for mod in (fused, scheduled):  # unscheduled (plain tvm.compile) and default
            out = run(mod, x)
            assert rel_err(out, expected) < RTOL and rel_err(out, ref) < RTOL


# --------------------------------------------------------------------------------- schedules


def test_every_isa_registers_its_rule() -> None:
    import tvm

    register_rules()
    assert isa_for_target(HOST.tvm_target()).name == "avx2"
    assert isa_for_target(RPI4.tvm_target()).name == "neon"
    for key in ISAS:
        assert tvm.get_global_func(rule_name(key), allow_missing=True) is not None
        assert rule_name(key).endswith(f".{key}.{SCHEDULE_RULE}")


def test_task_extraction_yields_the_fused_operator() -> None:
    from tvm.s_tir import meta_schedule as ms

    mod = fuse_dcac(relax_of(dcac_module(16, 14), (1, 16, 14, 14)))[0]
    tasks = ms.relax_integration.extract_tasks(legalize_and_fuse(mod, HOST), HOST.tvm_target())
    assert [t.task_name for t in tasks] == [dcac_funcs(mod)[0].attrs[FUNC_ATTR]]


@pytest.mark.parametrize("board", [HOST, RPI4], ids=lambda b: b.name)
def test_schedule_space_samples_survive_postprocessing(board) -> None:
    """Each design space replays with fresh random decisions and passes MetaSchedule's
    postprocessors (a generic rule on the root block once made every sample fail)."""
    import tvm
    from tvm.s_tir import Schedule
    from tvm.s_tir import meta_schedule as ms

    from tvmc_attend.compiler.tuning.intrinsics import load_tensor_intrinsics

    load_tensor_intrinsics(board)  # as tuning does: TuneContext would import them all (~5 min)
    register_rules()  # as tuning does
    target = board.tvm_target()
    mod = fuse_dcac(relax_of(dcac_module(16, 7), (1, 16, 7, 7)))[0]
    task = ms.tune_context._normalize_mod(dcac_funcs(mod)[0])
    context = ms.TuneContext(mod=task, target=target, space_generator="post-order-apply",
                             search_strategy="evolutionary", num_threads=1)
    spaces = context.generate_design_space()
    assert len(spaces) == 3  # tail at root, tail at the gate (sampled), the default (fixed)
    for i, space in enumerate(spaces):
        for seed in (1, 2):
            sch = Schedule(task, seed=seed + 10 * i)
            space.trace.apply_to_schedule(sch, remove_postproc=True)
            assert all(p.apply(sch) for p in context.space_generator.postprocs)
    tvm.compile(sch.mod, target=target)  # the last sample compiles for the board's ISA


def test_default_schedule_only_where_no_record_and_input_untouched() -> None:
    mod = fuse_dcac(relax_of(dcac_module(16, 7), (1, 16, 7, 7)))[0]
    before = mod.script()
    scheduled = apply_default_schedules(mod, HOST.tvm_target())
    assert mod.script() == before  # the input module is not modified in place
    (func,) = dcac_funcs(scheduled)
    assert func.attrs[SCHEDULED_ATTR]
    again = apply_default_schedules(scheduled, HOST.tvm_target())
    assert again.same_as(scheduled)  # idempotent


# ------------------------------------------------------------------------------ tune + build


@pytest.mark.slow
def test_tuned_records_reach_the_build(tmp_path) -> None:
    """A few trials: the operator's records reach the build, which then leaves the operator to
    the database (the default schedule is one of the tuning's design spaces)."""
    import tvm
    import tvm_ffi
    from tvm import relax

    from tvmc_attend.bench.op_benchmark import dcac_block
    from tvmc_attend.compiler.tuning.database import TuningDatabase
    from tvmc_attend.compiler.tuning.tune import TuneOptions, tune_prepared

    block = dcac_block(16, 14, seed=0, work=str(tmp_path))
    assert_depends_on_input(block.module, inputs(block.x.shape))
    prepared, target = block.fused, HOST.tvm_target()
    name = prepared.imported.name
    db_dir = TuningDatabase.for_model(str(tmp_path / "logs"), HOST, name)

    result = tune_prepared(prepared, HOST, TuneOptions(trials=4, log_dir=str(tmp_path / "logs")))
    database = db_dir.open(HOST, name)
    assert result.new_trials > 0
    assert len(database.get_all_tuning_records()) > 1  # the candidates it measured
    # The database schedules the operator, and the build keeps that schedule (the default
    # schedule only fills in what no record covers).
    with target, database, tvm.transform.PassContext(opt_level=3):
        applied = relax.transform.MetaScheduleApplyDatabase()(legalize_and_fuse(prepared.mod, HOST))
    assert dcac_funcs(applied)[0].attrs[SCHEDULED_ATTR]  # the record was applied
    built = dcac_funcs(schedule_module(prepared.mod, HOST, database))[0]
    assert tvm_ffi.structural_equal(built, dcac_funcs(applied)[0])
    executable = build_executable(prepared.mod, HOST, database)
    vm = relax.VirtualMachine(executable, tvm.cpu())
    out = vm["main"](tvm.runtime.tensor(block.x)).numpy()
    assert rel_err(out, block.reference) < RTOL


@pytest.mark.slow
def test_op_benchmark_reports_every_variant(tmp_path) -> None:
    from tvmc_attend.bench.op_benchmark import VARIANTS, benchmark_dcac
    from tvmc_attend.bench.report import write_json

    report = benchmark_dcac(HOST, trials=2, repeat=2, shapes=((16, 7),),
                            model=ModelSource("attendnext_s", input_size=64),
                            log_dir=str(tmp_path / "logs"), progress=lambda _: None)
    (row,) = report.blocks
    assert (row["channels"], row["size"], row["numerics_ok"]) == (16, 7, True)
    assert set(row["median_ms"]) == set(VARIANTS)
    assert row["speedup_tuned"] > 0 and row["speedup_untuned"] > 0
    whole = report.end_to_end
    assert whole["fused_dcac"] == 4 and whole["numerics_ok"]
    assert whole["tasks"]["fused"] < whole["tasks"]["stock"]  # 4 operators replace the blocks
    assert whole["tuned_tasks"] == {"stock": 0, "fused": 0}  # no database in tmp_path
    assert any("building untuned" in note for note in whole["notes"])
    write_json(report, str(tmp_path / "dcac.json"))
    data = json.loads((tmp_path / "dcac.json").read_text())
    assert data["op"] == "dcac" and data["end_to_end"]["median_ms"].keys() == set(VARIANTS)


# ------------------------------------------------------------------------------- on the board


@pytest.mark.emulated
def test_fused_attendnext_s_runs_on_the_emulated_rpi4(emulated_rpi4, tmp_path) -> None:
    from tvmc_attend import attend_runtime
    from tvmc_attend.compiler.pipeline import compile_bundle
    from tvmc_attend.device import connect
    from tvmc_attend.models import create_model

    bundle = compile_bundle(ModelSource("attendnext_s", input_size=64), RPI4,
                            str(tmp_path / "bundle"), untuned=True)
    assert bundle.metadata.fused_dcac == 4
    module = create_model("attendnext_s", input_size=64)
    xs = inputs((1, 3, 64, 64))
    refs = assert_depends_on_input(module, xs)
    session = connect(emulated_rpi4.spec, timeout_s=120)
    model = attend_runtime.load(str(tmp_path / "bundle"), remote=session)
    for x, ref in zip(xs, refs, strict=True):
        assert rel_err(model(x), torch_reference(module, x)) < RTOL
        assert rel_err(model(x), ref) < RTOL


@pytest.mark.emulated
@pytest.mark.parametrize("channels, size", [(372, 7), (40, 28)])
def test_neon_default_schedule_runs_on_the_emulated_rpi4(channels, size, emulated_rpi4,
                                                         tmp_path) -> None:
    """The default schedule for aarch64 (NEON), on the emulated Cortex-A72 (correctness only:
    emulated timings mean nothing)."""
    from tvmc_attend import attend_runtime
    from tvmc_attend.bench.op_benchmark import dcac_block
    from tvmc_attend.compiler.bundle import write_bundle
    from tvmc_attend.device import connect

    block = dcac_block(channels, size, seed=0, work=str(tmp_path))
    assert_depends_on_input(block.module, inputs(block.x.shape))
    mod = apply_default_schedules(block.fused.mod, RPI4.tvm_target())
    assert dcac_funcs(mod)[0].attrs[SCHEDULED_ATTR]
    write_bundle(str(tmp_path / "bundle"), block.fused.imported, RPI4,
                 build_executable(mod, RPI4), fused_dcac=1)
    session = connect(emulated_rpi4.spec, timeout_s=120)
    model = attend_runtime.load(str(tmp_path / "bundle"), remote=session)
    assert rel_err(model(block.x), block.reference) < RTOL
