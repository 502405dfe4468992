"""Small helpers shared by the compile/run/tune tests (not fixtures: see conftest.py for those)."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tvmc_attend.targets import get_board

REPO = Path(__file__).resolve().parent.parent
RTOL = 1e-5  # max|a - b| / max|b|
# Where `tune --target host` keeps its databases on this machine: its CPU class's folder
# (host-avx512 or host-avx2), shared by every CPU of the class.
HOST_DB = get_board("host").database_name


def cli_path() -> str:
    """The installed ``tvmc-attend`` entry point of this interpreter's environment."""
    beside = Path(sys.executable).parent / "tvmc-attend"
    if beside.exists():
        return str(beside)
    found = shutil.which("tvmc-attend")
    assert found, "tvmc-attend is not installed (pip install -e .)"
    return found


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env["COLUMNS"] = "200"  # rich wraps long lines at 80 columns when not on a terminal
    return env


def run_cli(*args: str, timeout: float = 600, cwd: Path | str | None = None,
            ) -> subprocess.CompletedProcess:
    """Run ``tvmc-attend ARGS`` to completion; capture stdout and stderr as text."""
    return subprocess.run([cli_path(), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, check=False, cwd=cwd or REPO, env=cli_env())


@dataclass
class CliResult:
    """What ``cli_here`` returns: a CompletedProcess's three fields."""

    returncode: int
    stdout: str
    stderr: str


def cli_here(*args: str | Path) -> CliResult:
    """Run ``tvmc-attend ARGS`` in this process (the CLI app, as the entry point runs it):
    milliseconds where a process would spend seconds starting. For error paths and help; what
    needs its own process (signals, the entry point itself, a clean sys.modules) uses
    ``run_cli``."""
    from tvmc_attend.cli.main import run

    out, err = io.StringIO(), io.StringIO()
    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = cli_env()["COLUMNS"]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = run([str(a) for a in args])
    finally:
        if columns is None:
            os.environ.pop("COLUMNS")
        else:
            os.environ["COLUMNS"] = columns
    return CliResult(code, out.getvalue(), err.getvalue())


def start_cli(*args: str, cwd: Path | str | None = None) -> subprocess.Popen:
    """Start ``tvmc-attend ARGS`` in its own process group (for SIGINT / cleanup)."""
    return subprocess.Popen([cli_path(), *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=cwd or REPO, env=cli_env(),
                            start_new_session=True)


@contextlib.contextmanager
def running_cli(*args: str | Path, cwd: Path | str | None = None
                ) -> Iterator[subprocess.Popen]:
    """``tvmc-attend ARGS`` in its own process group, gone with its children on leaving."""
    proc = start_cli(*args, cwd=cwd)
    try:
        yield proc
    finally:
        kill_group(proc)


def kill_group(proc: subprocess.Popen) -> None:
    """Make sure a process started with start_new_session is gone, children included."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.communicate(timeout=30)


def output(result: subprocess.CompletedProcess | Any) -> str:
    return f"--- exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"


def meaningful_lines(text: str) -> list[str]:
    """Lines of ``text`` minus TVM's C++ log noise (``[hh:mm:ss] /project/src/...``)."""
    lines = []
    skip_continuation = False
    for line in text.splitlines():
        if re.match(r"^\[\d\d:\d\d:\d\d\] ", line):
            skip_continuation = True
            continue
        if skip_continuation and line.startswith("  "):
            continue
        skip_continuation = False
        if line.strip():
            lines.append(line)
    return lines


def assert_cli_error(result: subprocess.CompletedProcess | CliResult,
                     *fragments: str) -> str:
    """A failed command: non-zero exit, one ``error: ...`` line on stderr, no traceback."""
    assert result.returncode != 0, output(result)
    assert "Traceback" not in result.stdout + result.stderr, output(result)
    errors = [line for line in meaningful_lines(result.stderr) if line.startswith("error: ")]
    assert len(errors) == 1, output(result)
    assert not [line for line in meaningful_lines(result.stderr)
                if not line.startswith(("error: ", "warning: "))], output(result)
    message = errors[0]
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}\n{output(result)}"
    return message


def rel_err(actual: np.ndarray, reference: np.ndarray) -> float:
    actual, reference = np.asarray(actual, np.float64), np.asarray(reference, np.float64)
    assert actual.shape == reference.shape, (actual.shape, reference.shape)
    return float(np.abs(actual - reference).max() / np.abs(reference).max())


def inputs(shape: tuple[int, ...], n: int = 2, seed: int = 1234) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype("float32") for _ in range(n)]


def torch_reference(module: Any, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        out = module(torch.from_numpy(np.ascontiguousarray(x)))
    if isinstance(out, (tuple, list)):
        (out,) = out
    return out.numpy()


def assert_depends_on_input(module: Any, xs: list[np.ndarray]) -> list[np.ndarray]:
    """The reference must react to its input (a collapsed network tests nothing); returns
    the reference outputs."""
    refs = [torch_reference(module, x) for x in xs]
    for ref in refs:
        assert np.isfinite(ref).all()
        assert np.abs(ref).max() > 0
    assert rel_err(refs[0], refs[1]) > 1e-2, "the reference output ignores its input"
    assert refs[0].std() / np.abs(refs[0]).mean() > 1e-3, "the reference output is constant"
    return refs


def import_bundle_loader(bundle: Path) -> Any:
    """Import the bundle's own copy of attend_runtime.py (not the installed package's)."""
    path = bundle / "attend_runtime.py"
    name = f"bundle_attend_runtime_{abs(hash(str(bundle)))}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    assert Path(module.__file__).resolve() == path.resolve()
    return module


def assert_bundle_matches(bundle: Path, reference: Any, shape: tuple[int, ...] | None = None,
                          remote: Any = None, rtol: float = RTOL) -> None:
    """Run the bundle through its own loader (``remote``: an RPC session) on two random inputs
    of ``shape`` (default: the bundle's input) and compare with ``reference``: a PyTorch
    module, which must react to its input, or a numpy -> numpy callable (ONNX Runtime's)."""
    import json

    import torch

    if shape is None:
        shape = tuple(json.loads((bundle / "metadata.json").read_text())["input"]["shape"])
    xs = inputs(shape)
    if isinstance(reference, torch.nn.Module):
        refs = assert_depends_on_input(reference, xs)
    else:
        refs = [reference(x) for x in xs]
    model = import_bundle_loader(bundle).load(str(bundle), remote=remote)
    for x, ref in zip(xs, refs, strict=True):
        err = rel_err(model(x), ref)
        assert err <= rtol, f"relative error {err:.3g} > {rtol}"


def onnx_reference(path: Path) -> Any:
    """ONNX Runtime's answer for a one-input, one-output model file, as a numpy callable."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def record_count(database_dir: Path) -> int:
    path = Path(database_dir) / "database_tuning_record.json"
    if not path.is_file():
        return 0
    with open(path) as f:
        return sum(1 for line in f if line.strip())


TRIALS_RE = re.compile(r"trials (\d+)/(\d+) \((\d+) new")


def tune_summary(text: str) -> tuple[int, int, int]:
    """(done, budget, new) from the last summary line of `tvmc-attend tune`."""
    found = TRIALS_RE.findall(text)
    assert found, f"no summary line in:\n{text}"
    done, budget, new = found[-1]
    return int(done), int(budget), int(new)


def wait_until(predicate, timeout_s: float, what: str, interval_s: float = 0.5,
               proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"process exited ({proc.returncode}) before {what}:\n{out}\n{err}")
        assert time.monotonic() < deadline, f"{what} within {timeout_s} s"
        time.sleep(interval_s)


def elf_header(path: Path) -> tuple[int, int, int]:
    """(EI_CLASS, EI_DATA, e_machine) of an ELF file."""
    data = Path(path).read_bytes()[:20]
    assert data[:4] == b"\x7fELF", f"{path} is not an ELF file"
    ei_class, ei_data = data[4], data[5]
    e_machine = int.from_bytes(data[18:20], "little" if ei_data == 1 else "big")
    return ei_class, ei_data, e_machine


EM_X86_64 = 62
EM_AARCH64 = 183


def op_names(mod: Any) -> set[str]:
    """The names of the Relax operators that main of ``mod`` calls."""
    from tvm import relax

    names: set[str] = set()
    relax.analysis.post_order_visit(
        mod["main"], lambda e: names.add(e.op.name) if isinstance(e, relax.Call)
        and hasattr(e.op, "name") else None)
    return names
