"""Check and time many benchmark variants, interleaved round by round.

``run_benchmark`` interleaves the variants of one model; `compare` and `explore` interleave the
variants of several models (each with its own input), so that a noisy neighbour or a clock
change hits every model alike instead of whichever happened to run during it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .benchmark import Variant, _rel_err, _tvm_variant


def tvm_variant(key: str, bundle: str, session: Any, threads: int) -> Variant:
    """Load a bundle as a benchmark variant without leaving this thread pinned to one core.

    TVM's first ``runtime.config_threadpool`` pins the calling thread to a single core, and
    every thread created afterwards inherits that: ONNX Runtime's workers (created with its
    session) would then share one core with the main thread, and ``thread_count()`` would
    report 1. Restoring the affinity after the load keeps the baselines on all their cores.
    """
    cpus = os.sched_getaffinity(0)
    variant = _tvm_variant(key, bundle, session, threads)
    os.sched_setaffinity(0, cpus)
    return variant


def check_and_time(items: Sequence[tuple[Variant, np.ndarray, np.ndarray | None]],
                   rounds: int, runs_per_round: int,
                   progress: Callable[[str], None] = print) -> None:
    """For each (variant, input, reference): run once (the warm-up) and record the relative
    error against the reference, then time ``runs_per_round`` runs of every variant per round."""
    for variant, x, reference in items:
        out = variant.run(x)
        if reference is not None:
            variant.max_rel_err = _rel_err(out, reference)
    for r in range(rounds):
        progress(f"timing round {r + 1}/{rounds}")
        for variant, x, _ in items:
            variant.times_ms.extend(variant.time_runs(x, runs_per_round))
