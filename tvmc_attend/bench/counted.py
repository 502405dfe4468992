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
from tvmc_attend.device.counting import CountingCore, Counts, GuestSpec
from tvmc_attend.errors import UserError
from tvmc_attend.targets import Board, CacheLevel, CoreModel
from tvmc_attend.timestamps import utc_timestamp

from .report import machine_info

Progress = Callable[[str], None]


def _mcycles(counts: Counts, core: CoreModel) -> float:
    return counts.cycles(core) / 1e6


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
    core = counting.core
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
                whole[variant] = {**counts.as_json(core), "mcycles": _mcycles(counts, core)}
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
    core = counter.core
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
            row["untuned_mcycles"] = _mcycles(counter.count(path, _task_args(func)), core)
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


def host_core_model() -> CoreModel:
    """This machine's data caches (sysfs) with the round miss costs above."""
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
                     source="this host's sysfs cache geometry; round miss costs")


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rank correlation (no ties expected: continuous measurements)."""
    ra = np.argsort(np.argsort(np.asarray(a)))
    rb = np.argsort(np.argsort(np.asarray(b)))
    return float(np.corrcoef(ra, rb)[0, 1])


@dataclass
class RankReport:
    model: str
    core_model: dict[str, Any]
    candidates: list[dict[str, Any]]
    per_task: dict[str, float]
    pooled: float
    date: str = field(default_factory=utc_timestamp)

    def as_json(self) -> dict[str, Any]:
        return {"model": self.model, "target": HOST_AVX2.target, "threads": 1,
                "core_model": self.core_model, "spearman_per_task": self.per_task,
                "spearman_pooled": self.pooled, "candidates": self.candidates,
                "date": self.date, "machine": machine_info()}


def _time_ms(path: str, args: list[tuple[list[int], str]], rng: np.random.Generator) -> float:
    import tvm

    module = tvm.runtime.load_module(path)
    tensors = [tvm.runtime.tensor(rng.uniform(-1, 1, size=s).astype(d)) for s, d in args]
    timer = module.time_evaluator(module.entry_name, tvm.cpu(), number=1, repeat=7,
                                  min_repeat_ms=40)
    # the fastest repeat: what the kernel costs undisturbed (another job on the machine only
    # ever adds time, and tiny candidates were ranked by that noise under load)
    return float(min(timer(*tensors).results)) * 1e3


def rank_check(source: ModelSource, tasks: int = 4, candidates: int = 16, seed: int = 0,
               work_dir: str | None = None, progress: Progress = print) -> RankReport:
    """Sample ``candidates`` schedules of each of the ``tasks`` costliest conv tasks of
    ``source``, time each natively (one thread) and count it on the emulated host core."""
    import tvm
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.analysis import estimate_tir_flops

    from tvmc_attend.schedules import register_rules

    tvm.get_global_func("runtime.config_threadpool")(0, 1)  # one core, as counted
    core = host_core_model()
    progress(f"importing {source.name} for {HOST_AVX2.description} ...")
    prepared = prepare_model(source, layout=DEFAULT_LAYOUT, board=HOST_AVX2)
    convs = [t for t in extract_tasks(prepared, HOST_AVX2) if "conv" in t.task_name]
    convs.sort(key=lambda t: -float(estimate_tir_flops(t.dispatched[0])) * float(t.weight))
    if len(convs) < tasks:
        raise UserError(f"{source.name} has {len(convs)} conv tasks; pass --tasks "
                        f"{len(convs)} or fewer")
    register_rules()
    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="tvmc-attend-rank-", dir=work_dir) as work, \
            CountingCore(GuestSpec.for_host("max"), core) as counter:
        for t, task in enumerate(convs[:tasks]):
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
            progress(f"task {t + 1}/{tasks} {task.task_name}: {len(sampled)} candidates")
            for c, candidate in enumerate(sampled):
                try:
                    path = _export(candidate.sch.mod, HOST_AVX2,
                                   os.path.join(work, f"t{t}c{c}.so"))
                    timed = _time_ms(path, args, rng)
                    counts = counter.count(path, args)
                except Exception as err:  # noqa: BLE001  a candidate that fails is skipped
                    progress(f"  candidate {c} skipped: {str(err)[:120]}")
                    continue
                rows.append({"task": task.task_name, "timed_ms": timed,
                             "counted_mcycles": _mcycles(counts, core),
                             "instructions": counts.instructions,
                             "misses": list(counts.misses)})
    per_task = {}
    for name in dict.fromkeys(r["task"] for r in rows):
        mine = [r for r in rows if r["task"] == name]
        if len(mine) >= 3:
            per_task[name] = spearman([r["timed_ms"] for r in mine],
                                      [r["counted_mcycles"] for r in mine])
    pooled = spearman([r["timed_ms"] for r in rows], [r["counted_mcycles"] for r in rows])
    return RankReport(model=source.name, core_model=asdict(core), candidates=rows,
                      per_task=per_task, pooled=pooled)
