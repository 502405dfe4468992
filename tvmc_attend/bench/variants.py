"""Variants, the timed things (a TVM bundle, ONNX Runtime, PyTorch eager, a Relax VM), and the
one way they are timed: checked against a reference, then interleaved round by round.

`benchmark` interleaves the variants of one model; `compare`, `explore` and the operator
benchmark interleave those of several models (each with its own input), so that a noisy
neighbour or a clock change hits every variant alike instead of whichever ran during it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tvmc_attend import attend_runtime
from tvmc_attend.compiler.frontend import ImportedModel
from tvmc_attend.compiler.onnx_export import export_onnx
from tvmc_attend.compiler.verify import rel_err
from tvmc_attend.threads import ThreadUsage, tvm_threads

# Display labels of the variant keys (the keys are the JSON keys the CLI contract names).
VARIANT_LABELS = {
    "tvm_untuned": "TVM untuned",
    "tvm_tuned": "TVM tuned",
    "onnxruntime": "ONNX Runtime",
    "torch": "PyTorch eager",
}
HOST_ONLY_NOTE = "ONNX Runtime and PyTorch run on this host only: not measured for a board"


# How every local variant is timed: one call from a numpy input to a numpy output, Python
# and the copies in and out included, clocked by perf_counter: what a user's code sees.
TIMED_BOUNDARY = "numpy in -> numpy out, one call, perf_counter"
REMOTE_BOUNDARY = "the device's own clock (time_evaluator), input already on the device"
# After a call, a runtime's idle worker spins on a core (measured 2026-12-06, AMD EPYC Zen 4,
# 2 threads, AttendNeXt, by the worker's CPU time after the call, defaults of each runtime):
# TVM's pool 150 ms, ONNX Runtime's 40 ms, PyTorch's OpenMP 9 ms. The next variant settles for
# longer than the longest before it is timed.
SETTLE_S = 0.25


@dataclass
class Variant:
    """One thing to time: ``run`` gives its output, ``time_runs(x, n)`` n latencies in ms.

    ``threads``: the threads its runtime was given; ``usage``: per-thread CPU time over its
    timed runs, from which the threads really busy are counted (only for variants that run in
    this process: a board's threads are not visible here)."""

    key: str
    run: Callable[[np.ndarray], np.ndarray]
    time_runs: Callable[[np.ndarray, int], list[float]]
    times_ms: list[float] = field(default_factory=list)
    max_rel_err: float | None = None
    note: str = ""
    threads: int | None = None
    local: bool = True
    boundary: str = TIMED_BOUNDARY
    usage: ThreadUsage = field(default_factory=ThreadUsage)

    def stats(self) -> attend_runtime.LatencyStats:
        return attend_runtime.LatencyStats(times_ms=self.times_ms)

    @property
    def label(self) -> str:
        return VARIANT_LABELS[self.key]

    @property
    def busy_threads(self) -> int | None:
        return self.usage.busy if self.local and self.usage.wall_ns else None

    def timing_json(self) -> dict[str, Any]:
        """Latency statistics and the threads behind them, as every report writes them."""
        return {**self.stats().as_dict(), "threads": self.threads,
                "busy_threads": self.busy_threads,
                "cpu_per_wall": round(self.usage.cpu_per_wall, 2) if self.local else None,
                "timed": self.boundary}


def _timed(fn: Callable[[np.ndarray], Any]) -> Callable[[np.ndarray, int], list[float]]:
    def time_runs(x: np.ndarray, n: int) -> list[float]:
        times = []
        for _ in range(n):
            start = time.perf_counter()
            fn(x)
            times.append((time.perf_counter() - start) * 1e3)
        return times
    return time_runs


def tvm_variant(key: str, bundle: str, session: Any, threads: int | None) -> Variant:
    """A bundle loaded with the shipped loader (on the board when ``session`` is given).

    Locally it is timed like the baselines (``TIMED_BOUNDARY``); on a board by the board's
    clock. TVM's ``runtime.config_threadpool`` (used when fewer threads than the pool holds
    are asked for) pins the calling thread to a single core, and every thread created
    afterwards inherits that: ONNX Runtime's workers would then share one core with the main
    thread. Restoring the affinity after the load keeps the baselines on all their cores.
    """
    cpus = os.sched_getaffinity(0)
    model = attend_runtime.load(bundle, remote=session, threads=threads)
    os.sched_setaffinity(0, cpus)
    if session is not None:
        return Variant(key, model, lambda x, n: model.benchmark(x, repeat=n, warmup=0).times_ms,
                       threads=model.threads, local=False, boundary=REMOTE_BOUNDARY)
    return Variant(key, model, _timed(model), threads=model.threads)


def vm_variant(key: str, executable: Any, number: int) -> Variant:
    """A Relax executable in a local VM; one timed sample is the mean of ``number``
    back-to-back runs (for operators that take well under a millisecond)."""
    import tvm
    from tvm import relax

    dev = tvm.cpu()
    vm = relax.VirtualMachine(executable, dev)

    def run(x: np.ndarray) -> np.ndarray:
        return vm["main"](tvm.runtime.tensor(x, dev)).numpy()

    def time_runs(x: np.ndarray, n: int) -> list[float]:
        timer = vm.time_evaluator("main", dev, number=number, repeat=n)
        return [1e3 * t for t in timer(tvm.runtime.tensor(x, dev)).results]

    return Variant(key, run, time_runs, threads=tvm_threads(),
                   boundary=f"time_evaluator, mean of {number} runs, input in place")


def onnxruntime_session(onnx_path: str, threads: int, profile_prefix: str | None = None) -> Any:
    """An ONNX Runtime CPU session at ``threads``, with its profiler on when
    ``profile_prefix`` (where its JSON goes) is given."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Spinning left at ORT's default (on), as TVM's is: each runtime as its users run it.
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])


def onnxruntime_variant(onnx_path: str, threads: int) -> Variant:
    session = onnxruntime_session(onnx_path, threads)
    name = session.get_inputs()[0].name

    def run(x: np.ndarray) -> np.ndarray:
        return session.run(None, {name: x})[0]
    return Variant("onnxruntime", run, _timed(run), threads=threads)


def torch_variant(module: Any, threads: int) -> Variant:
    import torch

    torch.set_num_threads(threads)

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(x)).numpy()
    return Variant("torch", run, _timed(run), threads=threads)


def onnx_file(imported: ImportedModel, x: np.ndarray, work_dir: str) -> str | None:
    """The model as ONNX Runtime runs it: its own .onnx file, or one exported from its PyTorch
    module into ``work_dir``; None for a model with neither."""
    import torch

    if imported.source == ".onnx":
        return imported.path
    if imported.torch_module is None:
        return None
    return export_onnx(imported.torch_module, torch.from_numpy(x),
                       os.path.join(work_dir, f"{imported.name}.onnx"))


def baseline_variants(imported: ImportedModel, x: np.ndarray, threads: int,
                      work_dir: str) -> list[Variant]:
    """The frameworks ``imported`` is compared with, on this host at ``threads``: ONNX Runtime
    on the model's own .onnx file (or one exported from its PyTorch module into ``work_dir``),
    and PyTorch eager when there is a PyTorch module."""
    onnx_path = onnx_file(imported, x, work_dir)
    variants = [onnxruntime_variant(onnx_path, threads)] if onnx_path else []
    if imported.torch_module is not None:
        variants.append(torch_variant(imported.torch_module, threads))
    return variants


def check_and_time(items: Sequence[tuple[Variant, np.ndarray, np.ndarray | None]],
                   rounds: int, runs_per_round: int,
                   progress: Callable[[str], None] = print) -> None:
    """For each (variant, input, reference): run once (the warm-up) and record the relative
    error against the reference, then time ``runs_per_round`` runs of every variant per round.

    Each local variant's turn in a round starts with untimed runs for ``SETTLE_S``: the runtime
    before it leaves a worker spinning after its last call, which on a 2-core machine slowed
    the next runtime's timed runs (up to 2x). A program running one runtime never pays that;
    nor does this."""
    for variant, x, reference in items:
        out = variant.run(x)
        if reference is not None:
            variant.max_rel_err = rel_err(out, reference)
    for r in range(rounds):
        progress(f"timing round {r + 1}/{rounds}")
        for variant, x, _ in items:
            if variant.local:  # settle: the previous runtime's spinning worker stops
                start = time.perf_counter()
                while True:
                    variant.run(x)
                    if time.perf_counter() - start >= SETTLE_S:
                        break
            with variant.usage.section():
                variant.times_ms.extend(variant.time_runs(x, runs_per_round))
