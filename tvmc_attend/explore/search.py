"""`tvmc-attend explore`: a seeded design-space search over AttendNeXt with hardware in the loop.

The paper found AttendNeXt by machine-driven design exploration under best-practice constraints.
This is a small, reproducible stand-in, in two stages:

1. Screening (training-free, no compiler): seeded designs of ``design_space`` (the hand
   reconstruction first, then random designs, then mutations of the screening front) are built
   in PyTorch; those over ``max_params`` are dropped, the rest get their MACs and their NASWOT
   score (``naswot``), the accuracy proxy.
2. Timing on the target (hardware in the loop): the reconstruction first, then designs in
   order of the screening's Pareto layers (proxy up, params and MACs down), compiled through
   our pipeline for the target and timed with the bundle loader, until ``budget`` designs are
   timed (their status in the report: "measured"). With a latency limit, each timed design
   calibrates a ms-per-MAC rate for this target, and designs predicted to miss the limit are
   skipped without compiling. Finally all timed designs are timed again, interleaved, and the
   Pareto front (proxy up, latency and params down) is saved as models (``models/saved.py``).

Only latency can break reproducibility (it is noisy); the designs screened and the order of
timing depend on the seed alone unless a latency limit is set, and latencies within
``latency_tolerance`` of each other count as equal on the front.

Speed: designs are compiled from a ``.pt2`` export (the compiler folds BatchNorm, in a
fraction of a second) and timed at a reduced ``input_size`` (the report says which).
"""

from __future__ import annotations

import os
import random
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tvmc_attend.bench.report import RunInfo, plot_to
from tvmc_attend.bench.variants import Variant, check_and_time, tvm_variant
from tvmc_attend.compiler.frontend import ModelSource
from tvmc_attend.compiler.inputs import random_input
from tvmc_attend.compiler.pipeline import compile_bundle
from tvmc_attend.compiler.verify import DEFAULT_TOLERANCE, rel_err
from tvmc_attend.device.choice import LOCAL, DeviceChoice
from tvmc_attend.errors import UserError
from tvmc_attend.models.design import Design, build_model
from tvmc_attend.models.saved import DEFAULT_DIR, save_design
from tvmc_attend.targets import Board

from .design_space import mutate, sample, smallest
from .naswot import BATCH as PROXY_BATCH
from .naswot import naswot_score
from .pareto import Objective, pareto_front, pareto_layers

PROXY_SIZE = 64  # NASWOT input resolution (independent of the timing resolution)
QUICK_RUNS = 3  # runs timed right after compiling, for the latency predictor


@dataclass
class ExploreOptions:
    max_params: int
    max_latency_ms: float | None = None
    budget: int = 12  # designs compiled and timed on the target
    screen: int | None = None  # designs scored without the compiler (default 4 x budget, >= 16)
    seed: int = 0
    input_size: int = 128  # timing resolution (224 is the paper's)
    trials: int = 0  # tuning trials per timed design; 0 times the untuned build
    rounds: int = 5
    runs_per_round: int = 2
    latency_tolerance: float = 0.1
    out_dir: str = DEFAULT_DIR
    log_dir: str | None = None  # tuning databases when trials > 0 (default <out>/tuning_logs)

    @property
    def screen_size(self) -> int:
        return max(self.screen or max(16, 4 * self.budget), self.budget)

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (1, 3, self.input_size, self.input_size)


@dataclass
class Candidate:
    design: Design
    origin: str  # "reconstruction", "random" or "mutation of <name>"
    params: int
    macs: int  # at the timing resolution
    proxy: float
    status: str = "screened"  # screened | measured | skipped | failed
    note: str = ""
    predicted_ms: float | None = None
    quick_ms: float | None = None
    variant: Variant | None = field(default=None, repr=False)
    reference: np.ndarray | None = field(default=None, repr=False)
    on_front: bool = False
    config_file: str | None = None

    @property
    def name(self) -> str:
        return self.design.name

    @property
    def latency_ms(self) -> float:
        return self.variant.stats().median_ms if self.variant and self.variant.times_ms else 0.0

    @property
    def numerics_ok(self) -> bool:
        return self.variant is not None and self.variant.max_rel_err is not None \
            and self.variant.max_rel_err <= DEFAULT_TOLERANCE

    def as_json(self, emulated: bool) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name, "design": self.design.as_dict(), "origin": self.origin,
            "params": self.params, "macs": self.macs, "naswot": self.proxy,
            "status": self.status, "note": self.note, "predicted_ms": self.predicted_ms,
            "on_front": self.on_front, "config_file": self.config_file, "latency": None,
        }
        if self.variant is not None and self.variant.times_ms:
            data["latency"] = {**self.variant.stats().as_dict(), "emulated": emulated,
                               "max_rel_err_vs_torch": self.variant.max_rel_err}
        return data


SCREEN_OBJECTIVES = (
    Objective(key=lambda c: c.proxy, maximize=True),
    Objective(key=lambda c: c.params),
    Objective(key=lambda c: c.macs),
)


def front_objectives(latency_tolerance: float) -> tuple[Objective, ...]:
    return (
        Objective(key=lambda c: c.proxy, maximize=True),
        Objective(key=lambda c: c.latency_ms, tolerance=latency_tolerance),
        Objective(key=lambda c: c.params),
    )


@dataclass
class ExploreReport:
    """Every screened design, the timed ones' latencies, and the front saved by name."""

    options: ExploreOptions
    run: RunInfo
    candidates: list[Candidate]
    front: list[Candidate]
    notes: list[str]

    def as_json(self) -> dict[str, Any]:
        o = self.options
        return {
            "kind": "explore", **self.run.as_json(), "seed": o.seed, "budget": o.budget,
            "screened": len(self.candidates), "max_params": o.max_params,
            "max_latency_ms": o.max_latency_ms, "input_size": o.input_size,
            "tuning_trials": o.trials, "latency_tolerance": o.latency_tolerance,
            "proxy": {"name": "NASWOT log|det K_H| (Mellor et al. 2021), sign of "
                              "pre-activations, seeded N(0,1) batch",
                      "input_shape": [PROXY_BATCH, 3, PROXY_SIZE, PROXY_SIZE]},
            "notes": self.notes,
            "front": [c.name for c in self.front],
            "candidates": [c.as_json(self.run.emulated) for c in self.candidates],
        }


# ----------------------------------------------------------------------------------- screening


def _seeded_model(design: Design, input_shape: tuple[int, ...], seed: int) -> Any:
    """The design's model exactly as ``create_model`` builds a registered one (same seed)."""
    import torch

    from tvmc_attend.models.weights import init_weights

    torch.manual_seed(seed)
    return init_weights(build_model(design), input_shape, seed)


def _screen_one(design: Design, origin: str, options: ExploreOptions) -> Candidate | int:
    """A scored candidate, or its parameter count when that is over the limit."""
    from tvmc_attend.models.stats import count_macs, count_params

    params = count_params(build_model(design))  # rejected designs skip the calibration
    if params > options.max_params:
        return params
    model = _seeded_model(design, options.input_shape, options.seed)
    return Candidate(design=design, origin=origin, params=params,
                     macs=count_macs(model, options.input_shape),
                     proxy=round(naswot_score(model, (1, 3, PROXY_SIZE, PROXY_SIZE),
                                              seed=options.seed), 4))


def screen(options: ExploreOptions,
           progress: Callable[[str], None] = print) -> list[Candidate]:
    """Stage 1: seeded designs under the parameter limit, with MACs and NASWOT scores."""
    from tvmc_attend.models.stats import count_params

    least = count_params(build_model(smallest()))
    if least > options.max_params:
        raise UserError(f"no design of the space has at most {options.max_params:,} params "
                        f"(the smallest has {least:,}); raise --max-params")
    rng = random.Random(options.seed)
    wanted = options.screen_size
    pool: list[Candidate] = []
    seen: set[str] = set()
    fewest = None
    attempts = 0
    while len(pool) < wanted and attempts < 20 * wanted:
        attempts += 1
        if attempts == 1:
            design, origin = Design(), "reconstruction"
        elif len(pool) < wanted // 2:
            design, origin = sample(rng), "random"
        else:
            parents = pareto_front(pool, SCREEN_OBJECTIVES)
            parent = parents[rng.randrange(len(parents))]
            design, origin = mutate(parent.design, rng), f"mutation of {parent.name}"
        if design.name in seen:
            continue
        seen.add(design.name)
        result = _screen_one(design, origin, options)
        if isinstance(result, int):
            fewest = result if fewest is None else min(fewest, result)
            continue
        pool.append(result)
        progress(f"screen {len(pool)}/{wanted} {result.name}: {result.params / 1e6:.2f} M "
                 f"params, {result.macs / 1e9:.3f} GMACs, NASWOT {result.proxy:.2f} ({origin})")
    if not pool:
        raise UserError(f"none of {attempts} designs tried has at most {options.max_params:,} "
                        f"params (the smallest has {fewest:,}); raise --max-params")
    return pool


def _spread(items: list[Candidate]) -> list[Candidate]:
    """``items`` reordered so that every prefix spans the range: ends first, then midpoints."""
    if len(items) <= 2:
        return list(items)
    order, queue = [0, len(items) - 1], [(0, len(items) - 1)]
    while queue:
        lo, hi = queue.pop(0)
        mid = (lo + hi) // 2
        if lo < mid < hi:
            order.append(mid)
            queue += [(lo, mid), (mid, hi)]
    return [items[i] for i in order]


def timing_order(pool: list[Candidate]) -> list[Candidate]:
    """The hand reconstruction first (the reference the search has to beat), then the
    screening fronts; inside a front, spread over the MAC range."""
    first = [c for c in pool if c.origin == "reconstruction"]
    return first + [c for layer in pareto_layers([c for c in pool if c not in first],
                                                 SCREEN_OBJECTIVES)
                    for c in _spread(sorted(layer, key=lambda c: (c.macs, c.name)))]


# -------------------------------------------------------------------------------------- timing


@dataclass
class DesignTimer:
    """Compiles designs for one board and times them there (locally or over RPC)."""

    board: Board
    options: ExploreOptions
    device: DeviceChoice = LOCAL
    session: Any = None  # an RPC session on the device, for timing
    progress: Callable[[str], None] = print

    @property
    def bundle_root(self) -> str:
        return os.path.join(self.options.out_dir, "bundles",
                            f"{self.board.name}-{self.options.input_size}")

    def _compile(self, name: str, model: Any, bundle: str) -> None:
        import torch

        from tvmc_attend.compiler.tuning.tune import TuneOptions, tune_model

        o = self.options
        with tempfile.TemporaryDirectory(prefix="tvmc-attend-explore-") as tmp:
            pt2 = os.path.join(tmp, f"{name}.pt2")  # the file name is the model name
            with torch.no_grad():
                exported = torch.export.export(model, (torch.zeros(o.input_shape),))
            torch.export.save(exported, pt2)
            source = ModelSource(model=pt2)
            log_dir = o.log_dir or os.path.join(o.out_dir, "tuning_logs")
            if o.trials:
                tune_model(source, self.board, TuneOptions(trials=o.trials, seed=o.seed,
                                                           log_dir=log_dir),
                           device=self.device)
            compile_bundle(source, self.board, bundle, untuned=not o.trials, log_dir=log_dir,
                           warn=lambda m: self.progress(f"warning: {m}"))

    def compile_and_time(self, cand: Candidate, x: np.ndarray) -> None:
        """Compile (or reuse the untuned bundle of an earlier run), check and quick-time."""
        import torch

        model = _seeded_model(cand.design, self.options.input_shape, self.options.seed)
        with torch.inference_mode():
            cand.reference = model(torch.from_numpy(x)).numpy()
        bundle = os.path.join(self.bundle_root, cand.name)
        threads = self.board.thread_count()
        reuse = not self.options.trials and os.path.isfile(os.path.join(bundle, "metadata.json"))
        if reuse:
            variant = tvm_variant("tvm_untuned", bundle, self.session, threads)
            # A bundle from an older model definition no longer matches: compile it again.
            reuse = rel_err(variant.run(x), cand.reference) <= DEFAULT_TOLERANCE
        if not reuse:
            self.progress(f"compiling {cand.name} for {self.board.name}")
            self._compile(cand.name, model, bundle)
            variant = tvm_variant("tvm_tuned" if self.options.trials else "tvm_untuned",
                                   bundle, self.session, threads)
        cand.variant = variant
        cand.quick_ms = statistics.median(variant.time_runs(x, QUICK_RUNS))
        cand.status = "measured"


def _predicted_ms(cand: Candidate, timed: list[Candidate]) -> float | None:
    """Latency predicted from this target's ms per MAC so far (None before any timing)."""
    if not timed:
        return None
    return cand.macs * statistics.median(c.quick_ms / c.macs for c in timed)


def explore(options: ExploreOptions, board: Board, device: DeviceChoice = LOCAL,
            progress: Callable[[str], None] = print) -> ExploreReport:
    """Screen, time ``budget`` designs on ``board`` (on ``device``), and save the Pareto
    front."""
    if options.budget < 1:
        raise UserError("--budget must be at least 1 (designs measured on the target)")
    if options.input_size % 32:
        raise UserError(f"input size {options.input_size} is not a multiple of 32")
    device.require_for(board, "explore")
    session = device.connect()
    pool = screen(options, progress)
    timer = DesignTimer(board, options, device=device, session=session, progress=progress)
    x = random_input(options.input_shape, "float32", seed=options.seed)
    timed: list[Candidate] = []
    for cand in timing_order(pool):
        if len(timed) >= options.budget:
            break
        cand.predicted_ms = _predicted_ms(cand, timed)
        limit = options.max_latency_ms
        if limit and cand.predicted_ms and cand.predicted_ms > limit * (
                1 + options.latency_tolerance):
            cand.status = "skipped"
            cand.note = f"predicted {cand.predicted_ms:.2f} ms > {limit} ms"
            continue
        progress(f"measure {len(timed) + 1}/{options.budget} {cand.name}")
        try:
            timer.compile_and_time(cand, x)
        except UserError as err:  # e.g. an operator the target cannot build: keep searching
            cand.status, cand.note = "failed", str(err)
            progress(f"  failed: {err}")
            continue
        timed.append(cand)
    check_and_time([(c.variant, x, c.reference) for c in timed], options.rounds,
                   options.runs_per_round, progress)
    return _finish(options, board, pool, timed, device)


def _finish(options: ExploreOptions, board: Board, pool: list[Candidate],
            timed: list[Candidate], device: DeviceChoice) -> ExploreReport:
    """Pick the feasible, numerically correct designs' front and save its members."""
    size = options.input_size
    where = "reduced from the paper's 224x224 for speed" if size < 224 else "the paper's size"
    how = f"tuned with {options.trials} trials each" if options.trials else "untuned builds"
    notes = [f"latency measured at {size}x{size} ({where}), {how}"]
    if device.emulated:
        notes.append("latencies were taken on an emulated board: emulated, for function only")
    feasible = []
    for c in timed:
        if not c.numerics_ok:
            c.note = f"TVM output differs from PyTorch (rel err {c.variant.max_rel_err:.1e})"
        elif options.max_latency_ms and c.latency_ms > options.max_latency_ms:
            c.note = f"{c.latency_ms:.2f} ms > {options.max_latency_ms} ms"
        else:
            feasible.append(c)
    front = sorted(pareto_front(feasible, front_objectives(options.latency_tolerance)),
                   key=lambda c: (c.latency_ms, c.name))
    report = ExploreReport(options=options, run=RunInfo.on(board, device), candidates=pool,
                           front=front, notes=notes)
    for c in front:
        c.on_front = True
        c.config_file = save_design(options.out_dir, c.design, {
            "target": board.name, "emulated": device.emulated, "input_size": options.input_size,
            "params": c.params, "macs": c.macs, "naswot": c.proxy,
            "latency_median_ms": c.latency_ms, "date": report.run.date})
    return report


def plot(report: ExploreReport, path: str) -> None:
    """Two panels sharing the proxy axis: latency (timed designs) and params (all screened);
    front members in colour and labelled, the hand reconstruction ringed."""
    run = report.run
    size = report.options.input_size
    timed = [c for c in report.candidates if c.variant is not None and c.variant.times_ms]
    with plot_to(path, 1, 2, figsize=(11, 4.5), sharey=True) as (fig, (ax_lat, ax_par)):
        panels = ((ax_lat, timed, lambda c: c.latency_ms,
                   f"latency, ms{run.label} (median, {size}x{size}, {run.board})"),
                  (ax_par, report.candidates, lambda c: c.params / 1e6, "parameters, M"))
        for ax, cands, xval, xlabel in panels:
            rest = [c for c in cands if not c.on_front]
            ax.scatter([xval(c) for c in rest], [c.proxy for c in rest], c="#9aa5b1", s=22,
                       label="screened" if ax is ax_par else "measured")
            front = [c for c in cands if c.on_front]
            ax.scatter([xval(c) for c in front], [c.proxy for c in front], c="#d62728", s=40,
                       label="Pareto front")
            for i, c in enumerate(sorted(front, key=xval)):  # alternate sides: neighbours overlap
                ax.annotate(c.name.removeprefix("explore-"), (xval(c), c.proxy), fontsize=8,
                            xytext=(4, 4 if i % 2 else -11), textcoords="offset points")
            ref = [c for c in cands if c.origin == "reconstruction"]
            ax.scatter([xval(c) for c in ref], [c.proxy for c in ref], facecolors="none",
                       edgecolors="k", s=120, label="reconstruction")
            ax.set_xlabel(xlabel)
            ax.legend(fontsize=8, loc="lower right")
        ax_lat.set_ylabel("NASWOT score (higher is better)")
        fig.suptitle(f"explore on {run.board}{run.label}: seed {report.options.seed}, "
                     f"{len(timed)} measured of {len(report.candidates)} screened, "
                     f"<= {report.options.max_params / 1e6:.2f} M params, {run.date[:10]}")
