"""The checks behind `tvmc-attend doctor`: TVM, the cross compiler and the board, each with its
fix.

A failed prerequisite skips the checks that depend on it. The tiny module the remote checks run
(a vector add built for the board) is also what the device tests use.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from tvmc_attend.device.rpc import RemoteSpec
from tvmc_attend.errors import UserError
from tvmc_attend.targets import Board

VECTOR_ADD_LENGTH = 1024
# Round-trips a tiny IRModule through save_json: with a mismatched apache-tvm-ffi it segfaults,
# so it runs in a child process.
SAVE_JSON_PROBE = """
import tvm
from tvm import te
a = te.placeholder((4,), "float32", name="a")
b = te.compute((4,), lambda i: a[i] * 2.0, name="b")
mod = tvm.IRModule({"main": te.create_prim_func([a, b])})
tvm.ir.assert_structural_equal(tvm.ir.load_json(tvm.ir.save_json(mod)), mod)
"""


@dataclass
class Check:
    """One check's outcome, with what to do about a failure."""

    name: str
    ok: bool | None  # None: skipped
    detail: str
    fix: str = ""


class CheckFailed(Exception):
    """Raised inside a check: the check fails with this detail and fix."""

    def __init__(self, detail: str, fix: str = "") -> None:
        super().__init__(detail)
        self.detail, self.fix = detail, fix


def build_vector_add(board: Board, out_dir: Path) -> Path:
    """A float32 vector add ``vadd(a, b, c)`` built for the board and exported as a .so."""
    import tvm
    from tvm import te
    from tvm.support import cc

    a = te.placeholder((VECTOR_ADD_LENGTH,), "float32", name="a")
    b = te.placeholder((VECTOR_ADD_LENGTH,), "float32", name="b")
    c = te.compute(a.shape, lambda i: a[i] + b[i], name="c")
    func = te.create_prim_func([a, b, c]).with_attr("global_symbol", "vadd")
    lib = tvm.compile(tvm.IRModule({"vadd": func}), target=board.tvm_target())
    path = out_dir / f"vadd-{board.name}.so"
    fcompile = cc.cross_compiler(board.cross_compiler) if board.cross_compiler else None
    lib.export_library(str(path), fcompile=fcompile)
    return path


def run_vector_add(lib_path: Path, session: Any | None = None) -> float:
    """Run the vector add (on the RPC session, or here) and return its max abs error."""
    import numpy as np
    import tvm

    if session is None:
        module, dev = tvm.runtime.load_module(str(lib_path)), tvm.cpu()
    else:
        session.upload(str(lib_path))
        module, dev = session.load_module(lib_path.name), session.cpu()
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal(VECTOR_ADD_LENGTH).astype("float32") for _ in range(2))
    out = tvm.runtime.tensor(np.zeros(VECTOR_ADD_LENGTH, "float32"), dev)
    module["vadd"](tvm.runtime.tensor(a, dev), tvm.runtime.tensor(b, dev), out)
    return float(np.abs(out.numpy() - (a + b)).max())


def _check_versions() -> str:
    from tvmc_attend.device.rootfs import TVM_FFI_VERSION, TVM_VERSION

    pins = {"apache-tvm": TVM_VERSION, "apache-tvm-ffi": TVM_FFI_VERSION}
    found = {}
    for dist in pins:
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = "not installed"
    if found != pins:
        raise CheckFailed(
            f"apache-tvm {found['apache-tvm']}, apache-tvm-ffi {found['apache-tvm-ffi']}",
            f"pip install apache-tvm=={TVM_VERSION} apache-tvm-ffi=={TVM_FFI_VERSION}",
        )
    return f"apache-tvm {TVM_VERSION}, apache-tvm-ffi {TVM_FFI_VERSION}"


def _check_save_json() -> str:
    from tvmc_attend.device.rootfs import TVM_FFI_VERSION

    try:
        result = subprocess.run([sys.executable, "-c", SAVE_JSON_PROBE], capture_output=True,
                                text=True, timeout=300, check=False)
    except subprocess.TimeoutExpired as err:
        raise CheckFailed("tvm.ir.save_json did not finish in 300 s") from err
    if result.returncode != 0:
        how = (f"crashed (signal {-result.returncode})" if result.returncode < 0
               else (result.stderr.strip().splitlines() or ["failed"])[-1])
        raise CheckFailed(f"tvm.ir.save_json {how}",
                          f"pip install apache-tvm-ffi=={TVM_FFI_VERSION} (0.1.15.x segfaults)")
    return "a tiny IRModule round-trips through tvm.ir.save_json / load_json"


def _host_compiler() -> str | None:
    # What tvm.support.cc.get_cc() picks, without importing TVM.
    for name in filter(None, (os.environ.get("CXX"), os.environ.get("CC"),
                              "g++", "gcc", "clang++", "clang", "c++", "cc")):
        if shutil.which(name.split()[0]):
            return name
    return None


def _check_compiler(board: Board) -> str:
    if board.cross_compiler is None:
        found = _host_compiler()
        if found is None:
            raise CheckFailed("no C compiler to link modules", "sudo apt-get install g++")
        return f"host compiler {found}"
    path = shutil.which(board.cross_compiler)
    if path is None:
        package = board.cross_compiler.rsplit("-", 1)[0]  # aarch64-linux-gnu-gcc -> gcc-aarch64..
        raise CheckFailed(f"{board.cross_compiler} is not on PATH",
                          f"sudo apt-get install gcc-{package}")
    return f"{board.cross_compiler} ({path})"


def _check_tracker(spec: RemoteSpec) -> str:
    from tvmc_attend.device import tracker

    try:
        info = tracker.summary(spec.tracker_host, spec.tracker_port)
    except UserError as err:
        raise CheckFailed(f"cannot reach the tracker at {spec.tracker_address}",
                          "start one with `tvmc-attend tracker` or check --rpc-tracker") from err
    keys = ", ".join(tracker.registered_keys(info)) or "none"
    return f"tracker at {spec.tracker_address} answers (registered keys: {keys})"


def _check_key(spec: RemoteSpec, board: Board) -> str:
    from tvmc_attend.device import tracker

    info = tracker.summary(spec.tracker_host, spec.tracker_port)
    total, free = tracker.server_count(info, spec.key), tracker.free_count(info, spec.key)
    start_hint = (f"start one: `tvmc-attend device emulate --board {board.name} --tracker "
                  f"{spec.tracker_address} --key {spec.key}`, or `tvmc-attend device serve "
                  f"--tracker {spec.tracker_address} --key {spec.key}` on the board")
    if total == 0:
        keys = ", ".join(tracker.registered_keys(info)) or "none"
        raise CheckFailed(f"no device registered under key {spec.key} (registered: {keys})",
                          start_hint)
    if free == 0:
        raise CheckFailed(f"all {total} device(s) under key {spec.key} are busy",
                          "wait for the running job to finish, or " + start_hint)
    return f"{free} of {total} device(s) under key {spec.key} free"


def _check_server(spec: RemoteSpec) -> str:
    from tvmc_attend.device.endpoints import port_open

    if not port_open(spec.host, spec.port, timeout_s=5):
        raise CheckFailed(f"nothing answers at {spec.address}",
                          "run `tvmc-attend device serve` on the board, or check --rpc-host")
    return f"RPC server at {spec.address} accepts connections"


def _check_arch(session: Any, board: Board) -> str:
    want = board.triple.split("-")[0]
    try:
        triple = str(session.get_function("target.llvm_get_system_triple")())
    except Exception:  # a runtime-only TVM on the board has no LLVM to ask
        return "the remote has no LLVM to report its triple; the module run below checks it"
    if triple.split("-")[0] != want:
        raise CheckFailed(f"the remote is {triple}, the target is {board.triple}",
                          f"connect to a {want} board, or pick the matching --target")
    return f"remote is {triple} (target {board.triple})"


def _check_module(board: Board, session: Any | None) -> str:
    with tempfile.TemporaryDirectory(prefix="tvmc-attend-doctor-") as tmp:
        lib = build_vector_add(board, Path(tmp))
        where = "on the board" if session is not None else "on this host"
        try:
            error = run_vector_add(lib, session)
        except Exception as err:
            raise CheckFailed(f"the module failed {where}: {str(err).strip().splitlines()[-1]}",
                              "check that --target matches the board's CPU "
                              "(`tvmc-attend targets`)") from err
    if error > 1e-6:
        raise CheckFailed(f"wrong numerics {where}: max abs error {error:.3g}",
                          "report this with `tvmc-attend targets --json` output")
    return f"vector add built for {board.name}, run {where}: max abs error {error:.1g}"


def _check_counting(board: Board) -> str:
    """What `tune --counted` weighs blocks with: llvm-mca and its model of the board's core."""
    from tvmc_attend.device.counting.throughput import BlockThroughput
    from tvmc_attend.errors import UserError

    model = board.core_model
    if model is None or not model.mca_cpu:
        raise CheckFailed(f"the {board.name} preset's core model names no llvm-mca cpu "
                          "(core_model.mca_cpu)", "add one to the preset")
    cpu = model.throughput_cpu
    if cpu is None:
        return f"counting {board.name} by instructions / ipc (no llvm-mca model, by its preset)"
    try:
        analyser = BlockThroughput("aarch64", cpu)
    except UserError as err:
        raise CheckFailed(str(err), "make setup") from None
    return f"llvm-mca {analyser.mca} with -mcpu={cpu} (counted cost of {board.name})"


def run_checks(board: Board, spec: RemoteSpec | None,
               report: Callable[[Check], None] = lambda _check: None) -> list[Check]:
    """Run every check, ``report``-ing each as it ends; a failed prerequisite skips its
    dependents."""
    results: list[Check] = []

    def check(name: str, fn: Callable[[], str]) -> bool:
        try:
            result = Check(name, True, fn())
        except CheckFailed as err:
            result = Check(name, False, err.detail, err.fix)
        report(result)
        results.append(result)
        return bool(result.ok)

    def skip(name: str, why: str) -> None:
        results.append(Check(name, None, why))
        report(results[-1])

    tvm_ok = check("TVM versions", _check_versions)
    tvm_ok = check("TVM IR serialisation", _check_save_json) and tvm_ok
    compiler_ok = check("compiler", lambda: _check_compiler(board))
    can_build = tvm_ok and compiler_ok
    if board.core_model is not None:
        check("counting model", lambda: _check_counting(board))
    if not board.is_remote:
        if can_build:
            check("tiny module", lambda: _check_module(board, None))
        return results
    if spec is None:
        for name in ("board reachable", "remote architecture", "tiny module on the board"):
            skip(name, "no --rpc-tracker/--rpc-key or --rpc-host given")
        return results
    if spec.via_tracker:
        reachable = (check("tracker", lambda: _check_tracker(spec))
                     and check("device key", lambda: _check_key(spec, board)))
    else:
        reachable = check("RPC server", lambda: _check_server(spec))
    if not reachable:
        return results
    session = _open_session(spec, check)
    if session is None:
        return results
    check("remote architecture", lambda: _check_arch(session, board))
    if can_build:
        check("tiny module on the board", lambda: _check_module(board, session))
    else:
        skip("tiny module on the board", "fix TVM and the compiler first")
    return results


def _open_session(spec: RemoteSpec,
                  check: Callable[[str, Callable[[], str]], bool]) -> Any | None:
    from tvmc_attend.device.rpc import connect

    holder: dict[str, Any] = {}

    def open_it() -> str:
        try:
            holder["session"] = connect(spec, timeout_s=60)
        except UserError as err:
            raise CheckFailed(str(err)) from err  # the message already says what to do
        return f"session opened on {spec.describe()}"

    return holder.get("session") if check("RPC session", open_it) else None
