"""The compiler's stages, named: a failure inside one becomes a one-line ``StageError``.

TVM reports a failure deep in a pass or a frontend as a long traceback ending in a check
message. A user needs the stage (import, a graph rewrite, layout conversion, lowering, tuning,
build), the operator or pass when it is known, and what to try; ``--debug`` shows the
traceback (kept as the error's ``__cause__``). TVM-free: the CLI imports it to print errors.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from tvmc_attend.errors import UserError

# What to try when a stage fails, by stage, or by kind of stage ("graph rewrite" for
# "graph rewrite (FoldBatchNorm)"); reporting the file is added to every message.
TRIES: dict[str, tuple[str, ...]] = {
    "import": ("re-export the model (torch.onnx.export(..., dynamo=True) or torch.export)",
               "--input-shape with the shape it runs at"),
    "graph rewrite (FuseDCAC)": ("--no-fuse-dcac",),
    "layout conversion": ("--layout nchw",),
    "lowering": ("--layout nchw", "--no-fuse-dcac"),
    "applying tuning records": ("--untuned",),
    "tuning": ("--layout nchw", "--no-fuse-dcac"),
    "build": ("--untuned", "--layout nchw"),
}


class StageError(UserError):
    """A compiler stage failed on this model: one line naming the stage, the operator or pass
    when known, the first line of TVM's message and what to try."""

    exit_code = 3

    def __init__(self, stage: str, cause: BaseException, where: str | None = None) -> None:
        self.stage = stage
        self.where = where
        known = TRIES.get(stage, TRIES.get(stage.split(" (")[0], ()))
        tries = [*known, "report the model file with the output of --debug"]
        at = f" at {where}" if where else ""
        super().__init__(f"{stage} failed{at}: {first_line(cause)}; try {', '.join(tries)}")


def first_line(err: BaseException) -> str:
    """The message line that says what went wrong (TVM puts a traceback before it)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith(("File ", "Traceback", "  "))]
    for line in lines:
        if "Check failed" in line or "Error" in line.split(":")[0]:
            return _clip(line)
    if not lines:
        return type(err).__name__
    return _clip(f"{type(err).__name__}: {lines[-1]}")


def _clip(text: str, limit: int = 240) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


@contextmanager
def stage(name: str, where: str | None = None) -> Iterator[None]:
    """Run a block as the stage ``name``: anything but a UserError it raises becomes a
    StageError (KeyboardInterrupt passes through)."""
    try:
        yield
    except UserError:
        raise
    except Exception as err:
        raise StageError(name, err, where) from err


def run_passes(passes: Sequence[Any], mod: Any, kind: str = "graph rewrite") -> Any:
    """Apply ``passes`` in order, each as its own stage named by the pass."""
    for step in passes:
        with stage(f"{kind} ({_pass_name(step)})"):
            mod = step(mod)
    return mod


def _pass_name(step: Any) -> str:
    info = getattr(step, "info", None)
    return getattr(info, "name", None) or type(step).__name__
