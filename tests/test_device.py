"""Device layer: tracker, RemoteSpec/connect errors, the emulated board, doctor, device stop.

Tests marked ``emulated`` share one emulated rpi4 (fixture ``emulated_rpi4``); one more board
(an rpi5 without tracker) is started to test `device emulate`/`device stop` end to end.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import wait_until

from tvmc_attend.device import RemoteSpec, connect, emulator, tracker
from tvmc_attend.device.choice import choose_device
from tvmc_attend.device.endpoints import free_port, port_free
from tvmc_attend.errors import UserError

CLI = [sys.executable, "-m", "tvmc_attend.cli.main"]
DOT_ROWS, DOT_DEPTH = 64, 64


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout,
                          check=False)


def group_members(pgid: int) -> list[int]:
    """Pids still in a process group (zombies excluded)."""
    import psutil

    found = []
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(proc.pid)
        except (ProcessLookupError, psutil.Error):
            pass
    return found


def build_int8_dot(board_name: str, out_dir: Path) -> Path:
    """``dot(a, b, c)``: c[i] = sum_k int32(a[i, k]) * int32(b[i, k]) over int8 rows.

    Built with +dotprod (rpi5), LLVM vectorises the reduction into sdot instructions.
    """
    import tvm
    from tvm import te
    from tvm.support import cc

    from tvmc_attend.targets import get_board

    board = get_board(board_name)
    a = te.placeholder((DOT_ROWS, DOT_DEPTH), "int8", name="a")
    b = te.placeholder((DOT_ROWS, DOT_DEPTH), "int8", name="b")
    k = te.reduce_axis((0, DOT_DEPTH), name="k")
    c = te.compute((DOT_ROWS,), lambda i: te.sum(
        a[i, k].astype("int32") * b[i, k].astype("int32"), axis=k), name="c")
    func = te.create_prim_func([a, b, c]).with_attr("global_symbol", "dot")
    lib = tvm.compile(tvm.IRModule({"dot": func}), target=board.tvm_target())
    path = out_dir / f"dot-{board.name}.so"
    lib.export_library(str(path), fcompile=cc.cross_compiler(board.cross_compiler))
    return path


def run_int8_dot(session, lib_path: Path) -> float:
    """Run the dot module remotely; return the max abs error against numpy."""
    import tvm

    session.upload(str(lib_path))
    module, dev = session.load_module(lib_path.name), session.cpu()
    rng = np.random.default_rng(0)
    a, b = (rng.integers(-128, 128, (DOT_ROWS, DOT_DEPTH), dtype=np.int8) for _ in range(2))
    out = tvm.runtime.tensor(np.zeros(DOT_ROWS, "int32"), dev)
    module["dot"](tvm.runtime.tensor(a, dev), tvm.runtime.tensor(b, dev), out)
    want = (a.astype(np.int32) * b.astype(np.int32)).sum(axis=1)
    return float(np.abs(out.numpy() - want).max())


def dot_instructions(lib_path: Path) -> list[str]:
    objdump = shutil.which("aarch64-linux-gnu-objdump")
    assert objdump, "aarch64-linux-gnu-objdump missing: apt-get install binutils-aarch64-linux-gnu"
    text = subprocess.run([objdump, "-d", str(lib_path)], capture_output=True, text=True,
                          check=True).stdout
    return re.findall(r"\t([su]dot)\t", text)


# ---- no emulator needed ----

def test_cli_help_does_not_import_tvm():
    code = "import sys, tvmc_attend.cli.main; assert 'tvm' not in sys.modules, 'tvm imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_tracker_start_and_stop():
    own = tracker.start_tracker("127.0.0.1")
    try:
        assert own.alive()
        info = tracker.summary(own.host, own.port)
        assert info["server_info"] == [] and tracker.registered_keys(info) == []
    finally:
        own.stop()
    assert not own.alive()
    assert group_members(own.pid) == []
    assert port_free(own.host, own.port)
    own.stop()  # idempotent


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rpc_tracker": "127.0.0.1:9190", "rpc_host": "127.0.0.1:9090"}, "not both"),
        ({"rpc_tracker": "127.0.0.1:9190"}, "--rpc-tracker needs --rpc-key"),
        ({"rpc_key": "rpi4"}, "--rpc-key needs --rpc-tracker"),
        ({"rpc_tracker": "localhost", "rpc_key": "k"}, "--rpc-tracker expects HOST:PORT"),
        ({"rpc_tracker": ":9190", "rpc_key": "k"}, "expects HOST:PORT"),
        ({"rpc_tracker": "h:99999", "rpc_key": "k"}, "expects HOST:PORT"),
        ({"rpc_host": "h:port"}, "--rpc-host expects HOST:PORT"),
        ({"required": True}, "no board given"),
    ],
)
def test_remote_spec_parse_errors(kwargs, message):
    with pytest.raises(UserError, match=re.escape(message)):
        RemoteSpec.parse(**kwargs)


def test_remote_spec_parse():
    assert RemoteSpec.parse() is None
    spec = RemoteSpec.parse(rpc_tracker="127.0.0.1:9190", rpc_key="rpi4")
    assert (spec.tracker_host, spec.tracker_port, spec.key, spec.host, spec.port) == (
        "127.0.0.1", 9190, "rpi4", None, None)
    assert spec.via_tracker and spec.tracker_address == "127.0.0.1:9190"
    assert RemoteSpec.parse(rpc_tracker="t:1", default_key="rpi5").key == "rpi5"
    direct = RemoteSpec.parse(rpc_host="[::1]:9090")
    assert (direct.host, direct.port, direct.via_tracker) == ("::1", 9090, False)
    assert direct.address == "[::1]:9090"


def test_connect_without_tracker_fails_fast():
    port = free_port()
    start = time.monotonic()
    with pytest.raises(UserError, match=rf"cannot reach RPC tracker at 127\.0\.0\.1:{port}: "
                                        r"start one with `tvmc-attend tracker`"):
        connect(RemoteSpec.parse(rpc_tracker=f"127.0.0.1:{port}", rpc_key="rpi4"), timeout_s=60)
    assert time.monotonic() - start < 5


def test_connect_without_server_fails_fast():
    port = free_port()
    start = time.monotonic()
    with pytest.raises(UserError, match="cannot reach RPC server"):
        connect(RemoteSpec.parse(rpc_host=f"127.0.0.1:{port}"), timeout_s=60)
    assert time.monotonic() - start < 5


def test_connect_unknown_key(rpc_tracker):
    start = time.monotonic()
    spec = RemoteSpec.parse(rpc_tracker=rpc_tracker, rpc_key="no-such-board")
    with pytest.raises(UserError, match=r"no free device under key no-such-board at tracker "
                                        r".*\(registered keys: .*\): start one with "
                                        r"`tvmc-attend device emulate --board BOARD"):
        connect(spec, timeout_s=60)
    assert time.monotonic() - start < 5


def test_emulate_refuses_host_and_bad_flags():
    with pytest.raises(UserError, match="nothing to emulate"):
        emulator.start("host")
    with pytest.raises(UserError, match="--key needs --tracker"):
        emulator.start("rpi4", key="k", name=f"pytest-never-{os.getpid()}")


def test_dead_board_state_is_pruned(tmp_path, monkeypatch):
    monkeypatch.setenv("TVMC_ATTEND_CACHE", str(tmp_path))
    dead = subprocess.Popen(["true"])
    dead.wait()
    state = emulator.EmulatedBoard(
        name="ghost", board="rpi4", qemu_cpu="cortex-a72", host="127.0.0.1", port=1,
        tracker=None, key=None, pid=dead.pid, create_time=0.0, started=0.0, log="")
    emulator._save(state)
    assert json.loads((tmp_path / "emulated" / "ghost.json").read_text())["pid"] == dead.pid
    assert emulator.running() == []
    assert not (tmp_path / "emulated" / "ghost.json").exists()
    with pytest.raises(UserError, match="no emulated board named 'ghost'"):
        emulator.stop("ghost")


def stop_foreground(proc: subprocess.Popen) -> tuple[str, str]:
    """SIGTERM a foreground command (as `kill` would) and return its output."""
    proc.terminate()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, out + err
    return out, err


def test_tracker_cli_foreground():
    port = free_port()
    proc = subprocess.Popen([*CLI, "tracker", "--port", str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        wait_until(lambda: not port_free("127.0.0.1", port), 120, "tracker listening")
        assert tracker.summary("127.0.0.1", port)["server_info"] == []
    finally:
        out, _err = stop_foreground(proc)
    assert f"RPC tracker listening on 127.0.0.1:{port}" in out
    assert group_members(proc.pid) == [] and port_free("127.0.0.1", port)


def test_device_serve_foreground(tmp_path):
    from tvmc_attend.device.doctor import build_vector_add, run_vector_add
    from tvmc_attend.targets import get_board

    port = free_port()
    proc = subprocess.Popen([*CLI, "device", "serve", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        lib = build_vector_add(get_board("host"), tmp_path)
        wait_until(lambda: not port_free("127.0.0.1", port), 120, "RPC server listening")
        spec = RemoteSpec.parse(rpc_host=f"127.0.0.1:{port}")
        session = connect(spec, timeout_s=60)
        assert run_vector_add(lib, session) < 1e-6
        del session
        assert choose_device(get_board("rpi4"), rpc_host=spec.address).emulated is False
    finally:
        _out, err = stop_foreground(proc)
    assert "runs any code uploaded to it, without authentication" in err
    assert group_members(proc.pid) == [] and port_free("127.0.0.1", port)


def test_interrupted_rootfs_build_leaves_nothing(tmp_path, monkeypatch):
    from tvmc_attend.device import rootfs

    monkeypatch.setenv("TVMC_ATTEND_CACHE", str(tmp_path))
    # A mirror that refuses connections: debootstrap fails within seconds.
    monkeypatch.setenv("TVMC_ATTEND_DEBIAN_MIRROR", f"http://127.0.0.1:{free_port()}/debian")
    if os.geteuid() != 0:
        with pytest.raises(UserError, match="need root"):
            rootfs.ensure_rootfs(progress=lambda _msg: None)
        return
    with pytest.raises(UserError, match="debootstrap failed"):
        rootfs.ensure_rootfs(progress=lambda _msg: None)
    assert not rootfs.is_ready()
    left = [p.name for p in (tmp_path / "rootfs").iterdir()]
    assert not [name for name in left if name.startswith(("arm64-", ".building-"))
                and not name.endswith(".log")], left


def test_missing_emulator_prerequisites_say_what_to_install(tmp_path, monkeypatch):
    from tvmc_attend.device import rootfs

    if os.geteuid() != 0:
        with pytest.raises(UserError, match="need root"):
            rootfs.check_host()
        return
    monkeypatch.setattr(rootfs, "QEMU_STATIC", str(tmp_path / "no-qemu"))
    with pytest.raises(UserError, match=r"apt-get install qemu-user-static binfmt-support"):
        rootfs.check_host()
    monkeypatch.setattr(rootfs, "BINFMT_DIR", tmp_path / "no-binfmt")  # as if never mounted
    with pytest.raises(UserError, match=r"update-binfmts --enable qemu-aarch64"):
        rootfs.ensure_binfmt()


def test_doctor_host():
    result = run_cli("doctor", "--target", "host")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAIL" not in result.stdout and result.stdout.count("PASS") == 4


# ---- on the emulated board ----

@pytest.mark.emulated
def test_emulated_rpi4_registered(emulated_rpi4):
    info = tracker.summary(emulated_rpi4.tracker_host, emulated_rpi4.tracker_port)
    assert (emulated_rpi4.key, "127.0.0.1", emulated_rpi4.port) in tracker.servers(info)
    board = emulator.get(emulated_rpi4.name)
    assert board is not None and board.qemu_cpu == "cortex-a72" and board.alive()
    listed = run_cli("device", "list", "--json", timeout=60)
    assert emulated_rpi4.name in [b["name"] for b in json.loads(listed.stdout)]


@pytest.mark.emulated
def test_the_emulated_board_says_it_is_emulated(emulated_rpi4, monkeypatch):
    """Known by what it answers, not by this machine's registry (which a loaded machine, or
    another user's board, can miss)."""
    from tvmc_attend.targets import get_board

    monkeypatch.setattr(emulator, "running", lambda: [])
    chosen = choose_device(get_board("rpi4"), rpc_tracker=emulated_rpi4.tracker,
                           rpc_key=emulated_rpi4.key)
    assert chosen.emulated is True


@pytest.mark.emulated
def test_doctor_passes_on_emulated_rpi4(emulated_rpi4):
    result = run_cli("doctor", "--target", "rpi4", "--rpc-tracker", emulated_rpi4.tracker,
                     "--rpc-key", emulated_rpi4.key)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAIL" not in result.stdout and "SKIP" not in result.stdout
    assert "tiny module on the board" in result.stdout


@pytest.mark.emulated
def test_cross_compiled_module_runs_remotely(emulated_rpi4, tmp_path):
    from tvmc_attend.device.doctor import build_vector_add, run_vector_add
    from tvmc_attend.targets import get_board

    lib = build_vector_add(get_board("rpi4"), tmp_path)
    assert lib.read_bytes()[18] == 0xB7  # ELF e_machine EM_AARCH64: really cross-compiled
    session = connect(emulated_rpi4.spec, timeout_s=120)
    assert run_vector_add(lib, session) < 1e-6


@pytest.mark.emulated
def test_dotprod_module_dies_on_a72_with_clear_error(emulated_rpi4, tmp_path):
    rpi5_lib = build_int8_dot("rpi5", tmp_path)
    assert dot_instructions(rpi5_lib), "no sdot/udot emitted for +dotprod: the test proves nothing"
    assert not dot_instructions(build_int8_dot("rpi4", tmp_path))

    session = connect(emulated_rpi4.spec, timeout_s=120)
    start = time.monotonic()
    with pytest.raises(Exception, match="SIGILL"):  # tvm.error.RPCError
        run_int8_dot(session, rpi5_lib)
    assert time.monotonic() - start < 60

    # the board keeps serving after the crashed session
    session = connect(emulated_rpi4.spec, timeout_s=120)
    assert run_int8_dot(session, tmp_path / "dot-rpi4.so") == 0


@pytest.mark.emulated
def test_emulate_rpi5_direct_then_stop(tmp_path):
    name = f"pytest-rpi5-{os.getpid()}"
    port = free_port()
    try:
        result = run_cli("device", "emulate", "--board", "rpi5", "--port", str(port),
                         "--name", name)
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"127.0.0.1:{port}" in result.stdout and f"device stop --board {name}" in \
            result.stdout
        board = emulator.get(name)
        assert board is not None and board.qemu_cpu == "cortex-a76"

        # positive control: the +dotprod module is right on the CPU that has it
        session = connect(RemoteSpec.parse(rpc_host=board.address), timeout_s=120)
        assert run_int8_dot(session, build_int8_dot("rpi5", tmp_path)) == 0
        del session

        result = run_cli("device", "stop", "--board", name, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
        assert group_members(board.pid) == []
        assert port_free("127.0.0.1", port)
        assert emulator.get(name) is None
    finally:
        emulator.stop(name, missing_ok=True)
