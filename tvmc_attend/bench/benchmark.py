"""Side-by-side latency: TVM untuned vs TVM tuned vs ONNX Runtime vs PyTorch, in one run.

All variants run the same input at the same thread count, interleaved round by round, so a
noisy neighbour or a clock change hits every variant alike. Every variant's output is also
compared with PyTorch's, so a fast wrong answer cannot pass as a speed-up.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tvmc_attend.compiler.build_board import build_board
from tvmc_attend.compiler.frontend import ModelSource
from tvmc_attend.compiler.inputs import random_input
from tvmc_attend.compiler.lowering import DEFAULT_LAYOUT
from tvmc_attend.compiler.pipeline import compile_prepared
from tvmc_attend.compiler.prepare import prepare_model
from tvmc_attend.compiler.verify import reference_for
from tvmc_attend.device.choice import LOCAL, DeviceChoice
from tvmc_attend.targets import Board

from .report import RunInfo, plot_to
from .variants import (
    HOST_ONLY_NOTE,
    Variant,
    baseline_variants,
    check_and_time,
    tvm_variant,
)


@dataclass
class BenchmarkReport:
    """One model's variants, timed side by side in one run."""

    model: str
    run: RunInfo
    variants: list[Variant]
    tuning: dict[str, Any]
    notes: list[str]
    reference: str | None = None  # what every variant's max_rel_err is measured against

    def ratios(self) -> dict[str, float]:
        """Speed ratios (how many times faster the first is than the second)."""
        med = {v.key: v.stats().median_ms for v in self.variants}
        pairs = [("tvm_tuned", "tvm_untuned"), ("tvm_tuned", "onnxruntime"),
                 ("tvm_tuned", "torch"), ("onnxruntime", "torch"), ("tvm_untuned", "torch")]
        return {f"{a}_vs_{b}": med[b] / med[a] for a, b in pairs if a in med and b in med}

    def as_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "model": self.model, **self.run.as_json(), "tuning": self.tuning,
            "notes": self.notes, "reference": self.reference, "ratios": self.ratios(),
        }
        for v in self.variants:
            entry = v.timing_json()
            entry.update(label=v.label, throughput_ips=1e3 / entry["median_ms"],
                         max_rel_err=v.max_rel_err, emulated=self.run.emulated
                         and v.key.startswith("tvm"), note=v.note)
            data[v.key] = entry
        return data


def run_benchmark(source: ModelSource, board: Board, device: DeviceChoice = LOCAL,
                  rounds: int = 10, runs_per_round: int = 5, log_dir: str | None = None,
                  work_dir: str | None = None, fuse_dcac: bool = True,
                  layout: str = DEFAULT_LAYOUT,
                  progress: Callable[[str], None] = print) -> BenchmarkReport:
    """Compile the untuned and (if a database exists) tuned bundles, then time every variant
    (the TVM ones on ``device``)."""
    device.require_for(board, "the benchmark")
    session = device.connect()
    board.require_toolchain()
    threads = board.thread_count()
    work = work_dir or tempfile.mkdtemp(prefix="tvmc-attend-bench-")
    notes: list[str] = []
    board = build_board(board, source.name, log_dir, layout=layout, warn=notes.append)
    prepared = prepare_model(source, fuse_dcac=fuse_dcac, layout=layout, board=board)
    imported = prepared.imported
    progress(f"compiling untuned and tuned bundles for {board.name} into {work}")
    untuned_dir = os.path.join(work, "untuned")
    compile_prepared(prepared, board, untuned_dir, untuned=True)
    tuned_dir = os.path.join(work, "tuned")
    tuned = compile_prepared(prepared, board, tuned_dir, log_dir=log_dir,
                                  warn=notes.append)
    x = random_input(imported.input_shape, imported.input_dtype)
    framework = reference_for(imported)  # PyTorch, or ONNX Runtime for a .onnx file
    reference = framework.run(x) if framework is not None else None

    variants = [tvm_variant("tvm_untuned", untuned_dir, session, threads)]
    if tuned.metadata.tuned:
        variants.append(tvm_variant("tvm_tuned", tuned_dir, session, threads))
    if not board.is_remote:
        variants += baseline_variants(imported, x, threads, work)
    else:
        notes.append(HOST_ONLY_NOTE)

    check_and_time([(v, x, reference) for v in variants], rounds, runs_per_round, progress)
    meta = tuned.metadata
    tuning = {"database": meta.tuning.database, "records": meta.tuning.records,
              "tuned": meta.tuned, "fused_dcac": meta.fused_dcac, "layout": meta.layout}
    return BenchmarkReport(model=imported.name, run=RunInfo.on(board, device), variants=variants,
                           tuning=tuning, notes=notes,
                           reference=framework.name if framework else None)


def plot(report: BenchmarkReport, path: str) -> None:
    """Bar chart of median latency with p10-p90 whiskers."""
    stats = [(v.label, v.stats()) for v in report.variants]
    medians = [s.median_ms for _, s in stats]
    low = [s.median_ms - s.p10_ms for _, s in stats]
    high = [s.p90_ms - s.median_ms for _, s in stats]
    run = report.run
    with plot_to(path, figsize=(7, 4)) as (_fig, ax):
        bars = ax.bar([label for label, _ in stats], medians, yerr=[low, high], capsize=6,
                      color=["#9aa5b1", "#1f77b4", "#ff7f0e", "#2ca02c"][: len(stats)])
        for bar, med in zip(bars, medians, strict=True):
            ax.annotate(f"{med:.1f} ms", (bar.get_x() + bar.get_width() / 2, med),
                        ha="center", va="bottom", fontsize=9)
        ax.set_ylabel(f"latency, ms{run.label} (median, p10-p90)")
        ax.set_title(f"{report.model} on {run.board}{run.label}, {run.threads} threads, "
                     f"{run.date[:10]}")
