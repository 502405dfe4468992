"""Operator-level benchmark of the DC-AC block: stock Relax fusion vs our fused operator.

For one DC-AC block at each AttendNeXt stage's shape, four variants are built on this host:
stock (the block as the frontend imports it, fused by Relax's FuseOps) and fused (our
operator), each untuned and tuned with the same trial budget (each into its own temporary
database). All variants are first checked against PyTorch, then timed round-robin (every
variant of every shape once per round), so that machine noise hits all of them alike.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from tvmc_attend.errors import UserError
from tvmc_attend.targets import Board

from .benchmark import Variant
from .build import build_executable
from .database import TuningDatabase
from .frontend import ModelSource
from .inputs import random_input
from .interleave import check_and_time
from .pipeline import PreparedModel, prepare_model
from .tune import TuneOptions, tune_prepared

# (channels, map size) of the DC-AC block of each AttendNeXt stage at 224x224.
STAGE_SHAPES: tuple[tuple[int, int], ...] = ((40, 56), (84, 28), (176, 14), (372, 7))
VARIANTS = ("stock_untuned", "fused_untuned", "stock_tuned", "fused_tuned")
# Relative error allowed against PyTorch (float32, different summation orders).
TOLERANCE = 1e-5


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
    source = ModelSource(model=path)
    stock = prepare_model(source, fuse_dcac=False)
    fused = prepare_model(source, fuse_dcac=True)
    if fused.fused_dcac != 1:
        raise RuntimeError(f"the DC-AC rewrite matched {fused.fused_dcac} blocks in one block")
    return DCACBlock(channels, size, module, x, reference, stock, fused)


def _vm_variant(key: str, executable: Any, number: int) -> Variant:
    """A benchmark variant running ``executable`` in a local Relax VM; one timed sample is the
    mean of ``number`` back-to-back runs (the block takes well under a millisecond)."""
    import tvm
    from tvm import relax

    dev = tvm.cpu()
    vm = relax.VirtualMachine(executable, dev)

    def run(x: np.ndarray) -> np.ndarray:
        return vm["main"](tvm.runtime.tensor(x, dev)).numpy()

    def time_runs(x: np.ndarray, n: int) -> list[float]:
        timer = vm.time_evaluator("main", dev, number=number, repeat=n)
        return [1e3 * t for t in timer(tvm.runtime.tensor(x, dev)).results]

    return Variant(key, run, time_runs)


def _tune(prepared: PreparedModel, board: Board, trials: int, log_dir: str) -> tuple[Any, Any]:
    result = tune_prepared(prepared, board, TuneOptions(trials=trials, log_dir=log_dir))
    name = prepared.imported.name
    return TuningDatabase.for_model(log_dir, board, name).open(board, name), result


def _build_variants(block: DCACBlock, board: Board, trials: int, number: int, work: str,
                    progress: Callable[[str], None]) -> tuple[list[Variant], dict[str, Any]]:
    from tvmc_attend.schedules import apply_default_schedules

    target = board.tvm_target()
    variants, tuning = [], {}
    for kind, prepared in (("stock", block.stock), ("fused", block.fused)):
        # The untuned build schedules the fused operator by default (a no-op for stock).
        untuned = build_executable(apply_default_schedules(prepared.mod, target), board)
        variants.append(_vm_variant(f"{kind}_untuned", untuned, number))
        progress(f"{block.channels}x{block.size}: tuning {kind} ({trials} trials)")
        database, result = _tune(prepared, board, trials, os.path.join(work, kind))
        tuning[kind] = {"tasks": len(result.tasks), "trials": result.new_trials,
                        "seconds": round(result.seconds, 1)}
        variants.append(_vm_variant(f"{kind}_tuned", build_executable(
            apply_default_schedules(prepared.mod, target, database), board, database), number))
    return variants, tuning


def _row(block: DCACBlock, variants: list[Variant], tuning: dict[str, Any],
         trials: int) -> dict[str, Any]:
    by_key = {v.key: v for v in variants}
    median = {k: float(np.median(by_key[k].times_ms)) for k in VARIANTS}
    return {
        "channels": block.channels,
        "size": block.size,
        "shape": [1, block.channels, block.size, block.size],
        "trials": trials,
        "median_ms": median,
        "p10_ms": {k: float(np.percentile(by_key[k].times_ms, 10)) for k in VARIANTS},
        "p90_ms": {k: float(np.percentile(by_key[k].times_ms, 90)) for k in VARIANTS},
        "max_rel_err": {k: by_key[k].max_rel_err for k in VARIANTS},
        "numerics_ok": all(by_key[k].max_rel_err <= TOLERANCE for k in VARIANTS),
        "speedup_tuned": median["stock_tuned"] / median["fused_tuned"],
        "speedup_untuned": median["stock_untuned"] / median["fused_untuned"],
        "fused_tuning_gain": median["fused_untuned"] / median["fused_tuned"],
        "tuning": tuning,
    }


def benchmark_dcac(board: Board, trials: int, repeat: int,
                   shapes: tuple[tuple[int, int], ...] = STAGE_SHAPES, number: int = 20,
                   seed: int = 0, work_dir: str | None = None,
                   progress: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Time one DC-AC block per shape (channels, map size): stock vs fused, untuned and tuned
    with ``trials`` trials each; ``repeat`` interleaved samples of ``number`` runs per variant.

    Returns one row per shape with the median latencies (ms), their ratios and each variant's
    relative error against PyTorch. Measures on this host only.
    """
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
    check_and_time(items, rounds=repeat, runs_per_round=1, progress=progress)
    return [_row(block, variants, tuning, trials) for block, variants, tuning in blocks]
