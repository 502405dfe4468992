"""The ``tvmc-attend`` command: one module per verb, registered here in pipeline order."""

from __future__ import annotations

import importlib
import sys
import traceback

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
    "sweep",
    "explore",
    "device",
    "tracker",
    "doctor",
]

app = typer.Typer(
    name="tvmc-attend",
    help="Compile, autotune and ship AttendNeXt and peer backbones to ARM boards with Apache "
         "TVM. Add --debug anywhere to see the traceback behind an error.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

for _module in VERB_MODULES:
    importlib.import_module(f"tvmc_attend.cli.{_module}").register(app)


DEBUG_FLAG = "--debug"  # accepted anywhere on the line: show the traceback behind an error


def run(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default: this process's); its exit code. A UserError
    is printed as one ``error: ...`` line; with ``--debug``, after the traceback behind it."""
    # Before any verb imports TVM: its pool, and those of the processes this one starts
    # (MetaSchedule's runner workers inherit the environment), get every core, not half.
    size_thread_pool()
    args = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in args
    args = [a for a in args if a != DEBUG_FLAG]
    try:
        app(args=args, prog_name="tvmc-attend")
    except UserError as err:
        if debug and err.__cause__ is not None:
            traceback.print_exception(err.__cause__, file=sys.stderr)
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except SystemExit as done:  # click ends every command so, help and usage errors too
        code = done.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()
