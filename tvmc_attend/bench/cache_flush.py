"""Which kernel time ranks schedules like the whole model does: warm, or with caches flushed?

MetaSchedule times each candidate kernel alone, repeatedly, on inputs already in cache
("warm"); in a whole model each kernel starts with caches holding the previous kernel's data.
``enable_cpu_cache_flush`` makes the runner flush the CPU caches before every repeat. This
check takes the ``candidates`` best records of the ``tasks`` costliest tasks of a tuned
database and measures each three ways:

- warm: the kernel alone, ``time_evaluator`` as MetaSchedule's runner calls it;
- flushed: the same with ``cache_flush_cpu_non_first_arg`` before every run (what
  ``enable_cpu_cache_flush`` does);
- in the model: the whole model built with the j-th record of every chosen task (the others at
  their best), each call timed by a VM instrument; a kernel's time per call, median over runs.

Spearman's rank correlation per task between in-model time and each kernel timing says which
ranks candidates closer to what the model will see.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tvmc_attend.compiler.build import build_scheduled, schedule_module
from tvmc_attend.compiler.frontend import ModelSource
from tvmc_attend.compiler.lowering import extract_tasks
from tvmc_attend.errors import UserError
from tvmc_attend.targets import Board
from tvmc_attend.threads import tvm_threads
from tvmc_attend.timestamps import utc_timestamp

from .counted import spearman
from .in_model import CallTimer, match_kernel, open_tuned, top_records
from .report import machine_info

Progress = Callable[[str], None]


@dataclass
class FlushReport:
    model: str
    board: str
    database: str
    threads: int
    rows: list[dict[str, Any]]  # one per (task, candidate): warm, flushed, in-model us
    per_task: dict[str, dict[str, float]]  # task -> {"warm": rho, "flushed": rho}
    date: str = field(default_factory=utc_timestamp)

    def mean_rho(self, kind: str) -> float:
        values = [v[kind] for v in self.per_task.values()]
        return float(np.mean(values)) if values else float("nan")

    def total_us(self, kind: str, candidate: int = 0) -> float:
        """Sum over tasks of calls x time of their ``candidate``-th record."""
        return sum(r["calls"] * r[kind] for r in self.rows if r["candidate"] == candidate)

    def as_json(self) -> dict[str, Any]:
        return {"model": self.model, "target": self.board, "database": self.database,
                "threads": self.threads, "spearman_per_task": self.per_task,
                "spearman_mean": {k: self.mean_rho(k) for k in ("warm", "flushed")},
                "best_records_total_us": {k: self.total_us(k)
                                          for k in ("warm", "flushed", "in_model")},
                "rows": self.rows, "date": self.date, "machine": machine_info()}


def _kernel_times(func_mod: Any, record: Any, target: Any, flush: bool, number: int,
                  repeat: int, rng: np.random.Generator) -> float:
    """Median us of the record's schedule of ``func_mod`` run alone (caches flushed before
    every run with ``flush``)."""
    import tvm
    from tvm import s_tir
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    sch = s_tir.Schedule(func_mod)
    record.trace.apply_to_schedule(sch, remove_postproc=False)
    # as MetaSchedule's builder does: a weight layout rewrite is done once, at build time
    scheduled = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(sch.mod)
    lib = tvm.compile(scheduled, target=target).mod
    args = [tvm.runtime.tensor(rng.uniform(-1, 1, size=[int(d) for d in a.shape])
                               .astype(str(a.dtype)))
            for a in ArgInfo.from_prim_func(func_mod["main"])]
    timer = lib.time_evaluator(lib.entry_name, tvm.cpu(), number=number, repeat=repeat,
                               f_preproc="cache_flush_cpu_non_first_arg" if flush else "")
    return float(np.median(timer(*args).results)) * 1e6


def flush_check(source: ModelSource, board: Board, log_dir: str | None = None,
                tasks: int = 6, candidates: int = 6, runs: int = 15, seed: int = 0,
                progress: Progress = print) -> FlushReport:
    """Warm and flushed kernel timings of the best ``candidates`` records of the ``tasks``
    costliest tasks, against their time inside the whole model (see the module docstring)."""
    from tvm.s_tir import meta_schedule as ms

    from tvmc_attend.schedules import register_rules

    db_dir, prepared, database = open_tuned(source, board, log_dir, "cache-flush")
    target = board.tvm_target()
    register_rules()
    extracted = extract_tasks(prepared, board)
    # each task's best records, read once: the chosen tasks' candidates, the others' best
    records = top_records(database, extracted, candidates)
    chosen = [(float(task.weight) * float(np.mean([float(s) for s in top[0].run_secs])),
               task, task.dispatched[0], top)
              for task in extracted if len(top := records.get(task.task_name, [])) >= 3]
    chosen.sort(key=lambda c: -c[0])
    chosen = chosen[:tasks]
    if not chosen:
        raise UserError(f"{db_dir.path} has no task with 3 or more records")
    chosen_names = {task.task_name for _, task, _, _ in chosen}
    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    for _, task, mod, top in chosen:
        progress(f"{task.task_name}: {len(top)} records, alone warm and flushed ...")
        for j, record in enumerate(top):
            rows.append({"task": task.task_name, "calls": float(task.weight), "candidate": j,
                         "warm": _kernel_times(mod, record, target, False, 20, 5, rng),
                         "flushed": _kernel_times(mod, record, target, True, 1, 50, rng)})
    x = rng.standard_normal(prepared.imported.input_shape).astype(np.float32)
    for j in range(candidates):
        memory = ms.database.MemoryDatabase()
        for task in extracted:  # every task at its best, the chosen ones at their j-th
            top = records.get(task.task_name)
            if not top:
                continue
            record = top[min(j, len(top) - 1)] if task.task_name in chosen_names else top[0]
            workload = memory.commit_workload(task.dispatched[0])
            memory.commit_tuning_record(ms.database.TuningRecord(
                record.trace, workload, record.run_secs, record.target, record.args_info))
        progress(f"whole model with every chosen task's record {j + 1} ...")
        executable = build_scheduled(schedule_module(prepared.mod, board, memory), target)
        timer = CallTimer(executable, x)
        for _ in range(runs):
            timer.run_ms("timing")
        in_model = timer.call_times().us_per_call
        for row in rows:
            if row["candidate"] == j:
                name = match_kernel(in_model, row["task"])
                row["in_model"] = in_model[name] if name else None
    per_task = {}
    for name in dict.fromkeys(r["task"] for r in rows):
        mine = [r for r in rows if r["task"] == name and r.get("in_model") is not None]
        if len(mine) >= 3:
            per_task[name] = {kind: spearman([r["in_model"] for r in mine],
                                             [r[kind] for r in mine])
                              for kind in ("warm", "flushed")}
    return FlushReport(model=source.name, board=board.name, database=db_dir.path,
                       threads=tvm_threads(), rows=rows, per_task=per_task)
