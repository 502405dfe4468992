"""Tuning over TVM RPC: a native RPC server registered with a real tracker on 127.0.0.1 measures
the candidates; losing it stops the run with the records kept; a key without devices fails
at once; and the emulated rpi4 tunes (marked emulated) with its database labelled emulated.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    HOST_DB,
    RTOL,
    assert_bundle_matches,
    assert_cli_error,
    assert_depends_on_input,
    cli_here,
    inputs,
    output,
    record_count,
    rel_err,
    run_cli,
    running_cli,
    torch_reference,
    tune_summary,
    wait_until,
)

from tvmc_attend.device import tracker as tracker_client
from tvmc_attend.device.endpoints import free_port, parse_address, stop_process_group

MODEL, SIZE = "dcac", 16


@dataclass
class Server:
    key: str
    tracker: str
    port: int
    proc: subprocess.Popen

    def stop(self) -> None:
        stop_process_group(self.proc.pid)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)


def start_server(tracker: str, key: str, timeout_s: float = 180) -> Server:
    """A native (x86) RPC server registered under ``key``, in its own process group."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tvmc_attend.device.server", "--host", "127.0.0.1", "--port",
         str(port), "--tracker", tracker, "--key", key],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    server = Server(key, tracker, port, proc)
    host, tport = parse_address(tracker, "--rpc-tracker")
    try:
        wait_until(lambda: tracker_client.server_count(tracker_client.summary(host, tport), key)
                   > 0, timeout_s, f"RPC server registered under {key}", proc=proc)
    except BaseException:
        server.stop()
        raise
    return server


_serial = iter(range(1_000_000))


@pytest.fixture
def rpc_server(rpc_tracker) -> Iterator[Server]:
    server = start_server(rpc_tracker, f"pytest-x86-{os.getpid()}-{next(_serial)}")
    try:
        yield server
    finally:
        server.stop()


def tune_args(tracker: str, key: str, log_dir: Path, trials: int) -> list[str]:
    return ["tune", "--model", MODEL, "--input-size", str(SIZE), "--target", "host",
            "--rpc-tracker", tracker, "--rpc-key", key, "--trials", str(trials),
            "--log-dir", str(log_dir)]


@pytest.mark.slow
def test_tune_over_rpc_then_compile(rpc_server, tmp_path) -> None:
    log_dir = tmp_path / "logs"
    database = log_dir / HOST_DB / MODEL
    result = run_cli(*tune_args(rpc_server.tracker, rpc_server.key, log_dir, 8), timeout=900)
    assert result.returncode == 0, output(result)
    assert "Traceback" not in result.stdout + result.stderr
    device = f"key {rpc_server.key} at tracker {rpc_server.tracker}"
    assert f"on {device}" in result.stdout, result.stdout
    done, _budget, new = tune_summary(result.stdout)
    assert new >= 1
    assert record_count(database) >= new
    info = json.loads((database / "tuning.json").read_text())
    assert info["target_name"] == "host" and info["model"] == MODEL
    assert info["emulated"] is False and info["devices"] == [device]

    bundle = tmp_path / "bundle"
    result = cli_here("compile", "--model", MODEL, "--input-size", SIZE, "--target", "host",
                     "--log-dir", log_dir, "-o", bundle)
    assert result.returncode == 0, output(result)
    meta = json.loads((bundle / "metadata.json").read_text())
    assert meta["tuned"] is True and meta["tuning"]["records"] == record_count(database)
    assert meta["tuning"]["devices"] == [device]

    from tvmc_attend.models import create_model

    assert_bundle_matches(bundle, create_model(MODEL, input_size=SIZE, seed=0))


@pytest.mark.slow
def test_lost_device_stops_the_run_and_keeps_the_records(rpc_server, tmp_path) -> None:
    log_dir = tmp_path / "logs"
    database = log_dir / HOST_DB / MODEL
    with running_cli(*tune_args(rpc_server.tracker, rpc_server.key, log_dir, 64),
                     "--trials-per-round", "2") as proc:
        wait_until(lambda: record_count(database) >= 1, 600, "the first records", proc=proc)
        seen = record_count(database)
        rpc_server.stop()  # the board is unplugged
        start = time.monotonic()
        out, err = proc.communicate(timeout=300)
        elapsed = time.monotonic() - start
    text = out + err
    assert proc.returncode not in (0, None), text
    assert "lost the RPC device" in text, text
    assert "Traceback" not in text, text
    assert elapsed < 180, f"took {elapsed:.0f} s to notice the lost device"
    assert record_count(database) >= seen
    done, _budget, new = tune_summary(out)
    assert new >= 1
    # the lost batch is recorded as failures; a rerun must measure those tasks again
    assert_failures_do_not_count(database)


def assert_failures_do_not_count(database: Path) -> None:
    from tvm.s_tir import meta_schedule as ms

    from tvmc_attend.compiler.frontend import ModelSource
    from tvmc_attend.compiler.lowering import legalize_and_fuse
    from tvmc_attend.compiler.prepare import prepare_model
    from tvmc_attend.compiler.tuning.database import TuningDatabase, count_records
    from tvmc_attend.targets import get_board

    lines = [json.loads(line) for line in
             (database / "database_tuning_record.json").read_text().splitlines()]
    failed = sum(1 for record in lines if min(record[1][1]) >= 1e9)
    assert failed >= 1, "the lost batch left no failed records: the test proves nothing"
    board = get_board("host")
    prepared = prepare_model(ModelSource(MODEL, input_size=SIZE))
    tasks = ms.relax_integration.extract_tasks(legalize_and_fuse(prepared.mod, board),
                                               board.tvm_target())
    counts = count_records(TuningDatabase(str(database)).open(board, MODEL),
                           [task.dispatched[0] for task in tasks])
    assert sum(counts) == len(lines) - failed


def test_no_device_under_the_key_fails_fast(rpc_tracker, tmp_path) -> None:
    key = f"pytest-nobody-{os.getpid()}"
    start = time.monotonic()
    result = run_cli(*tune_args(rpc_tracker, key, tmp_path / "logs", 8), timeout=300)
    elapsed = time.monotonic() - start
    assert_cli_error(result, f"no free device under key {key}", f"tracker {rpc_tracker}")
    assert elapsed < 60, f"{elapsed:.0f} s"
    assert not (tmp_path / "logs").exists()


@pytest.mark.emulated
def test_tune_on_the_emulated_rpi4(emulated_rpi4, tmp_path) -> None:
    log_dir = tmp_path / "logs"
    database = log_dir / "rpi4" / MODEL
    result = run_cli("tune", "--model", MODEL, "--input-size", "8", "--target", "rpi4",
                     "--rpc-tracker", emulated_rpi4.tracker, "--rpc-key", emulated_rpi4.key,
                     "--trials", "4", "--log-dir", log_dir, timeout=1200)
    assert result.returncode == 0, output(result)
    assert "Traceback" not in result.stdout + result.stderr
    info = json.loads((database / "tuning.json").read_text())
    assert info["target_name"] == "rpi4" and info["target"]["mcpu"] == "cortex-a72"
    assert info["emulated"] is True, "the fixture's board was not detected as emulated"
    assert "(emulated)" in result.stdout  # emulated timings are labelled
    assert record_count(database) >= 1

    # the tuned bundle runs on the board and matches PyTorch
    bundle = tmp_path / "bundle"
    result = cli_here("compile", "--model", MODEL, "--input-size", "8", "--target", "rpi4",
                     "--log-dir", log_dir, "-o", bundle)
    assert result.returncode == 0, output(result)
    assert "tuned on an emulated board" in result.stderr  # the warning
    meta = json.loads((bundle / "metadata.json").read_text())
    assert meta["tuned"] is True and meta["tuning"]["emulated"] is True


    from tvmc_attend.models import create_model

    x = inputs((1, 40, 8, 8), n=1)[0]
    np.save(tmp_path / "x.npy", x)
    result = cli_here("run", bundle, "--input", tmp_path / "x.npy", "--output",
                     tmp_path / "y.npy", "--repeat", 2, "--rpc-tracker", emulated_rpi4.tracker,
                     "--rpc-key", emulated_rpi4.key)
    assert result.returncode == 0, output(result)
    reference = create_model(MODEL, input_size=8, seed=0)
    assert_depends_on_input(reference, [x, inputs((1, 40, 8, 8), n=1, seed=9)[0]])
    assert rel_err(np.load(tmp_path / "y.npy"), torch_reference(reference, x)) <= RTOL
