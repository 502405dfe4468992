"""Side-by-side latency: TVM untuned vs TVM tuned vs ONNX Runtime vs PyTorch, in one run.

All variants run the same input at the same thread count, interleaved round by round, so a
noisy neighbour or a clock change hits every variant alike. Every variant's output is also
compared with PyTorch's, so a fast wrong answer cannot pass as a speed-up.
"""

from __future__ import annotations

import datetime
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tvmc_attend.compile.build import require_cross_compiler
from tvmc_attend.compile.frontend import ModelSource
from tvmc_attend.compile.inputs import random_input
from tvmc_attend.compile.onnx_export import export_onnx
from tvmc_attend.compile.pipeline import compile_prepared
from tvmc_attend.compile.prepare import prepare_model
from tvmc_attend.compile.verify import reference_for
from tvmc_attend.device.choice import LOCAL, DeviceChoice
from tvmc_attend.files import save_figure_atomic, write_json_atomic
from tvmc_attend.targets import Board

from .variants import (
    Variant,
    check_and_time,
    machine_info,
    onnxruntime_variant,
    torch_variant,
    tvm_variant,
)

# Display order and labels of the variants (JSON keys as the CLI contract names them).
VARIANT_LABELS = {
    "tvm_untuned": "TVM untuned",
    "tvm_tuned": "TVM tuned",
    "onnxruntime": "ONNX Runtime",
    "torch": "PyTorch eager",
}


@dataclass
class BenchmarkReport:
    model: str
    board: str
    threads: int
    emulated: bool
    device: str
    variants: list[Variant]
    tuning: dict[str, Any]
    notes: list[str]
    reference: str | None = None  # what every variant's max_rel_err is measured against
    date: str = field(default_factory=lambda: datetime.datetime.now(
        datetime.timezone.utc).isoformat(timespec="seconds"))

    def by_key(self) -> dict[str, Variant]:
        return {v.key: v for v in self.variants}

    def ratios(self) -> dict[str, float]:
        """Speed ratios (how many times faster the first is than the second)."""
        med = {v.key: v.stats().median_ms for v in self.variants}
        pairs = [("tvm_tuned", "tvm_untuned"), ("tvm_tuned", "onnxruntime"),
                 ("tvm_tuned", "torch"), ("onnxruntime", "torch"), ("tvm_untuned", "torch")]
        return {f"{a}_vs_{b}": med[b] / med[a] for a, b in pairs if a in med and b in med}

    def as_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "model": self.model, "target": self.board, "device": self.device,
            "emulated": self.emulated, "threads": self.threads, "date": self.date,
            "machine": machine_info(), "tuning": self.tuning, "notes": self.notes,
            "reference": self.reference, "ratios": self.ratios(),
        }
        for v in self.variants:
            entry = v.stats().as_dict()
            entry.update(label=VARIANT_LABELS[v.key], throughput_ips=1e3 / entry["median_ms"],
                         max_rel_err=v.max_rel_err, emulated=self.emulated
                         and v.key.startswith("tvm"), note=v.note)
            data[v.key] = entry
        return data


def run_benchmark(source: ModelSource, board: Board, device: DeviceChoice = LOCAL,
                  rounds: int = 10, runs_per_round: int = 5, log_dir: str | None = None,
                  work_dir: str | None = None, fuse_dcac: bool = True,
                  progress: Callable[[str], None] = print) -> BenchmarkReport:
    """Compile the untuned and (if a database exists) tuned bundles, then time every variant
    (the TVM ones on ``device``)."""
    import torch

    device.require_for(board, "the benchmark")
    session = device.connect()
    require_cross_compiler(board)
    threads = board.thread_count()
    work = work_dir or tempfile.mkdtemp(prefix="tvmc-attend-bench-")
    notes: list[str] = []
    prepared = prepare_model(source, fuse_dcac=fuse_dcac)
    imported = prepared.imported
    progress(f"compiling untuned and tuned bundles for {board.name} into {work}")
    untuned_dir = os.path.join(work, "untuned")
    compile_prepared(prepared, board, untuned_dir, untuned=True)
    tuned_dir = os.path.join(work, "tuned")
    tuned_meta = compile_prepared(prepared, board, tuned_dir, log_dir=log_dir,
                                  warn=notes.append)
    x = random_input(imported.input_shape, imported.input_dtype)
    framework = reference_for(imported)  # PyTorch, or ONNX Runtime for a .onnx file
    reference = framework.run(x) if framework is not None else None

    variants = [tvm_variant("tvm_untuned", untuned_dir, session, threads)]
    if tuned_meta["tuned"]:
        variants.append(tvm_variant("tvm_tuned", tuned_dir, session, threads))
    if not board.is_remote:
        onnx_path = source.model if source.kind == ".onnx" else None
        if onnx_path is None and imported.torch_module is not None:
            onnx_path = export_onnx(imported.torch_module, torch.from_numpy(x),
                                    os.path.join(work, f"{imported.name}.onnx"))
        if onnx_path:
            variants.append(onnxruntime_variant(onnx_path, threads))
        if imported.torch_module is not None:
            variants.append(torch_variant(imported.torch_module, threads))
    else:
        notes.append("ONNX Runtime and PyTorch run on this host only: not measured for a board")

    check_and_time([(v, x, reference) for v in variants], rounds, runs_per_round, progress)
    tuning = {"database": tuned_meta["tuning"]["database"],
              "records": tuned_meta["tuning"]["records"], "tuned": tuned_meta["tuned"],
              "fused_dcac": tuned_meta["fused_dcac"]}
    return BenchmarkReport(model=imported.name, board=board.name, threads=threads,
                           emulated=device.emulated, device=device.description,
                           variants=variants, tuning=tuning,
                           notes=notes, reference=framework.name if framework else None)


def write_json(report: Any, path: str) -> None:
    """Write any report with an ``as_json()`` (benchmark, compare, explore) atomically."""
    write_json_atomic(path, report.as_json())


def plot(report: BenchmarkReport, path: str) -> None:
    """Bar chart of median latency with p10-p90 whiskers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stats = [(VARIANT_LABELS[v.key], v.stats()) for v in report.variants]
    medians = [s.median_ms for _, s in stats]
    low = [s.median_ms - s.p10_ms for _, s in stats]
    high = [s.p90_ms - s.median_ms for _, s in stats]
    fig, ax = plt.subplots(figsize=(7, 4))
    bars = ax.bar([label for label, _ in stats], medians, yerr=[low, high], capsize=6,
                  color=["#9aa5b1", "#1f77b4", "#ff7f0e", "#2ca02c"][: len(stats)])
    for bar, med in zip(bars, medians, strict=True):
        ax.annotate(f"{med:.1f} ms", (bar.get_x() + bar.get_width() / 2, med),
                    ha="center", va="bottom", fontsize=9)
    label = " (emulated)" if report.emulated else ""
    ax.set_ylabel(f"latency, ms{label} (median, p10-p90)")
    ax.set_title(f"{report.model} on {report.board}{label}, {report.threads} threads, "
                 f"{report.date[:10]}")
    fig.tight_layout()
    save_figure_atomic(lambda tmp: fig.savefig(tmp, dpi=120), path)
    plt.close(fig)
