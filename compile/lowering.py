"""How a prepared model is lowered into tuning tasks, in one place: legalisation and fusion (the
one form tuning extracts its tasks from and the build looks them up in), task extraction, and
what a database records of it (the layout and ``LOWERING_VERSION``). TVM is imported inside
the functions, so commands check databases before importing it."""

from __future__ import annotations

from typing import Any

from .stages import run_passes, stage

# Bump when a change to preparation or lowering changes the tuning tasks of a model (their
# workloads): databases tuned before then are not applied (their records would match nothing,
# or, worse, something else). 1: fast-math sigmoid/exp, channel layouts (Dec 2026).
LOWERING_VERSION = 1

# The layouts convolutions can compute in (compile.prepare has the pass for each).
LAYOUT_NAMES = ("blocked", "nhwc", "nchw")
DEFAULT_LAYOUT = "blocked"


def lowering_of(layout: str) -> str:
    """The lowering a database tuned with ``layout`` records (e.g. ``blocked-v1``)."""
    return f"{layout}-v{LOWERING_VERSION}"


def legalize_and_fuse(mod: Any, board: Any) -> Any:
    """``mod`` legalised and fused the way ``compile_relax`` does before it applies a database:
    the one form tuning extracts its tasks from and the build looks them up in, so that both
    share workload keys. Sigmoid, SiLU and exp are lowered as vectorisable arithmetic
    (``relay_ops.fast_math``), not one libm call per lane."""
    from tvm import relax
    from tvm.relax import pipeline

    from tvmc_attend.relay_ops import FAST_MATH_LEGALIZATION, StableVarNames

    target = board.tvm_target()
    with target:
        # one pass at a time, so that a failure names the pass (compile/stages.py)
        mod = run_passes([
            StableVarNames(),  # kernels' block names must not depend on var numbering
            *pipeline.library_dispatch_passes(target),
            relax.transform.LegalizeOps(customize_legalize_map=FAST_MATH_LEGALIZATION),
            relax.transform.AnnotateTIROpPattern(),
            relax.transform.FoldConstant(),
            relax.transform.FuseOps(),
            relax.transform.FuseTIR(),
        ], mod, kind="lowering")
        with stage("lowering (schedule rules of blocked convolutions)"):
            return _keep_generic_rules_off(mod)


def _keep_generic_rules_off(mod: Any) -> Any:
    """In each fused function around a blocked convolution, mark every other block (and the
    root) ``schedule_rule: None``: our rule schedules the whole function from the conv, and a
    generic rule on the epilogue or the root would re-tile or re-parallelise its loops."""
    import tvm
    from tvm.s_tir import Schedule

    from tvmc_attend.relay_ops.blocked_conv import SCHEDULE_RULE as BLOCKED_CONV_RULE
    from tvmc_attend.schedules.default import operator_rule

    updated = None
    for gvar, func in mod.functions_items():
        if not isinstance(func, tvm.tirx.PrimFunc):
            continue
        sch = Schedule(func)
        if operator_rule(sch) != BLOCKED_CONV_RULE:
            continue
        root = sch.get_sblock("root")
        for block in [root, *sch.get_child_blocks(root)]:
            if sch.get(block).annotations.get("schedule_rule") is None:
                sch.annotate(block, "schedule_rule", "None")
        if updated is None:
            updated = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs)
        updated[gvar] = sch.mod["main"]
    return mod if updated is None else updated


def extract_tasks(prepared: Any, board: Any) -> list[Any]:
    """MetaSchedule's tuning tasks of a prepared model (one per distinct fused kernel)."""
    from tvm.s_tir import meta_schedule as ms

    lowered = legalize_and_fuse(prepared.mod, board)
    with stage("lowering (task extraction)"):
        return list(ms.relax_integration.extract_tasks(lowered, board.tvm_target()))
