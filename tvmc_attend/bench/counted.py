"""Counted-cost evidence: untuned vs tuned-by-counting on a board's core model, and how well the
counted cost ranks schedules where real timings can be had (this host).

``count_model``: the whole model (both bundles counted on the emulated core, one inference
each) and every task (the untuned kernel counted here; the tuned one's count is its best record
in the counted database). ``rank_check``: conv candidates sampled from MetaSchedule's design
space, built once for this host's AVX2 (which qemu 7.2 emulates; AVX-512 it does not), timed
natively on one thread and counted under ``qemu-x86_64`` with this host's cache geometry;
Spearman's rank correlation per task and pooled. Counted costs are reported in Mcycles of the
core model, never as a latency.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tvmc_attend.compiler.frontend import ModelSource
from tvmc_attend.compiler.lowering import DEFAULT_LAYOUT, extract_tasks
from tvmc_attend.compiler.pipeline import compile_prepared
from tvmc_attend.compiler.prepare import PreparedModel, prepare_model
from tvmc_attend.compiler.tuning.database import TuningDatabase
from tvmc_attend.device.counting import CostModel, CountingCore, Counts, GuestSpec
from tvmc_attend.device.counting.cost import roofline
from tvmc_attend.errors import UserError
from tvmc_attend.targets import Board, CacheLevel, CoreModel
from tvmc_attend.timestamps import utc_timestamp

from .rank_stats import EXPOSED_GRID, calibrate, spearman, top1_regret
from .report import machine_info

Progress = Callable[[str], None]


def _mcycles(counts: Counts, cost: CostModel) -> float:
    return cost.cycles(counts) / 1e6


def _task_args(func: Any) -> list[tuple[list[int], str]]:
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo

    return [(list(info.shape), str(info.dtype)) for info in ArgInfo.from_prim_func(func)]


def _export(func_mod: Any, board: Board, path: str) -> str:
    """Build a scheduled kernel as the tuning builder does, and export it for ``board``."""
    import tvm
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock
    from tvm.support import cc

    func_mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(func_mod)
    lib = tvm.compile(func_mod, target=board.tvm_target())
    if board.cross_compiler:
        lib.export_library(path, fcompile=cc.cross_compiler(board.cross_compiler))
    else:
        lib.export_library(path)
    return path


# ---------------------------------------------------------------------------------------------
# untuned vs tuned by counting, on a board's core model


@dataclass
class CountedModelReport:
    model: str
    board: str
    qemu_cpu: str
    database: str
    records: int
    whole: dict[str, dict[str, Any]]  # "untuned" / "tuned": counts and Mcycles of one inference
    tasks: list[dict[str, Any]]
    date: str = field(default_factory=utc_timestamp)

    @property
    def ratio(self) -> float:
        return self.whole["untuned"]["mcycles"] / self.whole["tuned"]["mcycles"]

    def as_json(self) -> dict[str, Any]:
        return {"model": self.model, "target": self.board, "counted_on": self.qemu_cpu,
                "measured_by": "counted", "database": self.database, "records": self.records,
                "whole_model": self.whole, "untuned_over_tuned": self.ratio,
                "tasks": self.tasks, "date": self.date, "machine": machine_info(),
                "note": "counted cost in Mcycles of the board's core model: a rank of the work "
                        "done, not a latency"}


def count_model(source: ModelSource, board: Board, log_dir: str | None = None,
                layout: str = DEFAULT_LAYOUT, work_dir: str | None = None,
                progress: Progress = print) -> CountedModelReport:
    """Count ``source`` untuned and tuned (its (board, model) database, which must have been
    tuned by counting) on an emulated core of ``board``: whole model and per task."""
    if board.core_model is None:
        CountingCore.for_board(board)  # the one message that names the boards with one
    db_dir = TuningDatabase.to_apply(log_dir, board, source.name)
    if not db_dir.exists() or not db_dir.read_info().counted:
        raise UserError(f"{db_dir.path} is not a database tuned by counting: run `tvmc-attend "
                        f"tune --model {source.name} --target {board.name} --counted` first")
    counting = CountingCore.for_board(board)
    cost = counting.cost
    progress(f"importing {source.name} ...")
    prepared = prepare_model(source, layout=layout, board=board)
    with tempfile.TemporaryDirectory(prefix="tvmc-attend-counted-", dir=work_dir) as work:
        bundles = {}
        for variant in ("untuned", "tuned"):
            progress(f"compiling the {variant} bundle for {board.name} ...")
            bundles[variant] = compile_prepared(
                prepared, board, os.path.join(work, variant), untuned=variant == "untuned",
                log_dir=log_dir, warn=lambda m: progress(f"warning: {m}"))
        records = bundles["tuned"].metadata.tuning.records
        with counting as counter:
            whole = {}
            for variant, bundle in bundles.items():
                progress(f"counting one {variant} inference on an emulated {board.qemu_cpu} "
                         "(the untuned one takes minutes) ...")
                counts = counter.count_bundle(bundle.path)
                whole[variant] = {**counts.as_json(), **cost.cost(counts).as_json(),
                                  "mcycles": _mcycles(counts, cost)}
            tasks = _count_tasks(prepared, board, db_dir, counter, work, progress)
    return CountedModelReport(model=source.name, board=board.name, qemu_cpu=board.qemu_cpu,
                              database=db_dir.path, records=records, whole=whole, tasks=tasks)


def _count_tasks(prepared: PreparedModel, board: Board, db_dir: TuningDatabase,
                 counter: CountingCore, work: str, progress: Progress) -> list[dict[str, Any]]:
    """Per task: the untuned kernel counted now, the tuned one's best counted record."""
    import tvm

    from tvmc_attend.compiler.tuning.counting_runner import CYCLE_SECS
    from tvmc_attend.schedules.default import default_schedule

    database = db_dir.open(board, prepared.imported.name, lowering=prepared.lowering)
    rows = []
    tasks = extract_tasks(prepared, board)
    for i, task in enumerate(tasks):
        func_mod = task.dispatched[0]
        progress(f"task {i + 1}/{len(tasks)}: {task.task_name}")
        func = func_mod["main"]
        untuned = tvm.IRModule({"main": default_schedule(func, board.tvm_target())})
        row: dict[str, Any] = {"task": task.task_name, "calls": float(task.weight)}
        try:
            path = _export(untuned, board, os.path.join(work, f"task{i}.so"))
            row["untuned_mcycles"] = _mcycles(counter.count(path, _task_args(func)),
                                              counter.cost)
        except Exception as err:  # noqa: BLE001  one task's failure is reported, not fatal
            row["untuned_error"] = str(err)[:300]
        best = None
        if database.has_workload(func_mod):
            top = database.get_top_k(database.commit_workload(func_mod), 1)
            if top and top[0].run_secs:
                best = float(top[0].run_secs[0]) / CYCLE_SECS / 1e6
        row["tuned_mcycles"] = best
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------
# does the counted cost rank schedules as this host's clock does?

HOST_AVX2 = Board(name="host-avx2", description="this host, compiled for AVX2 (haswell)",
                  target={"kind": "llvm", "mcpu": "haswell", "num-cores": 1})
# Cycles a miss costs at each level of this host: round figures for a recent x86 server core
# (L2 ~14, L3 ~50, DRAM ~350 cycles); the geometry is read from sysfs.
HOST_MISS_CYCLES = (14.0, 50.0, 350.0)
HOST_IPC = 3.0
# The share of a miss's latency this host's core leaves exposed, fitted by the rank check
# (`benchmark --op counted-vs-timed --model attendnext --trials 8`, 320 candidates, AMD EPYC
# Zen 4, 2026-12-06; docs/benchmarks.md "Counting that ranks like a clock").
HOST_EXPOSED_MISS = 0.15


def host_mca_cpu() -> str:
    """llvm-mca's model of this machine's CPU: LLVM's name for it if llvm-mca knows it (the
    code is compiled for AVX2, but it runs on this CPU's ports and latencies)."""
    from tvmc_attend.device.counting.throughput import known_cpus
    from tvmc_attend.targets.board import native_cpu

    cpu = native_cpu()
    if cpu not in known_cpus("x86_64"):
        raise UserError(f"llvm-mca has no model of this host's CPU ({cpu}); the rank check "
                        "needs one: run `make setup` for a newer LLVM")
    return cpu


def host_core_model() -> CoreModel:
    """This machine's data caches (sysfs) with the round miss costs above, and its CPU's
    llvm-mca model."""
    levels = []
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        kind = (index / "type").read_text().strip()
        if kind not in ("Data", "Unified"):
            continue
        size = (index / "size").read_text().strip()
        scale = {"K": 1024, "M": 1024 ** 2}.get(size[-1], 1)
        levels.append((int((index / "level").read_text()), int(size.rstrip("KM")) * scale,
                       int((index / "ways_of_associativity").read_text()),
                       int((index / "coherency_line_size").read_text())))
    levels.sort()
    if len(levels) < 2:
        raise UserError("this machine reports fewer than two data cache levels in sysfs; the "
                        "rank check needs its cache geometry")
    caches = tuple(CacheLevel(bytes=size, ways=ways, miss_cycles=miss)
                   for (_lvl, size, ways, _line), miss in zip(levels[:3], HOST_MISS_CYCLES,
                                                              strict=False))
    return CoreModel(ipc=HOST_IPC, line_bytes=levels[0][3], caches=caches,
                     source="this host's sysfs cache geometry; round miss costs",
                     mca_cpu=host_mca_cpu(), exposed_miss=HOST_EXPOSED_MISS)


TOLD_APART = 1.02  # a task's highest over lowest counted cost, below which it ranks nothing


@dataclass
class RankReport:
    model: str
    core_model: dict[str, Any]
    candidates: list[dict[str, Any]]
    per_task: dict[str, dict[str, float]]  # task -> spearman, regret, candidates
    pooled: float
    calibration: dict[str, float]
    host_mhz: float
    date: str = field(default_factory=utc_timestamp)

    def told_apart(self) -> list[dict[str, float]]:
        """Tasks whose candidates the cost tells apart (lowest to highest >= TOLD_APART);
        in the others every sampled schedule compiles to nearly the same code (layout
        copies), and any rank is the clock's noise."""
        return [t for t in self.per_task.values() if t["cost_spread"] >= TOLD_APART]

    def median_spearman(self, tasks: list[dict[str, float]] | None = None,
                        key: str = "spearman") -> float:
        """Median per task of the cost's Spearman (``key="clock_spearman"``: the clock's
        against its own second pass)."""
        rows = self.per_task.values() if tasks is None else tasks
        values = [t[key] for t in rows if t[key] == t[key]]
        return float(np.median(values)) if values else float("nan")

    def regret_within_10(self, tasks: list[dict[str, float]] | None = None,
                         key: str = "regret") -> float:
        """The share of tasks whose counted-best candidate (``key="clock_regret"``: the
        first pass's fastest) runs within 10 % of the fastest."""
        regrets = [t[key] for t in (self.per_task.values() if tasks is None else tasks)]
        return sum(r <= 0.10 for r in regrets) / len(regrets) if regrets else float("nan")

    def as_json(self) -> dict[str, Any]:
        return {"model": self.model, "target": HOST_AVX2.target, "threads": 1,
                "core_model": self.core_model, "per_task": self.per_task,
                "spearman_pooled": self.pooled,
                "spearman_median_per_task": self.median_spearman(),
                "tasks_with_regret_le_10pct": self.regret_within_10(),
                "tasks_told_apart": len(self.told_apart()),
                "spearman_median_told_apart": self.median_spearman(self.told_apart()),
                "regret_le_10pct_told_apart": self.regret_within_10(self.told_apart()),
                "clock_self_spearman_median": self.median_spearman(key="clock_spearman"),
                "clock_self_regret_le_10pct": self.regret_within_10(key="clock_regret"),
                "calibration": self.calibration, "host_mhz": self.host_mhz,
                "candidates": self.candidates, "date": self.date, "machine": machine_info()}


def host_mhz() -> float:
    """This CPU's clock as the kernel reports it (a VM's nominal clock: turbo not seen)."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("cpu MHz"):
            return float(line.split(":")[1])
    return float("nan")


def _time_ms(path: str, args: list[tuple[list[int], str]], rng: np.random.Generator) -> float:
    import tvm

    module = tvm.runtime.load_module(path)
    tensors = [tvm.runtime.tensor(rng.uniform(-1, 1, size=s).astype(d)) for s, d in args]
    timer = module.time_evaluator(module.entry_name, tvm.cpu(), number=1, repeat=7,
                                  min_repeat_ms=40)
    # the fastest repeat: what the kernel costs undisturbed (another job on the machine only
    # ever adds time, and tiny candidates were ranked by that noise under load)
    return float(min(timer(*tensors).results)) * 1e3


def rank_check(source: ModelSource, tasks: int | None = None, candidates: int = 16,
               seed: int = 0, work_dir: str | None = None,
               progress: Progress = print) -> RankReport:
    """Sample ``candidates`` schedules of each task of ``source`` (or of its ``tasks``
    costliest), time each natively (one thread) and count it on the emulated host core."""
    import tvm
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.analysis import estimate_tir_flops

    from tvmc_attend.schedules import register_rules

    tvm.get_global_func("runtime.config_threadpool")(0, 1)  # one core, as counted
    core = host_core_model()
    progress(f"importing {source.name} for {HOST_AVX2.description} ...")
    prepared = prepare_model(source, layout=DEFAULT_LAYOUT, board=HOST_AVX2)
    chosen = list(extract_tasks(prepared, HOST_AVX2))
    chosen.sort(key=lambda t: -float(estimate_tir_flops(t.dispatched[0])) * float(t.weight))
    chosen = chosen[:tasks] if tasks else chosen
    register_rules()
    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    built: list[tuple[str, list[tuple[list[int], str]]]] = []  # each row's kernel and args
    with tempfile.TemporaryDirectory(prefix="tvmc-attend-rank-", dir=work_dir) as work, \
            CountingCore(GuestSpec.for_host("max"), core) as counter:
        for t, task in enumerate(chosen):
            func_mod = task.dispatched[0]
            args = _task_args(func_mod["main"])
            context = ms.TuneContext(
                mod=func_mod, target=HOST_AVX2.tvm_target(), space_generator="post-order-apply",
                search_strategy=ms.search_strategy.ReplayTrace(), task_name=task.task_name,
                rand_state=seed + t, num_threads=1)
            spaces = context.space_generator.generate_design_space(context.mod)
            context.search_strategy.pre_tuning(
                max_trials=candidates, num_trials_per_iter=candidates, design_spaces=spaces,
                database=None, cost_model=None)
            sampled = context.search_strategy.generate_measure_candidates() or []
            progress(f"task {t + 1}/{len(chosen)} {task.task_name}: {len(sampled)} "
                     "candidates")
            for c, candidate in enumerate(sampled):
                try:
                    path = _export(candidate.sch.mod, HOST_AVX2,
                                   os.path.join(work, f"t{t}c{c}.so"))
                    timed = _time_ms(path, args, rng)
                    counts = counter.count(path, args)
                    terms = counter.cost.block_terms(counts)
                except Exception as err:  # noqa: BLE001  a candidate that fails is skipped
                    progress(f"  candidate {c} skipped: {str(err)[:120]}")
                    continue
                cost = roofline(terms, core.exposed_miss)
                built.append((path, args))
                rows.append({"task": task.task_name, "timed_ms": timed,
                             "counted_mcycles": cost.cycles / 1e6,
                             "compute_mcycles": cost.compute / 1e6,
                             "stall_mcycles": cost.memory / 1e6,
                             "instructions": counts.instructions,
                             "misses": list(counts.misses), "blocks": len(counts.blocks),
                             # what the calibration refits: the blocks whose misses could
                             # outweigh their compute at some exposed_miss it tries, one by one
                             "miss_terms": [[round(compute), round(miss)] for compute, miss in terms
                                            if miss * EXPOSED_GRID[-1] > compute],
                             "rest_cycles": sum(compute for compute, miss in terms
                                                if miss * EXPOSED_GRID[-1] <= compute)})
        # The same kernel loaded again can run far from its first time (up to 3.5x seen here:
        # where its buffers land); a second pass measures how well the clock agrees with
        # itself, the most any cost can agree with it, and the geometric mean of both is
        # what the cost is ranked against.
        progress(f"timing the {len(rows)} candidates again, each loaded afresh ...")
        for row, (path, args) in zip(rows, built, strict=True):
            passes = [row["timed_ms"], _time_ms(path, args, rng)]
            row["timed_ms_passes"] = passes
            row["timed_ms"] = float(np.sqrt(passes[0] * passes[1]))
    per_task = {}
    for name in dict.fromkeys(r["task"] for r in rows):
        mine = [r for r in rows if r["task"] == name]
        if len(mine) >= 3:
            timed = [r["timed_ms"] for r in mine]
            counted = [r["counted_mcycles"] for r in mine]
            first, second = zip(*(r["timed_ms_passes"] for r in mine), strict=True)
            per_task[name] = {"candidates": len(mine), "spearman": spearman(timed, counted),
                              "regret": top1_regret(timed, counted),
                              "clock_spearman": spearman(first, second),
                              "clock_regret": top1_regret(second, first),
                              "cost_spread": max(counted) / min(counted),
                              "timed_spread": max(timed) / min(timed)}
    if not rows:
        raise UserError(f"no candidate of {source.name} could be both timed and counted")
    mhz = host_mhz()
    calibration = calibrate([r["timed_ms"] * mhz * 1e3 for r in rows],
                            [r["miss_terms"] for r in rows], [r["rest_cycles"] for r in rows])
    pooled = spearman([r["timed_ms"] for r in rows], [r["counted_mcycles"] for r in rows])
    return RankReport(model=source.name, core_model=asdict(core), candidates=rows,
                      per_task=per_task, pooled=pooled, calibration=calibration.as_json(),
                      host_mhz=mhz)


# ---------------------------------------------------------------------------------------------
# estimated (counted) vs measured single-thread latency of a whole model on this host

@dataclass
class EstimateReport:
    model: str
    estimated_ms: float
    measured_ms: float
    compute_ms: float
    memory_ms: float
    host_mhz: float
    counts: dict[str, Any]
    records: int
    date: str = field(default_factory=utc_timestamp)

    @property
    def ratio(self) -> float:
        return self.estimated_ms / self.measured_ms

    def as_json(self) -> dict[str, Any]:
        return {"model": self.model, "target": "host-avx2", "threads": 1,
                "estimated_ms": self.estimated_ms, "measured_ms": self.measured_ms,
                "estimated_over_measured": self.ratio, "compute_ms": self.compute_ms,
                "memory_ms": self.memory_ms, "host_mhz": self.host_mhz, "counts": self.counts,
                "records": self.records, "date": self.date, "machine": machine_info(),
                "note": "estimated = counted cycles of one inference / the CPU's clock: an "
                        "estimate from the cost model, not a measurement"}


def latency_estimate(source: ModelSource, log_dir: str | None = None, repeat: int = 30,
                     work_dir: str | None = None, progress: Progress = print) -> EstimateReport:
    """Build ``source`` for this host's AVX2 class (its tuned database if there is one), count
    one inference under qemu-x86_64 on this host's core model, and time it here on one
    thread: the counted cost's cycles over the clock, beside the clock."""
    from tvmc_attend import attend_runtime
    from tvmc_attend.targets import get_board

    board = get_board("host-avx2")
    progress(f"importing {source.name} for {board.name} ...")
    prepared = prepare_model(source, layout=DEFAULT_LAYOUT, board=board)
    core = host_core_model()
    mhz = host_mhz()
    with tempfile.TemporaryDirectory(prefix="tvmc-attend-estimate-", dir=work_dir) as work:
        bundle = compile_prepared(prepared, board, os.path.join(work, "bundle"),
                                  log_dir=log_dir, warn=lambda m: progress(f"warning: {m}"))
        progress("timing one thread here ...")
        model = attend_runtime.load(bundle.path, threads=1)
        x = np.random.default_rng(0).uniform(-1, 1, model.input_shape).astype(model.input_dtype)
        measured = model.benchmark(x, repeat=repeat).median_ms
        del model
        progress("counting one inference under qemu-x86_64 ...")
        with CountingCore(GuestSpec.for_host("max"), core) as counter:
            counts = counter.count_bundle(bundle.path)
            cost = counter.cost.cost(counts)
    per_ms = mhz * 1e3
    return EstimateReport(model=source.name, estimated_ms=cost.cycles / per_ms,
                          measured_ms=measured, compute_ms=cost.compute / per_ms,
                          memory_ms=cost.memory / per_ms, host_mhz=mhz,
                          counts=counts.as_json(), records=bundle.metadata.tuning.records)
