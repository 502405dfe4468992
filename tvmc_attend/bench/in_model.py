"""Where a whole model's time goes: its kernels inside the model against the same kernels
timed alone by the tuner, the VM's own calls, and what lies between calls.

MetaSchedule times each kernel alone, repeatedly, with its data in cache ("warm"), and a
tune's estimate is the sum over tasks of calls x the best record's warm time. A whole model
runs slower than that estimate. This check builds the model as ``compile`` does (the
database's best record per task) and runs it three ways, interleaved round by round:

- plain: ``vm["main"]`` alone, the latency a user sees;
- with a no-op VM instrument, so that the instrument's own cost per call is known;
- with a timing instrument: every call's duration (kernels and the VM's builtins), so that a
  kernel's time per call inside the model is set beside its warm time.

Whole time = kernels + VM builtins + the gaps between calls (VM dispatch, and the
instrument's cost in the instrumented runs). TVM 0.27's Relax VM has no profiler: the
instrument (a Python callback before and after each call) is the one way in.

Then ONNX Runtime runs the same model with its profiler, and each side's calls are set beside
the other's by kind of layer (``versus_onnxruntime.py``): which layers TVM loses on.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tvmc_attend.compiler.build import build_scheduled, schedule_module
from tvmc_attend.compiler.frontend import ModelSource
from tvmc_attend.compiler.lowering import DEFAULT_LAYOUT, extract_tasks, lowering_of
from tvmc_attend.compiler.prepare import prepare_model
from tvmc_attend.compiler.tuning.database import TuningDatabase, measured_secs
from tvmc_attend.errors import UserError
from tvmc_attend.targets import Board
from tvmc_attend.threads import tvm_threads
from tvmc_attend.timestamps import utc_timestamp

from .report import machine_info
from .variants import SETTLE_S, onnx_file
from .versus_onnxruntime import Versus, onnxruntime_layers

Progress = Callable[[str], None]
BUILTIN_PREFIX = "vm.builtin."


@dataclass
class CallTimes:
    """Per callee name, over whole-model runs: calls per run and median us per call."""

    calls: dict[str, int] = field(default_factory=dict)
    us_per_call: dict[str, float] = field(default_factory=dict)

    def total_us(self, names: Any = None) -> float:
        names = self.calls if names is None else names
        return sum(self.calls[n] * self.us_per_call[n] for n in names)


class CallTimer:
    """A Relax VM for ``executable`` whose ``main`` can run plain, with a no-op instrument or
    with every call timed (``perf_counter`` before and after each call)."""

    def __init__(self, executable: Any, x: np.ndarray) -> None:
        import tvm
        from tvm import relax

        self.vm = relax.VirtualMachine(executable, tvm.cpu())
        self.data = tvm.runtime.tensor(x)
        self.vm["main"](self.data)  # first-run costs (page faults, pool start) are nobody's
        self._started: dict[str, float] = {}
        self._run: list[tuple[str, float]] = []  # (callee, seconds) of the current run
        self._samples: dict[str, list[float]] = {}
        self._calls: dict[str, int] = {}
        self._order: list[str] = []  # the callees of one run, in call order
        self._at: list[list[float]] = []  # per position in that order: seconds, per run
        self._out_hw: dict[int, tuple[int, int]] = {}  # position -> a 4/5-d output's (H, W)

    def _timing(self, _func: Any, name: str, before_run: bool, _ret: Any, *_args: Any) -> int:
        now = time.perf_counter()
        if before_run:
            self._started[name] = now
        else:
            self._run.append((name, now - self._started[name]))
        return 0  # VMInstrumentReturnKind.NO_OP: run the call

    def _shapes(self, _func: Any, name: str, before_run: bool, _ret: Any, *args: Any) -> int:
        """Record each kernel's output (its last argument: destination passing) height and
        width, (1, 1) for a 2-d one; an untimed run (reading shapes costs more than the
        smaller kernels)."""
        if not before_run:
            shape = getattr(args[-1], "shape", ()) if args else ()
            if not name.startswith(BUILTIN_PREFIX) and len(shape) in (2, 4, 5):
                self._out_hw[len(self._run)] = \
                    (1, 1) if len(shape) == 2 else (int(shape[2]), int(shape[3]))
            self._run.append((name, 0.0))
        return 0

    @staticmethod
    def _no_op(*_args: Any) -> int:
        return 0

    def run_ms(self, instrument: str | None = None) -> float:
        """One whole-model run's wall time in ms; ``instrument``: None, "no-op" or "timing"."""
        chosen = {None: None, "no-op": self._no_op, "timing": self._timing}[instrument]
        self.vm.set_instrument(chosen)
        self._run.clear()
        start = time.perf_counter()
        self.vm["main"](self.data)
        elapsed = time.perf_counter() - start
        self.vm.set_instrument(None)
        if instrument == "timing":
            self._record_run()
        return 1e3 * elapsed

    def _record_run(self) -> None:
        per_name: dict[str, list[float]] = {}
        for name, secs in self._run:
            per_name.setdefault(name, []).append(secs)
        for name, durations in per_name.items():
            self._samples.setdefault(name, []).append(1e6 * sum(durations) / len(durations))
            self._calls[name] = len(durations)
        order = [name for name, _ in self._run]
        if not self._order:
            self._order, self._at = order, [[] for _ in order]
        if order == self._order:  # the VM runs a static model's calls in one order
            for samples, (_, secs) in zip(self._at, self._run, strict=True):
                samples.append(secs)

    def call_sequence(self) -> list[tuple[str, float, tuple[int, int] | None]]:
        """One run's calls in order: (callee, median us at that position, output (H, W) of
        a kernel writing a 4-d or blocked 5-d tensor, (1, 1) for a 2-d one)."""
        self.vm.set_instrument(self._shapes)
        self._run.clear()
        self.vm["main"](self.data)
        self.vm.set_instrument(None)
        return [(name, 1e6 * statistics.median(secs), self._out_hw.get(i))
                for i, (name, secs) in enumerate(zip(self._order, self._at, strict=True))]

    def call_times(self) -> CallTimes:
        """What the timing runs so far saw: calls per run and median us per call."""
        return CallTimes(calls=dict(self._calls),
                         us_per_call={n: statistics.median(v) for n, v in self._samples.items()})


def match_kernel(profiled: dict[str, Any], task_name: str) -> str | None:
    """The name a task's kernel runs under in the model: the task's name, or it with a suffix."""
    if task_name in profiled:
        return task_name
    found = [name for name in profiled if name.startswith(task_name)]
    return found[0] if len(found) == 1 else None


@dataclass
class InModelReport:
    model: str
    board: str
    database: str
    threads: int
    runs: int
    whole_ms: float  # plain runs, median
    no_op_ms: float  # with a no-op instrument, median
    timed_ms: float  # with the timing instrument, median
    calls: int  # VM calls per run (kernels and builtins)
    kernels_us: float  # sum over kernels of calls x us per call, inside the model
    builtins_us: float  # the same for the VM's builtins (allocation, shape checks)
    estimate_us: float  # the tune's estimate: calls x warm time of each task's best record
    rows: list[dict[str, Any]]  # per task: calls, warm us, in-model us, ratio
    versus: Versus | None = None  # ONNX Runtime node by node, when it can run the model
    date: str = field(default_factory=utc_timestamp)

    @property
    def instrument_us_per_call(self) -> float:
        return 1e3 * (self.no_op_ms - self.whole_ms) / self.calls if self.calls else 0.0

    def as_json(self) -> dict[str, Any]:
        return {"model": self.model, "target": self.board, "database": self.database,
                "threads": self.threads, "runs": self.runs, "whole_ms": self.whole_ms,
                "no_op_instrument_ms": self.no_op_ms, "timed_instrument_ms": self.timed_ms,
                "vm_calls": self.calls, "instrument_us_per_call": self.instrument_us_per_call,
                "kernels_in_model_us": self.kernels_us, "builtins_us": self.builtins_us,
                "tune_estimate_us": self.estimate_us, "rows": self.rows,
                "versus_onnxruntime": self.versus.as_json() if self.versus else None,
                "date": self.date, "machine": machine_info()}


def open_tuned(source: ModelSource, board: Board, log_dir: str | None,
               op: str) -> tuple[TuningDatabase, Any, Any]:
    """(database folder, prepared model, opened database) of what ``compile`` would apply to
    ``source`` on this host; the cheap checks first."""
    if board.is_remote:
        raise UserError(f"--op {op} measures on this host; use --target host")
    db_dir = TuningDatabase.to_apply(log_dir, board, source.name)
    if not db_dir.exists():
        raise UserError(f"no tuning database at {db_dir.path}; tune {source.name} first")
    db_dir.check_target(board, lowering_of(DEFAULT_LAYOUT))  # before the minute of import
    prepared = prepare_model(source, layout=DEFAULT_LAYOUT, board=board)
    return db_dir, prepared, db_dir.open(board, source.name, lowering=prepared.lowering)


def top_records(database: Any, tasks: list[Any], k: int) -> dict[str, list[Any]]:
    """Per task name: the database's ``k`` best records of its workload (a task the database
    has no workload for is left out)."""
    return {task.task_name: database.get_top_k(database.commit_workload(task.dispatched[0]), k)
            for task in tasks if database.has_workload(task.dispatched[0])}


def in_model_check(source: ModelSource, board: Board, log_dir: str | None = None,
                   runs: int = 30, seed: int = 0, progress: Progress = print) -> InModelReport:
    """Build ``source`` with its tuning database for this host and split its time (see the
    module docstring)."""
    db_dir, prepared, database = open_tuned(source, board, log_dir, "in-model")
    tasks = extract_tasks(prepared, board)
    best = top_records(database, tasks, 1)
    warm: dict[str, tuple[float, float]] = {}  # task -> (calls, warm us of its best record)
    for task in tasks:
        top = best.get(task.task_name)
        secs = measured_secs(top[0]) if top else None
        if secs:
            warm[task.task_name] = (float(task.weight), 1e6 * float(np.mean(secs)))
    progress(f"building {source.name} with {db_dir.path} ...")
    executable = build_scheduled(schedule_module(prepared.mod, board, database),
                                 board.tvm_target())
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(prepared.imported.input_shape).astype(np.float32)
    timer = CallTimer(executable, x)
    for _ in range(5):
        timer.run_ms()  # warm-up
    progress(f"{runs} rounds: plain, no-op instrument, timing instrument ...")
    plain, no_op, timed = [], [], []
    for _ in range(runs):
        plain.append(timer.run_ms())
        no_op.append(timer.run_ms("no-op"))
        timed.append(timer.run_ms("timing"))
    times = timer.call_times()
    versus = None
    with tempfile.TemporaryDirectory(prefix="tvmc-attend-in-model-") as work_dir:
        onnx_path = onnx_file(prepared.imported, x, work_dir)
        if onnx_path is not None:
            progress("ONNX Runtime node by node (its profiler) ...")
            time.sleep(SETTLE_S)  # TVM's pool stops spinning first
            layers, ort_ms = onnxruntime_layers(onnx_path, x, tvm_threads(), runs, work_dir)
            versus = Versus.of(timer.call_sequence(), layers, ort_ms)
    kernels = [n for n in times.calls if not n.startswith(BUILTIN_PREFIX)]
    rows = []
    for task, (calls, warm_us) in sorted(warm.items(), key=lambda kv: -kv[1][0] * kv[1][1]):
        name = match_kernel(times.us_per_call, task)
        in_model = times.us_per_call[name] if name else None
        rows.append({"task": task, "calls": calls, "warm_us": warm_us, "in_model_us": in_model,
                     "ratio": in_model / warm_us if in_model else None})
    return InModelReport(
        model=source.name, board=board.name, database=db_dir.path, threads=tvm_threads(),
        runs=runs, whole_ms=statistics.median(plain), no_op_ms=statistics.median(no_op),
        timed_ms=statistics.median(timed), calls=sum(times.calls.values()),
        kernels_us=times.total_us(kernels),
        builtins_us=times.total_us([n for n in times.calls if n.startswith(BUILTIN_PREFIX)]),
        estimate_us=sum(c * w for c, w in warm.values()), rows=rows, versus=versus)
