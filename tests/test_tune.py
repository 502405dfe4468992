"""Tuning on this host: `tvmc-attend tune` writes a (target, model) database that `compile`
applies, a rerun measures nothing new, a database of another target is refused, and Ctrl-C
stops a run cleanly with every record kept and a rerun resuming from them.

The DC-AC block at 16x16 (6 tasks) keeps every run to a minute or two on a 2-core machine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import (
    HOST_DB,
    RTOL,
    assert_bundle_matches,
    assert_cli_error,
    cli_here,
    output,
    record_count,
    run_cli,
    running_cli,
    tune_summary,
    wait_until,
)

from tvmc_attend.targets import get_board

pytestmark = pytest.mark.slow

MODEL, SIZE = "dcac", 16
TUNE = ("tune", "--model", MODEL, "--input-size", str(SIZE), "--target", "host")


@dataclass
class Tuned:
    log_dir: Path
    database: Path
    stdout: str


def tune(log_dir: Path, trials: int, *extra: str, timeout: float = 900):
    return run_cli(*TUNE, "--trials", str(trials), "--log-dir", log_dir, *extra,
                   timeout=timeout)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory) -> Tuned:
    log_dir = tmp_path_factory.mktemp("tune") / "logs"
    result = tune(log_dir, 12)
    assert result.returncode == 0, output(result)
    assert "Traceback" not in result.stdout + result.stderr
    return Tuned(log_dir, log_dir / HOST_DB / MODEL, result.stdout)


def test_tune_writes_the_database(tuned) -> None:
    db = tuned.database
    for name in ("tuning.json", "database_workload.json", "database_tuning_record.json"):
        assert (db / name).is_file(), name
    assert (db / "tuning.json").stat().st_mode & 0o044 == 0o044, "not readable by others"
    info = json.loads((db / "tuning.json").read_text())
    host = get_board("host")
    assert info["model"] == MODEL and info["target_name"] == "host"
    assert info["target"] == host.resolved_target_dict()
    assert info["emulated"] is False and info["devices"] == ["local"]
    # the class shares it; the machine that measured says its CPU and TVM's thread count
    assert info["cpu_class"] == host.isa_class.name
    [machine] = info["tuned_on"]
    assert machine.endswith(f", {host.thread_count()} TVM threads"), machine
    done, budget, new = tune_summary(tuned.stdout)
    assert 0 < new <= done <= budget <= 12
    assert 0 < record_count(db) <= 12 + 1  # the trials and the default schedule
    assert f"database: {db}" in tuned.stdout
    assert "dcac on host" in tuned.stdout and "trials/min" in tuned.stdout
    # every record is a real measurement (MetaSchedule writes 1e10 s for failures)
    for line in (db / "database_tuning_record.json").read_text().splitlines():
        run_secs = json.loads(line)[1][1]
        assert run_secs and max(run_secs) < 1.0, line


def test_the_default_schedule_is_measured_first(tuned) -> None:
    """What an untuned build runs is a record, so the best record is never slower than it
    (as measured); `db check --deep` says whether the search beat it."""
    assert "default schedules measured: 1 " in tuned.stdout, tuned.stdout
    result = cli_here("db", "check", "--deep", tuned.database)
    assert result.returncode == 0, output(result)
    found = re.search(r"default schedules: no record beats the default on ([01]) workloads "
                      r"\[0?\]; never measured on 0 \[\]", result.stdout)
    assert found, output(result)


def test_compile_applies_the_database(tuned, tmp_path) -> None:
    records = record_count(tuned.database)
    bundle = tmp_path / "tuned"
    result = cli_here("compile", "--model", MODEL, "--input-size", SIZE, "--target", "host",
                     "--log-dir", tuned.log_dir, "-o", bundle)
    assert result.returncode == 0, output(result)
    assert f"tuned, {records} records" in result.stdout, result.stdout
    meta = json.loads((bundle / "metadata.json").read_text())
    assert meta["tuned"] is True
    assert meta["tuning"]["records"] == records > 0
    assert meta["tuning"]["database"] == str(tuned.database)
    assert meta["tuning"]["emulated"] is False

    from tvmc_attend.models import create_model

    assert_bundle_matches(bundle, create_model(MODEL, input_size=SIZE, seed=0))


def test_benchmark_measures_every_variant_side_by_side(tuned, tmp_path) -> None:
    json_path, plot_path = tmp_path / "bench.json", tmp_path / "bench.png"
    result = run_cli("benchmark", "--model", MODEL, "--input-size", SIZE, "--target", "host",
                     "--log-dir", tuned.log_dir, "--rounds", 2, "--runs-per-round", 2,
                     "--json", json_path, "--plot", plot_path)
    assert result.returncode == 0, output(result)
    for label in ("TVM untuned", "TVM tuned", "ONNX Runtime", "PyTorch eager"):
        assert label in result.stdout, output(result)
    assert plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(json_path.read_text())
    assert data["threads"] == get_board("host").thread_count() and data["emulated"] is False
    assert data["machine"]["cores"] and data["date"]
    assert data["tuning"]["tuned"] and data["tuning"]["records"] == record_count(tuned.database)
    for key in ("tvm_untuned", "tvm_tuned", "onnxruntime", "torch"):
        entry = data[key]
        assert entry["p10_ms"] <= entry["median_ms"] <= entry["p90_ms"], key
        assert entry["repeat"] == 4, key
        if key != "torch":  # PyTorch is the reference
            assert entry["max_rel_err"] <= RTOL, key
    assert data["reference"] == "pytorch"
    ratios = data["ratios"]
    assert ratios["tvm_tuned_vs_tvm_untuned"] == pytest.approx(
        data["tvm_untuned"]["median_ms"] / data["tvm_tuned"]["median_ms"])


def test_in_model_splits_the_whole_model_time(tuned, tmp_path) -> None:
    """`benchmark --op in-model`: every tuned task's kernel found and timed inside the model;
    kernels and builtins fit inside the timed run; the estimate is the database's."""
    json_path = tmp_path / "in-model.json"
    result = cli_here("benchmark", "--op", "in-model", "--model", MODEL, "--input-size", SIZE,
                      "--target", "host", "--log-dir", tuned.log_dir, "--rounds", 5,
                      "--json", json_path)
    assert result.returncode == 0, output(result)
    data = json.loads(json_path.read_text())
    assert data["rows"] and data["threads"] == get_board("host").thread_count()
    for row in data["rows"]:
        assert row["warm_us"] > 0 and row["in_model_us"] > 0, row
    assert data["tune_estimate_us"] == pytest.approx(
        sum(row["calls"] * row["warm_us"] for row in data["rows"]))
    inside_calls = data["kernels_in_model_us"] + data["builtins_us"]
    assert 0 < inside_calls < 1e3 * data["timed_instrument_ms"]
    assert data["vm_calls"] >= len(data["rows"]) and data["whole_ms"] > 0
    assert "whole model" in result.stdout and "between calls" in result.stdout
    versus = data["versus_onnxruntime"]  # the same model in ONNX Runtime, node by node
    assert versus["onnxruntime_whole_ms"] > 0 and versus["tvm_layers_us"] > 0
    kinds = {row["kind"] for row in versus["by_kind"]}
    assert "conv dense 3x3" in kinds and "VM builtins" in kinds, kinds
    assert len(versus["tvm_calls"]) == data["vm_calls"]
    assert "per kind of layer" in result.stdout and versus["conv_match"] in " ".join(
        result.stdout.split())


def test_untuned_flag_ignores_the_database(tuned, tmp_path) -> None:
    from tvmc_attend.compiler.frontend import ModelSource
    from tvmc_attend.compiler.pipeline import compile_bundle

    warnings: list[str] = []
    meta = compile_bundle(ModelSource(MODEL, input_size=SIZE), get_board("host"),
                          str(tmp_path / "b"), untuned=True, log_dir=str(tuned.log_dir),
                          warn=warnings.append).metadata
    assert meta.tuned is False and meta.tuning.database is None and not warnings


def test_rerun_measures_nothing_new_and_a_larger_budget_only_new_candidates(tuned) -> None:
    before = record_count(tuned.database)
    done_before, _budget, _new = tune_summary(tuned.stdout)
    result = tune(tuned.log_dir, 12)
    assert result.returncode == 0, output(result)
    done, _budget, new = tune_summary(result.stdout)
    assert new == 0 and "(0 new" in result.stdout, result.stdout
    assert done == done_before and record_count(tuned.database) == before

    # Resumed with a larger budget: MetaSchedule's search offers the database's best again
    # (it forgets across runs what it measured); those are answered from the database, cost
    # no budget and are not recorded twice.
    result = tune(tuned.log_dir, before + 10)  # the budget counts records: 10 more
    assert result.returncode == 0, output(result)
    done, _budget, new = tune_summary(result.stdout)
    assert new >= 10 and done == before + new, result.stdout
    assert record_count(tuned.database) == before + new, result.stdout
    assert distinct_records(tuned.database) == record_count(tuned.database)


def test_a_new_database_warm_starts_from_a_seed(tuned, tmp_path) -> None:
    """A new database measures the seed's best schedules of each task first, on its own clock
    (the seed's run times are not copied)."""
    records = [json.loads(line) for line in
               (tuned.database / "database_tuning_record.json").read_text().splitlines()]
    best: dict[int, tuple[float, str]] = {}  # seed workload -> (mean secs, trace)
    for workload, (trace, secs, *_rest) in records:
        mean = sum(secs) / len(secs)
        if workload not in best or mean < best[workload][0]:
            best[workload] = (mean, json.dumps(trace))
    log_dir = tmp_path / "logs"
    result = tune(log_dir, 4, "--warm-start-from", tuned.log_dir)
    assert result.returncode == 0, output(result)
    found = re.search(r"warm start: (\d+) schedules of (\S+) \(timed on ", result.stdout)
    assert found and found[2] == str(tuned.database), result.stdout
    seeded = int(found[1])
    assert seeded >= len(best) - 1, result.stdout  # a task's best may be its default schedule
    database = log_dir / HOST_DB / MODEL
    traces = [json.dumps(json.loads(line)[1][0]) for line in
              (database / "database_tuning_record.json").read_text().splitlines()]
    assert {trace for _secs, trace in best.values()} <= set(traces)
    _done, _budget, new = tune_summary(result.stdout)
    assert len(traces) == 1 + seeded + new  # the default schedule, the seed's, the search's

    assert_cli_error(run_cli(*TUNE, "--log-dir", tmp_path / "other", "--warm-start-from",
                             tmp_path / "nowhere"), "to warm-start from")


def distinct_records(database: Path) -> int:
    """Records with distinct (workload, trace): a candidate recorded twice counts once."""
    lines = (database / "database_tuning_record.json").read_text().splitlines()
    return len({json.dumps([rec[0], rec[1][0]]) for rec in map(json.loads, lines)})


def test_compile_refuses_a_database_of_another_target(tuned, tmp_path) -> None:
    result = cli_here("compile", "--model", MODEL, "--input-size", SIZE, "--target", "rpi4",
                     "--database", tuned.database, "-o", tmp_path / "out")
    assert_cli_error(result, f"tuning database {tuned.database} was tuned for target host",
                     "not rpi4")
    assert not (tmp_path / "out").exists()


def _foreign_copy(tuned: Tuned, root: Path, **changes) -> Path:
    """A copy of the host database whose tuning.json claims another target."""
    db = root / HOST_DB / MODEL
    shutil.copytree(tuned.database, db)
    info = json.loads((db / "tuning.json").read_text())
    info.update(changes)
    (db / "tuning.json").write_text(json.dumps(info))
    return db


def test_log_dir_with_a_database_of_another_target(tuned, tmp_path) -> None:
    """tune refuses to add to it; compile (default database, not named with --database)
    warns and builds untuned rather than apply schedules chosen for another target."""
    rpi4 = get_board("rpi4")
    db = _foreign_copy(tuned, tmp_path / "logs", target_name="rpi4",
                       target=rpi4.resolved_target_dict())
    records = record_count(db)
    result = tune(tmp_path / "logs", 12)
    assert_cli_error(result, f"tuning database {db} was tuned for target rpi4", "not host")
    assert record_count(db) == records
    result = cli_here("compile", "--model", MODEL, "--input-size", SIZE, "--target", "host",
                     "--log-dir", tmp_path / "logs", "-o", tmp_path / "out")
    assert result.returncode == 0, output(result)
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert any("was tuned for target rpi4" in w and "building untuned" in w
               for w in warnings), output(result)
    meta = json.loads((tmp_path / "out" / "metadata.json").read_text())
    assert meta["tuned"] is False and meta["tuning"]["database"] is None
    assert record_count(db) == records


def test_a_database_from_another_cpu_of_the_class_applies(tuned, tmp_path) -> None:
    """What CPU classes are for: records tuned on another CPU model of this CPU's class (a
    copy that says so) apply here, built for this CPU; compile says where they were tuned."""
    host = get_board("host")
    other = {"x86-64-avx512": "rocketlake", "x86-64-avx2": "znver1"}[host.isa_class.name]
    db = _foreign_copy(tuned, tmp_path / "logs",
                       target=dict(host.resolved_target_dict(), mcpu=other),
                       tuned_on=[f"another CPU ({other}), code for {other}, 2 TVM threads"])
    result = cli_here("compile", "--model", MODEL, "--input-size", SIZE, "--target", "host",
                     "--log-dir", tmp_path / "logs", "-o", tmp_path / "out")
    assert result.returncode == 0, output(result)
    assert f"for the {host.isa_class.name} CPU class ({db})" in result.stdout, output(result)
    assert f"another CPU ({other})" in result.stdout, output(result)
    meta = json.loads((tmp_path / "out" / "metadata.json").read_text())
    assert meta["tuned"] is True and meta["tuning"]["records"] == record_count(db)
    assert meta["target"]["target"]["mcpu"] == host.resolved_target_dict()["mcpu"]


def test_named_database_from_another_host_cpu_is_refused(tuned, tmp_path) -> None:
    """Same preset name, other CPU, and no CPU class recorded (a database written before
    classes, copied from another machine): only its exact target may apply it."""
    target = dict(get_board("host").resolved_target_dict(), mcpu="cortex-a53")
    db = _foreign_copy(tuned, tmp_path / "logs", target=target, cpu_class="")
    start = time.monotonic()
    result = cli_here("compile", "--model", MODEL, "--input-size", SIZE, "--target", "host",
                     "--database", db, "-o", tmp_path / "out")
    assert_cli_error(result, "was tuned for target host", "cortex-a53")
    assert time.monotonic() - start < 60  # refused before the import and build
    assert not (tmp_path / "out").exists()


def _interrupt(proc, database: Path, more_than: int, timeout_s: float = 600) -> tuple[int, str]:
    """Wait for records beyond ``more_than``, then Ctrl-C (SIGINT to the process group, as a
    terminal does); return (records seen before the signal, stdout + stderr)."""
    wait_until(lambda: record_count(database) > more_than, timeout_s,
               f"more than {more_than} records", proc=proc)
    seen = record_count(database)
    os.killpg(proc.pid, signal.SIGINT)
    start = time.monotonic()
    out, err = proc.communicate(timeout=90)
    elapsed = time.monotonic() - start
    text = out + err
    assert proc.returncode == 130, f"exit {proc.returncode}\n{text}"
    assert elapsed < 60, f"took {elapsed:.0f} s to stop"
    assert "stopped: interrupted" in text, text
    assert "rerun the same command to resume" in text
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text
    return seen, out


def test_ctrl_c_keeps_the_records_and_a_rerun_resumes(tmp_path) -> None:
    log_dir = tmp_path / "logs"
    database = log_dir / HOST_DB / MODEL
    # small rounds: the first records (and the stop) come after a batch of 2, not of 10
    args = (*TUNE, "--trials", "64", "--trials-per-round", "2", "--log-dir", log_dir)

    with running_cli(*args) as proc:
        # the first record is the default schedule (measured before the search): wait for more
        seen, out = _interrupt(proc, database, 1)
    kept = record_count(database)
    assert kept >= seen >= 2
    done, _budget, new = tune_summary(out)
    assert 1 <= new == done < kept, out  # a first run: everything it did is new

    with running_cli(*args) as proc:
        _seen, out = _interrupt(proc, database, kept)
    done, _budget, new = tune_summary(out)
    assert done - new >= kept, f"the rerun started from scratch:\n{out}"
    assert record_count(database) > kept


def test_an_unnamed_handler_on_metaschedule_logger_does_not_fail_a_tune(tmp_path) -> None:
    """TVM's create_loggers formats each handler's name; an unnamed one (pytest's log capture,
    a caller's own) failed in-process tunes. The tune sets such handlers aside around it and
    puts them back."""
    import logging

    from tvm.s_tir.meta_schedule.logging import get_loggers_from_work_dir

    from tvmc_attend.compiler.tuning.tune import MS_LOGGER, unnamed_handlers_set_aside

    logger = logging.getLogger(MS_LOGGER)
    level, handler = logger.level, logging.NullHandler()
    logger.addHandler(handler)
    try:
        with pytest.raises(AttributeError, match="format"):  # TVM's own failure
            get_loggers_from_work_dir(str(tmp_path), ["task"])
        with unnamed_handlers_set_aside():
            assert handler not in logger.handlers
            get_loggers_from_work_dir(str(tmp_path), ["task"])
        assert handler in logger.handlers
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
