"""Side-by-side latency: TVM untuned vs TVM tuned vs ONNX Runtime vs PyTorch, in one run.

All variants run the same input at the same thread count, interleaved round by round, so a
noisy neighbour or a clock change hits every variant alike. Every variant's output is also
compared with PyTorch's, so a fast wrong answer cannot pass as a speed-up.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tvmc_attend import attend_runtime
from tvmc_attend.targets import Board

from .frontend import ModelSource
from .inputs import random_input
from .onnx_export import export_onnx
from .pipeline import compile_bundle, prepare_model

# Display order and labels of the variants (JSON keys as the CLI contract names them).
VARIANT_LABELS = {
    "tvm_untuned": "TVM untuned",
    "tvm_tuned": "TVM tuned",
    "onnxruntime": "ONNX Runtime",
    "torch": "PyTorch eager",
}


@dataclass
class Variant:
    key: str
    run: Callable[[np.ndarray], np.ndarray]
    time_runs: Callable[[np.ndarray, int], list[float]]  # single-run latencies in ms
    times_ms: list[float] = field(default_factory=list)
    max_rel_err: float | None = None
    note: str = ""

    def stats(self) -> attend_runtime.LatencyStats:
        return attend_runtime.LatencyStats(times_ms=self.times_ms)


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
            "ratios": self.ratios(),
        }
        for v in self.variants:
            entry = v.stats().as_dict()
            entry.update(label=VARIANT_LABELS[v.key], throughput_ips=1e3 / entry["median_ms"],
                         max_rel_err_vs_torch=v.max_rel_err, emulated=self.emulated
                         and v.key.startswith("tvm"), note=v.note)
            data[v.key] = entry
        return data


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"hostname": platform.node(), "cpu": cpu, "cores": os.cpu_count(),
            "platform": platform.platform(), "python": platform.python_version()}


def _tvm_variant(key: str, bundle: str, remote_session: Any, threads: int | None) -> Variant:
    model = attend_runtime.load(bundle, remote=remote_session, threads=threads)
    return Variant(key, model, lambda x, n: model.benchmark(x, repeat=n, warmup=0).times_ms)


def _timed(fn: Callable[[np.ndarray], Any]) -> Callable[[np.ndarray, int], list[float]]:
    def time_runs(x: np.ndarray, n: int) -> list[float]:
        times = []
        for _ in range(n):
            start = time.perf_counter()
            fn(x)
            times.append((time.perf_counter() - start) * 1e3)
        return times
    return time_runs


def _onnxruntime_variant(onnx_path: str, threads: int) -> Variant:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # ORT's idle workers spin by default, stealing the cores from the next variant.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(x: np.ndarray) -> np.ndarray:
        return session.run(None, {name: x})[0]
    return Variant("onnxruntime", run, _timed(run))


def _torch_variant(module: Any, threads: int) -> Variant:
    import torch

    torch.set_num_threads(threads)

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(x)).numpy()
    return Variant("torch", run, _timed(run))


def _rel_err(out: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(out - ref).max() / max(np.abs(ref).max(), 1e-30))


def run_benchmark(source: ModelSource, board: Board, remote_session: Any = None,
                  device: str = "local", emulated: bool = False, rounds: int = 10,
                  runs_per_round: int = 5, log_dir: str | None = None,
                  work_dir: str | None = None,
                  progress: Callable[[str], None] = print) -> BenchmarkReport:
    """Compile the untuned and (if a database exists) tuned bundles, then time every variant."""
    import torch

    threads = board.thread_count()
    work = work_dir or tempfile.mkdtemp(prefix="tvmc-attend-bench-")
    notes: list[str] = []
    progress(f"compiling untuned and tuned bundles for {board.name} into {work}")
    untuned_dir = os.path.join(work, "untuned")
    compile_bundle(source, board, untuned_dir, untuned=True)
    tuned_dir = os.path.join(work, "tuned")
    tuned_meta = compile_bundle(source, board, tuned_dir, log_dir=log_dir,
                                warn=lambda m: notes.append(m.removeprefix("warning: ")))
    prepared = prepare_model(source)
    imported = prepared.imported
    x = random_input(imported.input_shape, imported.input_dtype)
    reference = None
    if imported.torch_module is not None:
        with torch.inference_mode():
            reference = imported.torch_module(torch.from_numpy(x)).numpy()

    variants = [_tvm_variant("tvm_untuned", untuned_dir, remote_session, threads)]
    if tuned_meta["tuned"]:
        variants.append(_tvm_variant("tvm_tuned", tuned_dir, remote_session, threads))
    if not board.is_remote:
        onnx_path = source.model if source.kind == ".onnx" else None
        if onnx_path is None and imported.torch_module is not None:
            onnx_path = export_onnx(imported.torch_module, torch.from_numpy(x),
                                    os.path.join(work, f"{imported.name}.onnx"))
        if onnx_path:
            variants.append(_onnxruntime_variant(onnx_path, threads))
        if imported.torch_module is not None:
            variants.append(_torch_variant(imported.torch_module, threads))
    else:
        notes.append("ONNX Runtime and PyTorch run on this host only: not measured for a board")

    for v in variants:
        out = v.run(x)  # also the warm-up
        if reference is not None:
            v.max_rel_err = _rel_err(out, reference)
    for r in range(rounds):
        progress(f"round {r + 1}/{rounds}")
        for v in variants:
            v.times_ms.extend(v.time_runs(x, runs_per_round))
    tuning = {"database": tuned_meta["tuning"]["database"],
              "records": tuned_meta["tuning"]["records"], "tuned": tuned_meta["tuned"]}
    return BenchmarkReport(model=imported.name, board=board.name, threads=threads,
                           emulated=emulated, device=device, variants=variants, tuning=tuning,
                           notes=notes)


def write_json(report: BenchmarkReport, path: str) -> None:
    with open(path, "w") as f:
        json.dump(report.as_json(), f, indent=2)
        f.write("\n")


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
    fig.savefig(path, dpi=120)
    plt.close(fig)
