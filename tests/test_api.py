"""The Python API: tune -> compile -> run -> load -> benchmark in-process, as the README shows
it, with typed results; bad input raises the CLI's one-line UserError.

The DC-AC block at 8x8 keeps the whole chain to about a minute on a 2-core machine.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import HOST_DB, RTOL, rel_err

import tvmc_attend

MODEL, SIZE = "dcac", 8


def test_import_is_cheap() -> None:
    """`import tvmc_attend` loads neither TVM nor torch: the API loads on first use."""
    import subprocess
    import sys

    code = ("import sys, tvmc_attend; tvmc_attend.UserError; "
            "print('tvm' in sys.modules, 'torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, timeout=120)
    assert result.stdout.split() == ["False", "False"], result.stdout


@pytest.mark.slow
def test_tune_compile_run_load_benchmark(tmp_path) -> None:
    logs = tmp_path / "logs"
    tuned = tvmc_attend.tune(MODEL, "host", input_size=SIZE, trials=4, log_dir=str(logs))
    assert isinstance(tuned, tvmc_attend.TuningResult)
    assert tuned.new_trials >= 1 and tuned.estimated_ms and tuned.estimated_ms > 0
    assert tuned.database == str((logs / HOST_DB / MODEL).resolve())

    out = tmp_path / "bundle"
    bundle = tvmc_attend.compile(MODEL, "host", str(out), input_size=SIZE, log_dir=str(logs))
    assert isinstance(bundle, tvmc_attend.Bundle)
    assert bundle.metadata.tuned and bundle.metadata.verified is not None

    x = np.random.default_rng(0).standard_normal((1, 40, SIZE, SIZE)).astype(np.float32)
    ran = tvmc_attend.run(str(out), x, repeat=2)
    assert isinstance(ran, tvmc_attend.RunResult) and ran.where == "local"
    assert ran.threads >= 1 and ran.latency.median_ms > 0
    model = tvmc_attend.load(str(out))
    assert rel_err(model(x), ran.output) <= RTOL

    import torch

    from tvmc_attend.models import create_model

    reference = create_model(MODEL, input_size=SIZE, seed=0)
    with torch.no_grad():
        expected = reference(torch.from_numpy(x)).numpy()
    assert rel_err(ran.output, expected) <= RTOL

    report = tvmc_attend.benchmark(MODEL, "host", input_size=SIZE, log_dir=str(logs),
                                   rounds=1, runs_per_round=1, progress=lambda _m: None)
    assert isinstance(report, tvmc_attend.BenchmarkResult)
    assert {"tvm_untuned", "tvm_tuned", "onnxruntime", "torch"} <= \
        {v.key for v in report.variants}


@pytest.mark.parametrize(
    ("call", "fragment"),
    [
        (lambda tmp: tvmc_attend.compile("resnet9000", output=str(tmp / "b")), "valid models"),
        (lambda tmp: tvmc_attend.compile(MODEL, "rpi9", output=str(tmp / "b")), "rpi9"),
        (lambda tmp: tvmc_attend.run(str(tmp / "nowhere")), "does not exist"),
        (lambda tmp: tvmc_attend.tune(MODEL, "rpi4", log_dir=str(tmp)), "is a board"),
        (lambda tmp: tvmc_attend.tune(MODEL, trials=0, log_dir=str(tmp)), "at least 1"),
        (lambda tmp: tvmc_attend.load(str(tmp)), "metadata"),
    ],
)
def test_bad_input_raises_user_error(call, fragment, tmp_path) -> None:
    with pytest.raises(tvmc_attend.UserError) as raised:
        call(tmp_path)
    message = str(raised.value)
    assert fragment in message and "\n" not in message, message
