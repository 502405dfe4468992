"""The ``tvmc-attend`` command: one module per verb, registered here in pipeline order."""

from __future__ import annotations

import importlib
import sys

import typer

from tvmc_attend.errors import UserError
from tvmc_attend.threads import size_thread_pool

# Each module defines ``register(app)``; the order is the order of `--help`.
VERB_MODULES = [
    "models",
    "targets",
    "compile",
    "run",
    "tune",
    "db",
    "benchmark",
    "compare",
    "explore",
    "device",
    "tracker",
    "doctor",
]

app = typer.Typer(
    name="tvmc-attend",
    help="Compile, autotune and ship AttendNeXt and peer backbones to ARM boards with Apache TVM.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

for _module in VERB_MODULES:
    importlib.import_module(f"tvmc_attend.cli.{_module}").register(app)


def main() -> None:
    # Before any verb imports TVM: its pool, and those of the processes this one starts
    # (MetaSchedule's runner workers inherit the environment), get every core, not half.
    size_thread_pool()
    try:
        app()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)


if __name__ == "__main__":
    main()
