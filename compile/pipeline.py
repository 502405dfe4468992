"""The compile pipeline: model source -> Relax -> graph rewrites -> build -> bundle."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from tvmc_attend.errors import UserError
from tvmc_attend.targets import Board

from .build import build_scheduled, schedule_module
from .build_board import build_board
from .bundle import Bundle, TuningInfo, write_bundle
from .frontend import ModelSource
from .lowering import DEFAULT_LAYOUT
from .prepare import PreparedModel, prepare_model
from .runtime_libs import RuntimeLibs
from .tuning.database import TuningDatabase
from .verify import Verification, VerifyOptions, verify


def open_database(board: Board, model_name: str, log_dir: str | None,
                  database_dir: str | None, lowering: str,
                  ) -> tuple[Any, TuningInfo, list[str]]:
    """The tuning database to build with, how it is recorded, and warnings for the user.

    An explicit ``database_dir`` must exist and match the target and ``lowering``; the
    default one (``<log_dir>/<target>/<model>``) is used when present and matching, else the
    build is untuned.
    """
    warnings: list[str] = []
    if database_dir:
        db_dir = TuningDatabase.named(database_dir, board, lowering)
    else:
        db_dir = TuningDatabase.to_apply(log_dir, board, model_name)
    if not db_dir.exists():
        warnings.append(f"no tuning database at {db_dir.path}: building untuned (run "
                        f"`tvmc-attend tune --model {model_name} --target {board.name}`)")
        return None, TuningInfo(), warnings
    try:
        info = db_dir.check_target(board, lowering)
    except UserError as err:
        # The default database was tuned on another machine (e.g. a committed host database
        # and a different CPU), or for tasks lowered otherwise: build untuned.
        warnings.append(f"{err}; building untuned")
        return None, TuningInfo(), warnings
    database = db_dir.open(board, model_name, lowering=lowering)
    records = len(database)
    if info.emulated:
        warnings.append(f"{db_dir.path} was tuned on an emulated board: its schedules were "
                        "chosen by emulated timings; retune on a real "
                        f"{board.name} for deployment")
    extra = {"devices": info.devices, "lowering": info.lowering,
             "measured_by": info.measured_by, "origin": info.describe_origin()}
    if info.cpu_class:
        extra["cpu_class"] = info.cpu_class
    if info.counted and info.core_model:
        extra["counted_on"] = info.core_model.get("qemu_cpu")
    tuning = TuningInfo(tuned=records > 0, database=db_dir.path, records=records,
                        emulated=info.emulated, extra=extra)
    return database, tuning, warnings


def compile_bundle(source: ModelSource, board: Board, out_dir: str, untuned: bool = False,
                   log_dir: str | None = None, database_dir: str | None = None,
                   fuse_dcac: bool = True, layout: str = DEFAULT_LAYOUT,
                   verify: VerifyOptions | None = None,
                   warn: Callable[[str], None] = print,
                   runtime: RuntimeLibs | None = None) -> Bundle:
    """Compile ``source`` for ``board`` into the bundle ``out_dir`` (carrying ``runtime``,
    the TVM runtime libraries for the board; None: it uses the TVM installed where it runs).

    The (target, model) tuning database is applied unless ``untuned`` (``warn`` gets why a
    database was skipped or is suspect); DC-AC blocks are fused unless ``fuse_dcac`` is False;
    convolutions compute in ``layout``; the bundle is checked against the model's framework
    unless ``verify`` is None. The arguments were checked before TVM was imported
    (``tvmc_attend.api.compile``); the output directory is checked again when it is written.
    """
    board = build_board(board, source.name, log_dir, database_dir, layout, untuned, warn)
    prepared = prepare_model(source, fuse_dcac=fuse_dcac, layout=layout, board=board)
    return compile_prepared(prepared, board, out_dir, untuned=untuned, log_dir=log_dir,
                            database_dir=database_dir, verify=verify, warn=warn,
                            runtime=runtime)


def compile_prepared(prepared: PreparedModel, board: Board, out_dir: str,
                     untuned: bool = False, log_dir: str | None = None,
                     database_dir: str | None = None, verify: VerifyOptions | None = None,
                     warn: Callable[[str], None] = print,
                     runtime: RuntimeLibs | None = None) -> Bundle:
    """Build an already prepared model into a bundle (importing and folding a model takes up
    to a minute: callers that build one model several ways prepare it once)."""
    database, tuning = None, TuningInfo()
    if not untuned:
        database, tuning, warnings = open_database(board, prepared.imported.name, log_dir,
                                                   database_dir, prepared.lowering)
        for message in warnings:
            warn(message)
    scheduled = schedule_module(prepared.mod, board, database)
    executable = build_scheduled(scheduled, board.tvm_target())
    check = None if verify is None else _bundle_check(prepared, board, scheduled, tuning,
                                                      verify)
    return write_bundle(out_dir, prepared.imported, board, executable, tuning=tuning,
                        fused_dcac=prepared.fused_dcac, layout=prepared.layout.as_dict(),
                        check=check, runtime=runtime)


def _bundle_check(prepared: PreparedModel, board: Board, scheduled: Any, tuning: TuningInfo,
                  options: VerifyOptions) -> Callable[[str], Verification | None]:
    """The check ``write_bundle`` runs on the staged bundle: the shipped loader runs it here
    (host) or on the board's RPC session; a board without one is checked on its host twin
    (the same graph and schedules, compiled for this host)."""

    def check(bundle_dir: str) -> Verification | None:
        from tvmc_attend import attend_runtime
        from tvmc_attend.targets import get_board

        if board.is_remote and options.session is None:
            run, where = _vm_runner(build_scheduled(scheduled, get_board("host").tvm_target())), \
                f"host twin of {board.name}"
        else:
            cpus = os.sched_getaffinity(0)
            run = attend_runtime.load(bundle_dir, remote=options.session)
            os.sched_setaffinity(0, cpus)  # TVM's thread pool pins the caller to one core
            where = options.device
        result = verify(run, prepared.imported, where, options.tolerance)
        if result is not None and not result.passed:
            raise UserError(_mismatch(prepared, board, tuning, result))
        return result

    return check


def _vm_runner(executable: Any) -> Callable[[Any], Any]:
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(executable, tvm.cpu())
    return lambda x: vm["main"](tvm.runtime.tensor(x)).numpy()


def _own_distance(result: Verification) -> str:
    if result.float64_err is None:
        return ""
    return f"; {result.float64_err:.2e} from the float64 answer"


def _mismatch(prepared: PreparedModel, board: Board, tuning: TuningInfo,
              result: Verification) -> str:
    tries = []
    if prepared.fused_dcac:
        tries.append("--no-fuse-dcac")
    if tuning.tuned:
        tries.append(f"--untuned (or another database than {tuning.database})")
    tries.append("--tolerance to accept it, --no-verify to skip the check")
    return (f"the compiled {prepared.imported.name} for {board.name} differs from "
            f"{result.reference} on a seeded input (max relative error "
            f"{result.max_rel_err:.2e} > {result.bound:.2g}{_own_distance(result)}, run on "
            f"{result.where}); no "
            f"bundle was written. Try {', '.join(tries)}")
