"""The Python API: each CLI verb as a function returning a typed result, as tvmc had
``tvmc.compile``, ``tvmc.tune`` and ``tvmc.run``. The CLI is a thin layer over it.

    import tvmc_attend
    result = tvmc_attend.tune("attendnext", target="host", trials=200)
    bundle = tvmc_attend.compile("attendnext", target="host", output="out/attendnext-host")
    y = tvmc_attend.run(bundle.path).output
    model = tvmc_attend.load(bundle.path)          # the bundle's own loader
    report = tvmc_attend.benchmark("attendnext")   # tuned vs untuned vs ORT vs PyTorch

Every error is a ``UserError`` with a one-line message that says what to do. Each function
checks its arguments, paths and databases first, and imports TVM (seconds) only after they
pass. Where a device is wanted, ``device=DeviceRequest(rpc_tracker=..., rpc_key=...)``,
``DeviceRequest(rpc_host=...)`` or ``DeviceRequest(emulate=True)`` names it; the default is
this host.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from tvmc_attend.compiler.lowering import DEFAULT_LAYOUT
from tvmc_attend.device.choice import DeviceRequest
from tvmc_attend.errors import UserError

if TYPE_CHECKING:
    from tvmc_attend.attend_runtime import LatencyStats, Model
    from tvmc_attend.bench.benchmark import BenchmarkReport
    from tvmc_attend.compiler.bundle import Bundle
    from tvmc_attend.compiler.frontend import ModelSource
    from tvmc_attend.compiler.runtime_libs import RuntimeLibs
    from tvmc_attend.compiler.tuning.progress import ProgressHook, TuneResult
    from tvmc_attend.targets import Board

HERE = DeviceRequest()  # this host


def _warn(message: str) -> None:
    import sys

    print(f"warning: {message}", file=sys.stderr, flush=True)


def model_source(model: str, input_size: int | None = None,
                 input_shape: str | tuple[int, ...] | None = None,
                 checkpoint: str | None = None, seed: int = 0) -> ModelSource:
    """The model a name (zoo model, .onnx or .pt2 file) and its options denote; checked
    without importing TVM (an unknown name, a missing file, a malformed shape)."""
    from tvmc_attend.compiler.frontend import ModelSource, parse_shape

    if isinstance(input_shape, str):
        input_shape = parse_shape(input_shape)
    source = ModelSource(model=model, input_size=input_size, checkpoint=checkpoint, seed=seed,
                         input_shape=tuple(input_shape) if input_shape else None)
    source.check()
    return source


def compile(model: str, target: str = "host", output: str | None = None, *,  # noqa: A001
            untuned: bool = False, log_dir: str | None = None, database: str | None = None,
            input_size: int | None = None, input_shape: str | tuple[int, ...] | None = None,
            checkpoint: str | None = None, seed: int = 0, fuse_dcac: bool = True,
            layout: str = DEFAULT_LAYOUT, verify: bool = True, tolerance: float | None = None,
            device: DeviceRequest = HERE, runtime: str = "bundled",
            warn: Callable[[str], None] = _warn) -> Bundle:
    """Compile ``model`` for ``target`` into the bundle directory ``output`` (`compile`).

    The build applies the tuning database of the target and model (``log_dir``, else
    ``./tuning_logs``, else the shipped one; ``database`` names one) unless ``untuned``. With
    ``verify``, the bundle is run on a seeded input and compared with the model's framework
    before it is written: on this host, on ``device``, or on a board build's host twin.
    ``runtime``: "bundled" puts the target's TVM runtime in the bundle (the board needs numpy
    only); "system" leaves it out (the board runs it on its installed TVM)."""
    from tvmc_attend.compiler.bundle import check_output_dir
    from tvmc_attend.targets import get_board

    if not output:
        raise UserError("no output directory: pass output= (the CLI's -o DIR)")
    board = get_board(target)
    check_output_dir(os.path.abspath(output))
    board.require_toolchain()
    if not verify and device.given:
        raise UserError("--rpc-*/--emulate only say where --verify runs; drop them with "
                        "--no-verify")
    source = model_source(model, input_size, input_shape, checkpoint, seed)
    libs = _runtime_libs(runtime, board)
    if database and not untuned:
        from tvmc_attend.compiler.lowering import lowering_of
        from tvmc_attend.compiler.tuning.database import TuningDatabase

        TuningDatabase.named(database, board, lowering_of(layout))

    from tvmc_attend.compiler.pipeline import compile_bundle
    from tvmc_attend.compiler.verify import VerifyOptions

    check = None
    if verify:
        chosen = device.choose(board)
        check = VerifyOptions(tolerance=tolerance)
        if not chosen.is_local:
            check.session = chosen.connect()
            check.device = chosen.description + (" (emulated)" if chosen.emulated else "")
    return compile_bundle(source, board, output, untuned=untuned, log_dir=log_dir,
                          database_dir=database, fuse_dcac=fuse_dcac, layout=layout,
                          verify=check, warn=warn, runtime=libs)


def _runtime_libs(runtime: str, board: Board) -> RuntimeLibs | None:
    """The runtime libraries and the `run` program a bundle for ``board`` carries (None for
    "system"), found, fetched or built before the compile starts."""
    import dataclasses

    from tvmc_attend.attend_runtime import RUNTIMES
    from tvmc_attend.compiler.runner import build_runner
    from tvmc_attend.compiler.runtime_libs import arch_of, runtime_libs

    if runtime not in RUNTIMES:
        raise UserError(f"unknown runtime '{runtime}'; use one of {', '.join(RUNTIMES)}")
    if runtime == "system":
        return None
    libs = runtime_libs(arch_of(board.triple))
    return dataclasses.replace(libs, runner=build_runner(libs, board.cross_compiler))


def tune(model: str, target: str = "host", *, trials: int = 200,
         trials_per_task: int | None = None, trials_per_round: int | None = None,
         log_dir: str | None = None, input_size: int | None = None,
         input_shape: str | tuple[int, ...] | None = None, checkpoint: str | None = None,
         seed: int = 0, fuse_dcac: bool = True, layout: str = DEFAULT_LAYOUT,
         counted: bool = False, wait: bool = True, warm_start: bool = True,
         warm_start_from: str | None = None, device: DeviceRequest = HERE,
         on_progress: ProgressHook | None = None) -> TuneResult:
    """Tune ``model``'s operators for ``target`` into its database (`tune`); a rerun resumes.

    ``device``: where candidates are measured (this host, or a board); ``counted``: no board,
    candidates are counted on an emulated core of it. ``wait``: wait for another tune of the
    same database (else a UserError names it)."""
    from tvmc_attend.compiler.tuning.database import TuningDatabase
    from tvmc_attend.targets import get_board

    for name, value in (("trials", trials), ("trials_per_task", trials_per_task),
                        ("trials_per_round", trials_per_round)):
        if value is not None and value < 1:
            raise UserError(f"{name} must be at least 1, not {value}")
    board = get_board(target)
    if counted:
        from tvmc_attend.device.choice import counting_device

        chosen = counting_device(board, device.rpc_tracker, device.rpc_host)
    else:
        chosen = device.choose(board)
    chosen.require_for(board, "tuning")
    source = model_source(model, input_size, input_shape, checkpoint, seed)
    if warm_start_from and not TuningDatabase.for_model(warm_start_from, board,
                                                        source.name).exists():
        raise UserError(f"no tuning database of {board.database_name}/{source.name} under "
                        f"{warm_start_from} to warm-start from; pass its tuning-log root "
                        "(the --log-dir it was tuned into)")
    # One tune per database: lock it before importing TVM and torch (seconds), so that
    # wait=False answers at once; tune_model takes the same lock again.
    with TuningDatabase.for_model(log_dir, board, source.name).lock(wait=wait):
        from tvmc_attend.compiler.tuning.tune import TuneOptions, tune_model

        options = TuneOptions(trials=trials, trials_per_task=trials_per_task,
                              trials_per_round=trials_per_round, seed=seed, log_dir=log_dir,
                              wait=wait, layout=layout, warm_start=warm_start,
                              seed_dir=warm_start_from)
        return tune_model(source, board, options, device=chosen, on_progress=on_progress,
                          fuse_dcac=fuse_dcac)


@dataclass
class RunResult:
    """One bundle run (`run`): the output of one inference and the latency of ``repeat``."""

    model: str
    target: str
    output: np.ndarray
    latency: LatencyStats
    threads: int  # TVM runtime threads
    where: str  # "local", or the device's address
    emulated: bool


def load(bundle: str, threads: int | None = None, remote: Any = None,
         runtime: str | None = None) -> Model:
    """The bundle's model, opened with its own loader (what runs on the board); ``runtime``
    as ``attend_runtime.load`` takes it (default: the bundle's own unless TVM is loaded)."""
    from tvmc_attend import attend_runtime

    try:
        return attend_runtime.load(bundle, remote=remote, threads=threads, runtime=runtime)
    except attend_runtime.BundleError as err:
        raise UserError(str(err)) from None


def run(bundle: str, input: str | np.ndarray | None = None, *,  # noqa: A002
        repeat: int = 10, threads: int | None = None,
        device: DeviceRequest = HERE) -> RunResult:
    """Run a bundle on ``input`` (an array, a .npy file or an image; default: random) here
    or on ``device``, and time ``repeat`` runs (`run`)."""
    from tvmc_attend import attend_runtime
    from tvmc_attend.compiler.bundle import Bundle
    from tvmc_attend.compiler.inputs import load_input
    from tvmc_attend.targets import get_board

    if repeat < 1:
        raise UserError(f"repeat must be at least 1, not {repeat}")
    meta = Bundle.open(bundle).metadata
    # Read the input before connecting, uploading and loading: a bad file fails at once.
    x = input if isinstance(input, np.ndarray) else \
        load_input(input, meta.input.shape, meta.input.dtype)
    try:
        x = attend_runtime.check_input(x, meta.input.shape, meta.input.dtype)
    except attend_runtime.BundleError as err:
        raise UserError(str(err)) from None
    chosen = device.choose(get_board(meta.target.name))
    session = chosen.connect()
    where = "local" if chosen.is_local else \
        f"{'emulated board, ' if chosen.emulated else ''}{chosen.description}"
    model = load(bundle, threads=threads, remote=session)
    try:
        y = model(x)
        stats = model.benchmark(x, repeat=repeat)
    except attend_runtime.BundleError as err:
        raise UserError(str(err)) from None
    return RunResult(meta.model, meta.target.name, y, stats, model.threads, where,
                     chosen.emulated)


def benchmark(model: str, target: str = "host", *, rounds: int = 10, runs_per_round: int = 5,
              log_dir: str | None = None, keep: str | None = None,
              input_size: int | None = None, input_shape: str | tuple[int, ...] | None = None,
              checkpoint: str | None = None, seed: int = 0, fuse_dcac: bool = True,
              layout: str = DEFAULT_LAYOUT, device: DeviceRequest = HERE,
              progress: Callable[[str], None] = _warn) -> BenchmarkReport:
    """Time the tuned and untuned TVM builds of ``model`` (on ``device``), ONNX Runtime and
    PyTorch (on this host) side by side, interleaved (`benchmark`)."""
    from tvmc_attend.targets import get_board

    if rounds < 1 or runs_per_round < 1:
        raise UserError("rounds and runs_per_round must be at least 1")
    board = get_board(target)
    source = model_source(model, input_size, input_shape, checkpoint, seed)
    chosen = device.choose(board)
    chosen.require_for(board, "the benchmark")

    from tvmc_attend.bench.benchmark import run_benchmark

    return run_benchmark(source, board, device=chosen, rounds=rounds,
                         runs_per_round=runs_per_round, log_dir=log_dir, work_dir=keep,
                         fuse_dcac=fuse_dcac, layout=layout, progress=progress)


__all__ = ["HERE", "DeviceRequest", "RunResult", "UserError", "benchmark", "compile", "load",
           "model_source", "run", "tune"]
