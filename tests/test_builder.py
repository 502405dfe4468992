"""The tuning builder: a candidate that hangs costs only itself, not its whole batch."""

from __future__ import annotations

import os

from hanging_build import HANG_MARKER, build_or_hang

from tvmc_attend.targets import get_board


def _candidate(name: str):
    import tvm
    from tvm import te

    a = te.placeholder((64,), name="a")
    b = te.compute((64,), lambda i: a[i] + 1.0, name="b")
    func = te.create_prim_func([a, b]).with_attr("global_symbol", name)
    return tvm.IRModule({"main": func})


def test_a_hanging_candidate_does_not_sink_its_batch() -> None:
    from tvm.s_tir.meta_schedule.builder import BuilderInput

    from tvmc_attend.compiler.tuning.builder import SharedLibraryBuilder

    target = get_board("host").tvm_target()
    names = ["ok_0", HANG_MARKER, "ok_1", "ok_2", "ok_3"]
    builder = SharedLibraryBuilder(timeout_s=20, build_function=build_or_hang)
    try:
        results = builder.build([BuilderInput(_candidate(n), target) for n in names])
    finally:
        builder.close()
    by_name = dict(zip(names, results, strict=True))
    assert "timed out" in by_name[HANG_MARKER].error_msg
    for name in names:
        if name != HANG_MARKER:
            result = by_name[name]
            assert result.error_msg is None, (name, result.error_msg)
            assert result.artifact_path.endswith(".so")
    assert not os.path.exists(builder.artifact_dir)  # close() removes the candidates
