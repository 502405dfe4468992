"""`tvmc-attend compare`: the report's arithmetic and keys, its argument checks, and two small
models tuned, compiled, checked against PyTorch and timed on the host in one run.
"""

from __future__ import annotations

import json
import math
import re
import time

import numpy as np
import pytest
from helpers import output, run_cli

from tvmc_attend.bench.compare import (
    CompareOptions,
    CompareReport,
    ModelResult,
    plot,
    run_compare,
)
from tvmc_attend.bench.report import RunInfo
from tvmc_attend.bench.variants import SETTLE_S, Variant, check_and_time
from tvmc_attend.compiler.verify import DEFAULT_TOLERANCE
from tvmc_attend.errors import UserError
from tvmc_attend.targets import get_board

MODEL_KEYS = ("name", "params", "macs", "input_shape", "tuning", "numerics_ok",
              "reference_sensitivity", "numerics", "vs_baseline", "tvm")
LATENCY_KEYS = ("label", "median_ms", "p10_ms", "p90_ms", "repeat", "throughput_ips",
                "max_rel_err_vs_torch", "emulated")
TOP_KEYS = ("kind", "target", "device", "emulated", "threads", "date", "machine", "input_size",
            "trials", "baseline", "rel_tol", "numerics_rule", "notes", "models")


def _variant(key: str, ms: float, err: float | None = 0.0) -> Variant:
    return Variant(key, run=lambda x: x, time_runs=lambda x, n: [ms] * n, times_ms=[ms] * 4,
                   max_rel_err=err)


def _result(name: str, params: int, tvm_ms: float, host: bool = True) -> ModelResult:
    variants = {"tvm": _variant("tvm_tuned", tvm_ms, 1e-7)}
    if host:
        variants |= {"onnxruntime": _variant("onnxruntime", tvm_ms / 2),
                     "torch": _variant("torch", tvm_ms * 2, None)}
    return ModelResult(name=name, params=params, macs=10 * params, input_shape=(1, 3, 32, 32),
                       tuning={"tuned": True}, variants=variants, sensitivity=0.5)


def test_ratios_refer_to_the_baseline_and_json_has_the_documented_keys() -> None:
    options = CompareOptions(models=["mobilenetv3_large_100", "attendnext"])
    assert options.baseline_model == "attendnext"
    report = CompareReport(run=RunInfo(board="host", threads=2, emulated=False, device="local"),
                           options=options, notes=[],
                           results=[_result("mobilenetv3_large_100", 5_480_000, 30.0),
                                    _result("attendnext", 3_880_000, 3.0)])
    data = json.loads(json.dumps(report.as_json()))
    assert all(k in data for k in TOP_KEYS) and data["kind"] == "compare"
    mnv3, attendnext = data["models"]
    for entry in (mnv3, attendnext):
        assert all(k in entry for k in MODEL_KEYS)
        for column in ("tvm", "onnxruntime", "torch"):
            assert all(k in entry[column] for k in LATENCY_KEYS)
    assert mnv3["vs_baseline"]["tvm"] == pytest.approx(10.0)
    assert mnv3["vs_baseline"]["params"] == pytest.approx(5.48 / 3.88)
    assert attendnext["vs_baseline"] == {"tvm": 1.0, "onnxruntime": 1.0, "torch": 1.0,
                                         "params": 1.0}
    assert mnv3["tvm"]["throughput_ips"] == pytest.approx(1e3 / 30.0)
    assert mnv3["numerics_ok"] and data["rel_tol"] == DEFAULT_TOLERANCE


def test_each_local_turn_starts_by_settling() -> None:
    """The previous runtime's spinning worker is not charged to the next: a local variant runs
    untimed for SETTLE_S before its timed runs of each round; a board's variant does not."""
    calls: list[tuple] = []
    run_s = 0.1  # so settling takes ceil(SETTLE_S / run_s) runs

    def variant(key: str, local: bool) -> Variant:
        def run(x: np.ndarray) -> np.ndarray:
            calls.append((key, "run"))
            time.sleep(run_s)
            return x

        def time_runs(_x: np.ndarray, n: int) -> list[float]:
            calls.append((key, "timed", n))
            return [float(len(calls))] * n
        return Variant(key, run, time_runs, local=local)

    here, board = variant("tvm_tuned", True), variant("tvm_untuned", False)
    x = np.zeros(2, np.float32)
    check_and_time([(here, x, x), (board, x, None)], rounds=2, runs_per_round=3,
                   progress=lambda _m: None)
    assert calls[:2] == [("tvm_tuned", "run"), ("tvm_untuned", "run")]  # warm-up and check
    rounds = "".join("r" if c[1] == "run" else c[0][4] for c in calls[2:])  # t(uned), u(ntuned)
    settle = f"r{{1,{math.ceil(SETTLE_S / run_s)}}}"  # fewer when a slow sleep overshoots
    assert re.fullmatch(f"({settle}tu){{2}}", rounds), calls
    assert len(here.times_ms) == len(board.times_ms) == 6 and here.max_rel_err == 0.0


def test_plot_has_one_labelled_point_per_model(tmp_path) -> None:
    options = CompareOptions(models=["attendnext", "fbnetc_100"])
    report = CompareReport(run=RunInfo(board="host", threads=2, emulated=False, device="local"),
                           options=options, notes=[],
                           results=[_result("attendnext", 3_880_000, 3.0),
                                    _result("fbnetc_100", 5_570_000, 40.0)])
    plot(report, str(tmp_path / "c.png"))
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_numerics_allow_for_the_float32_floor_of_the_reference() -> None:
    # FBNet-C at 128x128 measured: PyTorch float32 is 1.16e-5 from float64, TVM 0.93e-5, and
    # the two float32 outputs differ by 1.31e-5.
    result = _result("fbnetc_100", 5_570_000, 8.0)
    result.variants["tvm"].max_rel_err = 1.31e-5
    result.torch_fp64_err, result.tvm_fp64_err = 1.16e-5, 0.93e-5
    assert result.numerics_ok
    result.torch_fp64_err = 1e-6  # an accurate reference leaves only the 1e-5 tolerance
    assert not result.numerics_ok
    result.variants["tvm"].max_rel_err = 0.9e-5
    assert result.numerics_ok


def test_emulated_numbers_are_labelled() -> None:
    options = CompareOptions(models=["attendnext"])
    report = CompareReport(run=RunInfo(board="rpi4", threads=4, emulated=True,
                                       device="127.0.0.1:9090"),
                           options=options, notes=[],
                           results=[_result("attendnext", 3_880_000, 300.0, host=False)])
    entry = report.as_json()["models"][0]
    assert report.as_json()["emulated"] is True
    assert entry["tvm"]["emulated"] is True and "emulated" in entry["tvm"]["label"]
    assert "onnxruntime" not in entry and entry["vs_baseline"]["onnxruntime"] is None


def test_a_baseline_that_is_not_compared_is_a_user_error() -> None:
    options = CompareOptions(models=["attendnext"], baseline="mobilevit_xs")
    with pytest.raises(UserError, match="baseline 'mobilevit_xs' is not among"):
        run_compare(options, get_board("host"))


def test_a_board_without_a_device_is_refused_before_any_work() -> None:
    from tvmc_attend.device.choice import choose_device

    rpi4 = get_board("rpi4")
    with pytest.raises(UserError, match="--rpc-tracker") as excinfo:
        run_compare(CompareOptions(models=["attendnext"]), rpi4, device=choose_device(rpi4))
    assert "\n" not in str(excinfo.value)


# ------------------------------------------------------------------------- end to end (host)

MODELS = ("attendnext", "mobilenetv3_large_100")
SIZE = 32


@pytest.mark.slow
def test_compare_two_models_on_the_host(tmp_path) -> None:
    json_path, plot_path = tmp_path / "compare.json", tmp_path / "compare.png"
    result = run_cli("compare", "--target", "host", "--models", ",".join(MODELS),
                     "--input-size", SIZE, "--trials", 4, "--rounds", 2, "--runs-per-round", 2,
                     "--log-dir", tmp_path / "logs", "--json", json_path, "--plot", plot_path,
                     timeout=1200)
    assert result.returncode == 0, output(result)
    for name in MODELS:
        assert name in result.stdout
    assert plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(json_path.read_text())
    assert all(k in data for k in TOP_KEYS)
    assert data["baseline"] == "attendnext" and data["emulated"] is False
    assert [m["name"] for m in data["models"]] == list(MODELS)
    for model in data["models"]:
        assert all(k in model for k in MODEL_KEYS)
        assert model["input_shape"] == [1, 3, SIZE, SIZE]
        # a reference that ignores its input would make any compiler look exact
        assert model["reference_sensitivity"] > 1e-2
        for column in ("tvm", "onnxruntime", "torch"):
            entry = model[column]
            assert all(k in entry for k in LATENCY_KEYS)
            assert entry["repeat"] == 4 and np.isfinite(entry["median_ms"])
        assert model["numerics_ok"]
        numerics = model["numerics"]
        assert numerics["tvm_vs_torch"] <= max(1e-5, 2 * numerics["torch_vs_torch_float64"])
        assert model["onnxruntime"]["max_rel_err_vs_torch"] <= 1e-4
        assert model["tuning"]["trials"] == 4 and model["tuning"]["records"] > 0
    assert data["models"][0]["vs_baseline"]["tvm"] == 1.0
