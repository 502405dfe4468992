"""The fused DC-AC operator is right at every size, and so is every schedule in its space.

A DC-AC at 72x72 was 26 % off PyTorch with the default schedule (the expansion's column tile
did not divide the condensed row width); the tests below sweep the shapes the model never
uses (1x1 to 112x112 and beyond, odd, even, non-square; channel counts whose embedding width
rounds up) for the untuned default, and build random samples of the MetaSchedule design space
at awkward sizes. Each compares with PyTorch. The fast subsets run by default; the full sweeps
are marked slow (CI runs both).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import RTOL, assert_depends_on_input, inputs, rel_err
from test_dcac import dcac_funcs, fuse_dcac, relax_of, run

from tvmc_attend.models import DCAC, DCACConfig, init_weights
from tvmc_attend.schedules import apply_default_schedules, register_rules
from tvmc_attend.schedules.default import SCHEDULED_ATTR
from tvmc_attend.targets import get_board

HOST = get_board("host")


def dcac_block(channels: int, height: int, width: int, seed: int = 0):
    """(module, fused Relax module, inputs, PyTorch outputs) of a DC-AC at H x W. The scale
    is drawn around 1 so the gate term weighs as much as the residual."""
    torch.manual_seed(seed)
    module = init_weights(DCAC(DCACConfig(channels=channels, input_size=max(height, width))),
                          (1, channels, height, width), seed)
    with torch.no_grad():
        module.scale.copy_(torch.rand_like(module.scale) + 0.5)
    xs = inputs((1, channels, height, width))
    refs = assert_depends_on_input(module, xs)
    fused, fusion = fuse_dcac(relax_of(module, xs[0].shape))
    assert (fusion.fused, fusion.unmatched) == (1, [])
    return module, fused, xs, refs


# channels: multiples of the 4 groups, and widths whose embedding C/4 rounds up to a
# multiple of 4 (10 -> 12, 21 -> 20, 93 -> 92), i.e. padded to whole vectors or not.
FAST_SHAPES = [(40, 72, 72), (8, 1, 1), (12, 9, 13), (20, 31, 18), (16, 112, 40), (84, 36, 36)]
FULL_SHAPES = FAST_SHAPES + [
    (4, 2, 2), (8, 3, 5), (16, 4, 4), (40, 56, 56), (40, 57, 57), (40, 144, 144),
    (44, 18, 18), (84, 28, 28), (84, 35, 29), (176, 14, 14), (176, 15, 11), (372, 7, 7),
    (372, 9, 9), (24, 113, 113), (32, 1, 64), (32, 64, 3), (48, 20, 100), (8, 112, 112),
]


def _check_default(channels: int, height: int, width: int) -> None:
    _, fused, xs, refs = dcac_block(channels, height, width)
    scheduled = apply_default_schedules(fused, HOST.tvm_target())
    assert dcac_funcs(scheduled)[0].attrs[SCHEDULED_ATTR]
    for x, ref in zip(xs, refs, strict=True):
        assert rel_err(run(scheduled, x), ref) < RTOL, (channels, height, width)


@pytest.mark.parametrize("channels, height, width", FAST_SHAPES)
def test_default_schedule_matches_torch(channels, height, width) -> None:
    _check_default(channels, height, width)


@pytest.mark.slow
@pytest.mark.parametrize("channels, height, width",
                         [s for s in FULL_SHAPES if s not in FAST_SHAPES])
def test_default_schedule_matches_torch_full_sweep(channels, height, width) -> None:
    _check_default(channels, height, width)


def _sampled_schedules(func, count: int, seed: int):
    """``count`` schedules drawn from the operator's MetaSchedule design spaces (every space
    in turn, fresh random decisions each time), after MetaSchedule's postprocessors."""
    from tvm.s_tir import Schedule
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.schedule import Trace

    from tvmc_attend.compiler.tuning.intrinsics import load_tensor_intrinsics

    load_tensor_intrinsics(HOST)
    register_rules()  # as tuning does
    task = ms.tune_context._normalize_mod(func)
    context = ms.TuneContext(mod=task, target=HOST.tvm_target(),
                             space_generator="post-order-apply",
                             search_strategy="evolutionary", num_threads=1)
    spaces = context.generate_design_space()
    samples = []
    for i in range(count):
        sch = Schedule(task, seed=seed + i)
        Trace(spaces[i % len(spaces)].trace.insts, {}).apply_to_schedule(
            sch, remove_postproc=True)
        assert all(p.apply(sch) for p in context.space_generator.postprocs)
        samples.append(sch)
    return samples


def _check_samples(channels: int, height: int, width: int, count: int) -> None:
    import tvm

    _, fused, xs, refs = dcac_block(channels, height, width)
    ((gvar, func),) = [(gv, f) for gv, f in fused.functions_items()
                       if f in dcac_funcs(fused)]
    seen = set()
    for sch in _sampled_schedules(func, count, seed=channels * 1000 + height * 10 + width):
        mod = tvm.IRModule(dict(fused.functions_items()), attrs=fused.attrs)
        mod[gvar] = sch.mod["main"].without_attr("global_symbol").with_attr(SCHEDULED_ATTR, True)
        seen.add(str(sch.trace))
        for x, ref in zip(xs, refs, strict=True):
            err = rel_err(run(mod, x), ref)
            assert err < RTOL, f"{channels}x{height}x{width}: {err:.2e} with\n{sch.trace}"
    assert len(seen) > count // 2, "the samples were mostly the same schedule"


def test_sampled_schedules_match_torch() -> None:
    """Random points of the space at a size whose condensed rows (18) no register tile
    divides evenly: 8 samples (the slow test draws 12 at four more sizes)."""
    _check_samples(40, 72, 72, count=8)


@pytest.mark.slow
@pytest.mark.parametrize("channels, height, width",
                         [(12, 9, 13), (84, 36, 36), (20, 50, 30), (176, 15, 15)])
def test_sampled_schedules_match_torch_full(channels, height, width) -> None:
    _check_samples(channels, height, width, count=12)


def test_sweep_reference_is_not_degenerate() -> None:
    """The gate term must matter: with S = 0 the block would be the identity."""
    module, _, xs, refs = dcac_block(40, 14, 14)
    gate = refs[0] - xs[0]
    assert np.abs(gate).max() > 0.1 * np.abs(refs[0]).max()
    assert module.scale.min() > 0.4
