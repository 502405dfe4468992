"""A builder worker function that hangs on one marked candidate (imported by spawned workers).

The hang stands in for what happens in real tuning: LLVM spending minutes on a heavily
unrolled candidate. Everything else is the real build."""

from __future__ import annotations

import time

HANG_MARKER = "hang_me"


def build_or_hang(mod_json: str, target_json: str, cross_compiler: str | None,
                  out_dir: str) -> tuple[str | None, str | None]:
    from tvmc_attend.compiler.tuning.builder import _build_one

    if HANG_MARKER in mod_json:
        time.sleep(3600)
    return _build_one(mod_json, target_json, cross_compiler, out_dir)
