"""`benchmark --op dcac`: stock Relax fusion vs our fused DC-AC operator, block and model.

Block level: for one DC-AC block at each AttendNeXt stage's shape, four variants are built on
this host: stock (the block as the frontend imports it, fused by Relax's FuseOps) and fused
(our operator), each untuned and tuned with the same trial budget (each into its own temporary
database). End to end: the whole model built both ways, untuned and with its (target, model)
tuning database (tune it with and without ``--no-fuse-dcac`` so that both have records). All
variants are first checked against PyTorch, then timed round-robin (every variant once per
round), so that machine noise hits all of them alike.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from tvmc_attend.compiler.build import build_executable
from tvmc_attend.compiler.frontend import ModelSource
from tvmc_attend.compiler.inputs import random_input
from tvmc_attend.compiler.lowering import extract_tasks
from tvmc_attend.compiler.pipeline import open_database
from tvmc_attend.compiler.prepare import PreparedModel, prepare_model, with_dcac_fused
from tvmc_attend.compiler.tuning.database import TuningDatabase, count_records
from tvmc_attend.compiler.tuning.tune import TuneOptions, tune_prepared
from tvmc_attend.compiler.verify import DEFAULT_TOLERANCE
from tvmc_attend.device.choice import LOCAL
from tvmc_attend.errors import UserError
from tvmc_attend.targets import Board

from .report import RunInfo, machine_info
from .variants import Variant, check_and_time, vm_variant

# (channels, map size) of the DC-AC block of each AttendNeXt stage at 224x224.
STAGE_SHAPES: tuple[tuple[int, int], ...] = ((40, 56), (84, 28), (176, 14), (372, 7))
VARIANTS = ("stock_untuned", "fused_untuned", "stock_tuned", "fused_tuned")


@dataclass
class DCACBlock:
    """One DC-AC block: its PyTorch module and reference output, and both Relax versions."""

    channels: int
    size: int
    module: Any  # torch.nn.Module
    x: np.ndarray
    reference: np.ndarray
    stock: PreparedModel
    fused: PreparedModel


def dcac_block(channels: int, size: int, seed: int, work: str) -> DCACBlock:
    """Build the block with the zoo's deterministic initialisation and import it through the
    regular frontend (a saved torch.export program), with and without the DC-AC rewrite."""
    import torch

    from tvmc_attend.models import DCAC, DCACConfig, init_weights

    shape = (1, channels, size, size)
    torch.manual_seed(seed)
    module = init_weights(DCAC(DCACConfig(channels=channels, input_size=size)), shape, seed)
    x = random_input(shape, seed=seed)
    with torch.no_grad():
        reference = module(torch.from_numpy(x)).numpy()
        path = os.path.join(work, f"dcac_c{channels}_{size}x{size}.pt2")
        torch.export.save(torch.export.export(module, (torch.from_numpy(x),)), path)
    stock = prepare_model(ModelSource(model=path), fuse_dcac=False)
    fused = with_dcac_fused(stock)
    if fused.fused_dcac != 1:
        raise RuntimeError(f"the DC-AC rewrite matched {fused.fused_dcac} blocks in one block")
    return DCACBlock(channels, size, module, x, reference, stock, fused)


def _tune(prepared: PreparedModel, board: Board, trials: int, log_dir: str) -> tuple[Any, Any]:
    result = tune_prepared(prepared, board, TuneOptions(trials=trials, log_dir=log_dir))
    name = prepared.imported.name
    return TuningDatabase.for_model(log_dir, board, name).open(board, name), result


def _build_variants(block: DCACBlock, board: Board, trials: int, number: int, work: str,
                    progress: Callable[[str], None]) -> tuple[list[Variant], dict[str, Any]]:
    variants, tuning = [], {}
    for kind, prepared in (("stock", block.stock), ("fused", block.fused)):
        variants.append(vm_variant(f"{kind}_untuned", build_executable(prepared.mod, board),
                                   number))
        progress(f"{block.channels}x{block.size}: tuning {kind} ({trials} trials)")
        database, result = _tune(prepared, board, trials, os.path.join(work, kind))
        tuning[kind] = {"tasks": len(result.tasks), "trials": result.new_trials,
                        "seconds": round(result.seconds, 1)}
        variants.append(vm_variant(f"{kind}_tuned",
                                   build_executable(prepared.mod, board, database), number))
    return variants, tuning


def _ratios(variants: list[Variant]) -> dict[str, Any]:
    by_key = {v.key: v for v in variants}
    median = {k: float(np.median(by_key[k].times_ms)) for k in VARIANTS}
    return {
        "median_ms": median,
        "p10_ms": {k: float(np.percentile(by_key[k].times_ms, 10)) for k in VARIANTS},
        "p90_ms": {k: float(np.percentile(by_key[k].times_ms, 90)) for k in VARIANTS},
        "max_rel_err": {k: by_key[k].max_rel_err for k in VARIANTS},
        "numerics_ok": all(by_key[k].max_rel_err <= DEFAULT_TOLERANCE for k in VARIANTS),
        "speedup_tuned": median["stock_tuned"] / median["fused_tuned"],
        "speedup_untuned": median["stock_untuned"] / median["fused_untuned"],
        "fused_tuning_gain": median["fused_untuned"] / median["fused_tuned"],
    }


def _row(block: DCACBlock, variants: list[Variant], tuning: dict[str, Any],
         trials: int) -> dict[str, Any]:
    return {"channels": block.channels, "size": block.size,
            "shape": [1, block.channels, block.size, block.size], "trials": trials,
            **_ratios(variants), "tuning": tuning}


@dataclass
class EndToEnd:
    """The whole model built with and without the DC-AC rewrite, ready to time."""

    model: str
    fused_dcac: int
    variants: list[Variant]
    x: np.ndarray
    reference: np.ndarray
    tasks: dict[str, int]  # tuning tasks of each build
    tuned_tasks: dict[str, int]  # of which the database has measured records
    notes: list[str]

    def row(self) -> dict[str, Any]:
        return {"model": self.model, "fused_dcac": self.fused_dcac,
                "input_shape": list(self.x.shape), "tasks": self.tasks,
                "tuned_tasks": self.tuned_tasks, "notes": self.notes, **_ratios(self.variants)}


def end_to_end(source: ModelSource, board: Board, log_dir: str | None,
               progress: Callable[[str], None] = print) -> EndToEnd:
    """Build ``source`` four ways (stock/fused x untuned/tuned with its database)."""
    import torch

    stock = prepare_model(source, fuse_dcac=False)
    fused = with_dcac_fused(stock)
    imported = stock.imported
    if imported.torch_module is None:
        raise UserError(f"{imported.name} has no PyTorch reference; use a zoo model")
    database, _info, notes = open_database(board, imported.name, log_dir, None, stock.lowering)
    variants, tasks, tuned_tasks = [], {}, {}
    for kind, prepared in (("stock", stock), ("fused", fused)):
        progress(f"{imported.name}: building {kind} (untuned and tuned)")
        variants.append(vm_variant(f"{kind}_untuned", build_executable(prepared.mod, board), 1))
        variants.append(vm_variant(f"{kind}_tuned",
                                   build_executable(prepared.mod, board, database), 1))
        mods = [task.dispatched[0] for task in extract_tasks(prepared, board)]
        tasks[kind] = len(mods)
        tuned_tasks[kind] = sum(1 for n in count_records(database, mods) if n) if database else 0
    x = random_input(imported.input_shape, imported.input_dtype, seed=source.seed)
    with torch.inference_mode():
        reference = imported.torch_module(torch.from_numpy(x)).numpy()
    return EndToEnd(imported.name, fused.fused_dcac, variants, x, reference, tasks,
                    tuned_tasks, notes)


@dataclass
class DCACReport:
    """What `benchmark --op dcac` timed in one run (on this host)."""

    run: RunInfo
    trials: int
    repeat: int
    blocks: list[dict[str, Any]]
    end_to_end: dict[str, Any] | None

    def as_json(self) -> dict[str, Any]:
        return {"kind": "op_benchmark", "op": "dcac", "target": self.run.board,
                "threads": self.run.threads, "date": self.run.date, "machine": machine_info(),
                "trials_per_block_variant": self.trials, "samples": self.repeat,
                "tolerance": DEFAULT_TOLERANCE, "blocks": self.blocks,
                "end_to_end": self.end_to_end}


def benchmark_dcac(board: Board, trials: int, repeat: int,
                   shapes: tuple[tuple[int, int], ...] = STAGE_SHAPES, number: int = 20,
                   seed: int = 0, model: ModelSource | None = None, log_dir: str | None = None,
                   work_dir: str | None = None,
                   progress: Callable[[str], None] = print) -> DCACReport:
    """Time one DC-AC block per shape (channels, map size): stock vs fused, untuned and tuned
    with ``trials`` trials each, ``repeat`` interleaved samples of ``number`` runs per variant;
    and, with ``model``, the whole model with and without the rewrite (its database from
    ``log_dir``), interleaved with the blocks. Measures on this host only."""
    if board.is_remote:
        raise UserError(f"the operator benchmark measures on this host; {board.name} is a board "
                        "(use --target host)")
    work = work_dir or tempfile.mkdtemp(prefix="tvmc-attend-opbench-")
    os.makedirs(work, exist_ok=True)
    items, blocks = [], []
    for channels, size in shapes:
        block = dcac_block(channels, size, seed, work)
        variants, tuning = _build_variants(block, board, trials, number, work, progress)
        blocks.append((block, variants, tuning))
        items.extend((v, block.x, block.reference) for v in variants)
    whole = end_to_end(model, board, log_dir, progress) if model else None
    if whole:
        items.extend((v, whole.x, whole.reference) for v in whole.variants)
    check_and_time(items, rounds=repeat, runs_per_round=1, progress=progress)
    return DCACReport(run=RunInfo.on(board, LOCAL), trials=trials, repeat=repeat,
                      blocks=[_row(block, variants, tuning, trials)
                              for block, variants, tuning in blocks],
                      end_to_end=whole.row() if whole else None)
