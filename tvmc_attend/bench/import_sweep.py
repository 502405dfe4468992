"""The import sweep: does any CNN a user brings compile, and where does it fail?

Every model is built (random weights, seeded), exported three ways: PyTorch's TorchScript ONNX
exporter (``dynamo=False``, how most ONNX files in circulation were made), its dynamo ONNX
exporter, and ``torch.export`` (``.pt2``), then each file is compiled untuned for each target by
``tvmc-attend compile`` in its own process (a crash or a hang in one build cannot end the sweep)
and verified against ONNX Runtime or PyTorch (a board build on its host twin). A failure is
recorded by the stage its one-line error names. Results are written after every build, and a
rerun with the same JSON resumes: builds already recorded are not repeated.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from tvmc_attend.compiler.stages import first_line
from tvmc_attend.errors import UserError
from tvmc_attend.files import write_json_atomic, write_text_atomic
from tvmc_attend.timestamps import utc_timestamp

from .report import machine_info

# The goal list: one or two of every torchvision family, at their trained sizes.
TORCHVISION_MODELS = (
    "resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2", "regnet_y_400mf",
    "regnet_x_400mf", "mobilenet_v2", "mobilenet_v3_large", "mnasnet1_0", "shufflenet_v2_x1_0",
    "squeezenet1_0", "densenet121", "googlenet", "inception_v3", "efficientnet_b0",
    "efficientnet_b1", "efficientnet_b2", "efficientnet_b3", "efficientnet_v2_s",
    "convnext_tiny", "vit_b_16", "swin_t", "maxvit_t",
)
# Mobile backbones from timm that edge users reach for.
TIMM_MODELS = (
    "mobilenetv3_large_100", "mobilenetv4_conv_small", "efficientnet_lite0", "ghostnet_100",
    "mobileone_s0", "fbnetc_100", "mobilevit_xs", "lcnet_100", "repvit_m1", "efficientvit_b0",
    "fastvit_t8", "edgenext_xx_small",
)
DEFAULT_MODELS = tuple(f"torchvision:{m}" for m in TORCHVISION_MODELS) + \
    tuple(f"timm:{m}" for m in TIMM_MODELS)
PATHS = ("torchscript", "dynamo", "export")  # how the model reaches the compiler
BOARD_MAX_PARAMS = 50e6  # larger models are built for the host only
COMPILE_TIMEOUT_S = 1800


@dataclass
class Build:
    """One (model, path, target): ok, or the stage and the error that stopped it."""

    model: str
    path: str
    target: str
    ok: bool
    stage: str | None = None  # "export", "import (TVM's ONNX frontend)", "build", ...
    error: str | None = None
    seconds: float = 0.0
    max_rel_err: float | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.model, self.path, self.target)


@dataclass
class SweepReport:
    date: str
    machine: dict[str, Any]
    params: dict[str, float] = field(default_factory=dict)  # model -> parameters
    builds: list[Build] = field(default_factory=list)

    @property
    def targets(self) -> list[str]:
        """The targets built for, in first-built order (a resumed run may add some)."""
        return list(dict.fromkeys(b.target for b in self.builds))

    def as_json(self) -> dict[str, Any]:
        return {"date": self.date, "machine": self.machine, "targets": self.targets,
                "params": self.params, "builds": [asdict(b) for b in self.builds]}

    @classmethod
    def load(cls, path: str) -> SweepReport | None:
        """The report at ``path`` to resume; None when there is none yet."""
        if not os.path.isfile(path):
            return None
        try:
            with open(path) as f:
                data = json.load(f)
            return cls(date=data["date"], machine=data["machine"], params=data["params"],
                       builds=[Build(**b) for b in data["builds"]])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise UserError(f"{path} is not a sweep report to resume ({type(err).__name__}); "
                            "pass another --json file") from None


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporters' progress, warnings and logged fallbacks off the sweep's output."""
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with (warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()),
              contextlib.redirect_stderr(io.StringIO())):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def export_model(module: Any, shape: Sequence[int], path: str, directory: str) -> str:
    """``module`` exported by ``path`` (one of PATHS) into ``directory``; the file."""
    import torch

    example = torch.randn(*shape)
    if path == "export":
        out = os.path.join(directory, "model.pt2")
        with _quiet(), torch.no_grad():
            torch.export.save(torch.export.export(module, (example,)), out)
        return out
    out = os.path.join(directory, f"model-{path}.onnx")
    with _quiet():
        torch.onnx.export(module, (example,), out, dynamo=path == "dynamo", input_names=["x"],
                          output_names=["y"], opset_version=17)
    return out


_ERROR = re.compile(r"^error: (?:(?P<stage>[^:]+?) failed(?: at [^:]+)?: )?(?P<message>.*)$")
_VERIFIED = re.compile(r"max relative error ([0-9.e+-]+)")


def compile_file(model: str, path: str, model_file: str, target: str, out_dir: str,
                 cli: Sequence[str]) -> Build:
    """``tvmc-attend compile`` of ``model_file`` (``model`` exported by ``path``) for
    ``target``, untuned and verified, in its own process."""
    start = time.perf_counter()
    try:
        done = subprocess.run([*cli, "compile", "--model", model_file, "--target", target,
                               "-o", out_dir, "--untuned"], capture_output=True, text=True,
                              timeout=COMPILE_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return Build(model, path, target, False, "compile",
                     f"no result in {COMPILE_TIMEOUT_S} s", time.perf_counter() - start)
    seconds = time.perf_counter() - start
    if done.returncode == 0:
        found = _VERIFIED.search(done.stdout)
        return Build(model, path, target, True, seconds=seconds,
                     max_rel_err=float(found.group(1)) if found else None)
    lines = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    if not lines:  # not one of our errors: a crash, or a traceback we failed to catch
        tail = [line for line in done.stderr.splitlines() if line.strip()][-1:] or ["?"]
        return Build(model, path, target, False, "crash",
                     f"exit {done.returncode}: {tail[0][:200]}", seconds)
    match = _ERROR.match(lines[-1])
    return Build(model, path, target, False, match.group("stage") or "check",
                 match.group("message")[:300], seconds)


def run_sweep(models: Sequence[str], targets: Sequence[str], json_path: str,
              paths: Sequence[str] = PATHS, progress: Callable[[str], None] = print,
              markdown_path: str | None = None) -> SweepReport:
    """Sweep ``models`` x ``paths`` x ``targets``, resuming from ``json_path``."""
    from tvmc_attend.models import create_model, get_model_spec, model_stats

    report = SweepReport.load(json_path) or SweepReport(date=utc_timestamp(),
                                                        machine=machine_info())
    done = {b.key for b in report.builds}
    cli = [sys.executable, "-m", "tvmc_attend.cli.main"]
    for name in models:
        todo = [(p, t) for p in paths for t in targets if (name, p, t) not in done]
        if not todo:
            continue
        try:
            module = create_model(name, seed=0)
            shape = get_model_spec(name).default_input_shape
            report.params[name] = float(model_stats(module, shape).params)
        except Exception as err:  # noqa: BLE001  (recorded: the sweep goes on)
            for p, t in todo:
                report.builds.append(Build(name, p, t, False, "model", first_line(err)))
            _save(report, json_path, markdown_path)
            continue
        for path in dict.fromkeys(p for p, _ in todo):
            with tempfile.TemporaryDirectory(prefix="tvmc-attend-sweep-") as tmp:
                try:
                    model_file, failure = export_model(module, shape, path, tmp), None
                except Exception as err:  # noqa: BLE001
                    model_file, failure = None, first_line(err)
                for target in (t for p, t in todo if p == path):
                    if failure is not None:
                        build = Build(name, path, target, False, f"export ({path})", failure)
                    elif target != "host" and report.params[name] > BOARD_MAX_PARAMS:
                        build = Build(name, path, target, False, "skipped",
                                      f"{report.params[name] / 1e6:.0f} M parameters > "
                                      f"{BOARD_MAX_PARAMS / 1e6:.0f} M: host only")
                    else:
                        build = compile_file(name, path, model_file, target,
                                             os.path.join(tmp, f"bundle-{target}"), cli)
                    report.builds.append(build)
                    progress(_line(build))
                    _save(report, json_path, markdown_path)
    _save(report, json_path, markdown_path)
    return report


def _line(build: Build) -> str:
    what = f"ok ({build.max_rel_err:.1e})" if build.ok else f"{build.stage}: {build.error}"
    return f"{build.model} {build.path} {build.target}: {what} [{build.seconds:.0f} s]"


def _save(report: SweepReport, json_path: str, markdown_path: str | None) -> None:
    write_json_atomic(json_path, report.as_json())
    if markdown_path:
        write_text_atomic(markdown_path, markdown_table(report))


def markdown_table(report: SweepReport) -> str:
    """model | params | one column per (path, target): ok and seconds, or the failing stage."""
    columns = [(p, t) for p in PATHS for t in report.targets
               if any(b.path == p and b.target == t for b in report.builds)]
    cells = {b.key: b for b in report.builds}
    head = ["model", "params M", *(f"{p} {t}" for p, t in columns)]
    rows = [f"| {' | '.join(head)} |", f"|{'---|' * len(head)}"]
    for name in dict.fromkeys(b.model for b in report.builds):
        row = [name, f"{report.params.get(name, 0) / 1e6:.1f}"]
        for p, t in columns:
            build = cells.get((name, p, t))
            if build is None:
                row.append("")
            elif build.ok:
                row.append(f"ok {build.seconds:.0f} s")
            else:
                row.append(f"**{build.stage}**: {build.error}".replace("|", "/"))
        rows.append(f"| {' | '.join(row)} |")
    ok = sum(b.ok for b in report.builds)
    tried = sum(b.stage != "skipped" for b in report.builds)
    return (f"Import sweep, {report.date}, {report.machine.get('cpu')} "
            f"({report.machine.get('cores')} cores): {ok} of {tried} builds compiled and "
            "verified (untuned; a board build verified on its host twin).\n\n"
            + "\n".join(rows) + "\n")
