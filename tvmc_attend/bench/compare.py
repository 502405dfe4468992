"""`tvmc-attend compare`: AttendNeXt vs the paper's peers, tuned, compiled and timed in one run.

Each model is imported once, tuned (``tune_prepared`` resumes from the (target, model) database,
so a model tuned before costs nothing), built with its database into a bundle, and checked
against PyTorch. Then every model's variants (TVM; on the host also ONNX Runtime and PyTorch)
are timed interleaved round by round (``check_and_time``), so that load from other jobs hits every
model alike. Latency ratios are relative to a baseline (AttendNeXt by default): a ratio of 10
means the baseline is 10x faster than that model.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tvmc_attend.compiler.build_board import build_board
from tvmc_attend.compiler.frontend import ModelSource
from tvmc_attend.compiler.inputs import random_input
from tvmc_attend.compiler.lowering import DEFAULT_LAYOUT
from tvmc_attend.compiler.pipeline import compile_prepared
from tvmc_attend.compiler.prepare import prepare_model
from tvmc_attend.compiler.tuning.tune import TuneOptions, at_most_every, tune_prepared
from tvmc_attend.compiler.verify import DEFAULT_TOLERANCE, float32_bound, rel_err, torch_float64
from tvmc_attend.device.choice import LOCAL, DeviceChoice
from tvmc_attend.errors import UserError
from tvmc_attend.targets import Board

from .report import RunInfo, plot_to
from .variants import (
    HOST_ONLY_NOTE,
    Variant,
    baseline_variants,
    check_and_time,
    tvm_variant,
)

DEFAULT_MODELS = ("attendnext", "mobilenetv3_large_100", "mobileone_s1", "fbnetc_100",
                  "mobilevit_xs")
NUMERICS_RULE = (f"TVM within relative max({DEFAULT_TOLERANCE:g}, 2 x floor) of PyTorch's "
                 "float32 output, where floor is that output's own distance to PyTorch's "
                 "float64 output")
COLUMNS = ("tvm", "onnxruntime", "torch")  # JSON keys of the latency columns


@dataclass
class CompareOptions:
    models: Sequence[str] = DEFAULT_MODELS
    baseline: str | None = None  # default: attendnext if compared, else the first model
    trials: int = 200
    input_size: int | None = None
    seed: int = 0
    log_dir: str | None = None
    work_dir: str | None = None
    rounds: int = 10
    runs_per_round: int = 3
    layout: str = DEFAULT_LAYOUT

    @property
    def baseline_model(self) -> str:
        if self.baseline:
            return self.baseline
        return "attendnext" if "attendnext" in self.models else self.models[0]


@dataclass
class ModelResult:
    name: str
    params: int
    macs: int
    input_shape: tuple[int, ...]
    tuning: dict[str, Any]
    variants: dict[str, Variant]  # by column: tvm, onnxruntime, torch
    sensitivity: float  # relative change of the PyTorch output between two inputs
    # Distance to PyTorch's float64 output of PyTorch float32 and of TVM: the float32 floor.
    torch_fp64_err: float = 0.0
    tvm_fp64_err: float | None = None

    @property
    def numerics_ok(self) -> bool:
        """See NUMERICS_RULE. A deep random-init network can sit ~1e-5 from the exact answer in
        float32 (FBNet-C at 128x128: 1.2e-5), and two float32 runtimes each that close to it
        can differ by twice that; a real miscompile is orders of magnitude further off."""
        err = self.variants["tvm"].max_rel_err
        return err is not None and err <= float32_bound(DEFAULT_TOLERANCE, self.torch_fp64_err)

    def median_ms(self, column: str) -> float | None:
        variant = self.variants.get(column)
        return variant.stats().median_ms if variant else None


@dataclass
class CompareReport:
    """Every compared model's results, timed side by side in one run."""

    run: RunInfo
    options: CompareOptions
    results: list[ModelResult]
    notes: list[str]

    @property
    def baseline(self) -> ModelResult:
        return next(r for r in self.results if r.name == self.options.baseline_model)

    def vs_baseline(self, result: ModelResult) -> dict[str, float | None]:
        """Latency of ``result`` over the baseline's, per column (>1: the baseline is faster),
        and its parameter count over the baseline's (>1: the baseline is smaller)."""
        base = self.baseline
        ratios: dict[str, float | None] = {}
        for column in COLUMNS:
            mine, theirs = result.median_ms(column), base.median_ms(column)
            ratios[column] = mine / theirs if mine and theirs else None
        ratios["params"] = result.params / base.params
        return ratios

    def _variant_json(self, column: str, variant: Variant) -> dict[str, Any]:
        entry = variant.timing_json()
        emulated = self.run.emulated and column == "tvm"
        entry.update(label=variant.label + (" (emulated)" if emulated else ""),
                     throughput_ips=1e3 / entry["median_ms"],
                     max_rel_err_vs_torch=variant.max_rel_err, emulated=emulated)
        return entry

    def as_json(self) -> dict[str, Any]:
        models = []
        for r in self.results:
            entry: dict[str, Any] = {
                "name": r.name, "params": r.params, "macs": r.macs,
                "input_shape": list(r.input_shape), "tuning": r.tuning,
                "numerics_ok": r.numerics_ok, "reference_sensitivity": r.sensitivity,
                "numerics": {"tvm_vs_torch": r.variants["tvm"].max_rel_err,
                             "tvm_vs_torch_float64": r.tvm_fp64_err,
                             "torch_vs_torch_float64": r.torch_fp64_err},
                "vs_baseline": self.vs_baseline(r),
            }
            entry.update({c: self._variant_json(c, v) for c, v in r.variants.items()})
            models.append(entry)
        return {
            "kind": "compare", **self.run.as_json(), "input_size": self.options.input_size,
            "trials": self.options.trials, "baseline": self.options.baseline_model,
            "rel_tol": DEFAULT_TOLERANCE, "numerics_rule": NUMERICS_RULE, "notes": self.notes,
            "models": models,
        }


@dataclass
class Reference:
    """PyTorch's answers for one input: float32 (what TVM is compared with), float64 (to see
    how far float32 itself is from the exact answer) and its sensitivity to the input."""

    fp32: np.ndarray
    fp64: np.ndarray
    sensitivity: float


def _reference(module: Any, x: np.ndarray, seed: int) -> Reference:
    """A collapsed random network (output = classifier bias) would make any compiler look
    exact: ``sensitivity`` is how much the output moves for another input."""
    import torch

    other = random_input(x.shape, str(x.dtype), seed=seed + 1)
    with torch.inference_mode():
        ref = module(torch.from_numpy(x)).numpy()
        alt = module(torch.from_numpy(other)).numpy()
    return Reference(fp32=ref, fp64=torch_float64(module, x),
                     sensitivity=float(np.linalg.norm(ref - alt) / max(np.linalg.norm(ref),
                                                                       1e-30)))


def _prepare_one(name: str, board: Board, options: CompareOptions, work: str,
                 device: DeviceChoice, session: Any, notes: list[str],
                 progress: Callable[[str], None]) -> tuple[ModelResult, np.ndarray, Reference]:
    """Import, tune, build and load one model; returns it with its input and reference."""
    from tvmc_attend.models import model_stats

    if not options.trials:  # apply what is there, also a narrower CPU class's database
        board = build_board(board, name, options.log_dir, layout=options.layout,
                            warn=notes.append)
    progress(f"{name}: importing")
    prepared = prepare_model(ModelSource(model=name, input_size=options.input_size,
                                         seed=options.seed), layout=options.layout, board=board)
    imported = prepared.imported
    if imported.torch_module is None:
        raise UserError(f"{name} has no PyTorch reference to check against; compare zoo models")
    tuning: dict[str, Any] = {"trials": options.trials}
    if options.trials:
        progress(f"{name}: tuning (resumes from the database; budget {options.trials} trials)")
        tuned = tune_prepared(prepared, board, TuneOptions(
            trials=options.trials, seed=options.seed, log_dir=options.log_dir,
            layout=options.layout),
            device=device, on_progress=at_most_every(30.0, lambda r: progress(
                f"{name}: {sum(t.done for t in r.tasks)}/{r.budget} trials")))
        tuning.update(new_trials=tuned.new_trials, seconds=round(tuned.seconds, 1),
                      trials_per_minute=round(tuned.trials_per_minute, 1))
        if tuned.stopped:
            raise UserError(f"tuning {name} stopped ({tuned.stopped}); rerun to resume")
    progress(f"{name}: building")
    bundle = os.path.join(work, name)
    meta = compile_prepared(prepared, board, bundle, log_dir=options.log_dir,
                            warn=notes.append).metadata
    tuning.update(tuned=meta.tuned, database=meta.tuning.database, records=meta.tuning.records)
    threads = board.thread_count()
    x = random_input(imported.input_shape, imported.input_dtype, seed=options.seed)
    reference = _reference(imported.torch_module, x, options.seed)
    variants = {"tvm": tvm_variant("tvm_tuned" if meta.tuned else "tvm_untuned", bundle,
                                    session, threads)}
    if not board.is_remote:
        variants.update((v.key, v) for v in baseline_variants(imported, x, threads, work))
    stats = model_stats(imported.torch_module, imported.input_shape)
    result = ModelResult(name=name, params=stats.params, macs=stats.macs,
                         input_shape=imported.input_shape, tuning=tuning, variants=variants,
                         sensitivity=reference.sensitivity,
                         torch_fp64_err=rel_err(reference.fp32, reference.fp64))
    return result, x, reference


def run_compare(options: CompareOptions, board: Board, device: DeviceChoice = LOCAL,
                progress: Callable[[str], None] = print) -> CompareReport:
    """Tune, build, check and time every model of ``options`` on ``board`` (on ``device``)."""
    if not options.models:
        raise UserError("no models to compare; pass --models a,b,...")
    if options.baseline_model not in options.models:
        raise UserError(f"baseline {options.baseline_model!r} is not among the compared models "
                        f"({', '.join(options.models)})")
    device.require_for(board, "compare")
    session = device.connect()
    board.require_toolchain()
    work = options.work_dir or tempfile.mkdtemp(prefix="tvmc-attend-compare-")
    notes: list[str] = []
    if board.is_remote:
        notes.append(HOST_ONLY_NOTE)
    if device.emulated:
        notes.append("TVM latencies were taken on an emulated board (qemu): emulated, 60-160x "
                     "slower than the real board and noisy; for function and numerics only")
    results, inputs, checks = [], [], []
    for name in dict.fromkeys(options.models):  # in order, once each
        result, x, reference = _prepare_one(name, board, options, work, device, session, notes,
                                            progress)
        results.append(result)
        inputs.append((x, reference))
        checks += [(v, x, reference.fp32) for v in result.variants.values()]
    check_and_time(checks, options.rounds, options.runs_per_round, progress)
    for result, (x, reference) in zip(results, inputs, strict=True):
        result.tvm_fp64_err = rel_err(result.variants["tvm"].run(x), reference.fp64)
    return CompareReport(run=RunInfo.on(board, device), options=options, results=results,
                         notes=notes)


def plot(report: CompareReport, path: str) -> None:
    """Latency vs parameters, one labelled point per model (TVM, p10-p90 bars); on the host,
    ONNX Runtime and PyTorch as hollow markers for context."""
    run = report.run
    markers = {"tvm": ("o", "#1f77b4"), "onnxruntime": ("s", "#ff7f0e"), "torch": ("^", "#2ca02c")}
    with plot_to(path, figsize=(7.5, 5)) as (_fig, ax):
        for column, (marker, colour) in markers.items():
            measured = [(r.params / 1e6, r.variants[column]) for r in report.results
                        if column in r.variants]
            if not measured:
                continue
            rows = [(params, variant.stats()) for params, variant in measured]
            xs, ys = [p for p, _ in rows], [s.median_ms for _, s in rows]
            name = "TVM" + run.label if column == "tvm" else measured[0][1].label
            if column == "tvm":
                err = [[s.median_ms - s.p10_ms for _, s in rows], [s.p90_ms - s.median_ms
                                                                    for _, s in rows]]
                ax.errorbar(xs, ys, yerr=err, fmt=marker, color=colour, capsize=4, label=name)
            else:
                ax.scatter(xs, ys, marker=marker, facecolors="none", edgecolors=colour,
                           label=name)
        for r in report.results:
            ax.annotate(r.name, (r.params / 1e6, r.median_ms("tvm")), fontsize=8, xytext=(5, 4),
                        textcoords="offset points")
        medians = [m for r in report.results for c in COLUMNS if (m := r.median_ms(c))]
        if max(medians) > 10 * min(medians):
            ax.set_yscale("log")
        shape = "x".join(map(str, report.results[0].input_shape[-2:]))
        ax.set_xlabel("parameters, M")
        ax.set_ylabel(f"latency, ms{run.label} (median; bars p10-p90)")
        ax.set_title(f"{run.board}{run.label}, {run.threads} threads, input {shape}, "
                     f"{report.options.trials} trials/model, {run.date[:10]}", fontsize=10)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
