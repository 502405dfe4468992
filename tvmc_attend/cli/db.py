"""`tvmc-attend db check DIR [--repair] [--deep]`: what a tuning database holds, what is wrong
with it, and (with --repair, under the database's lock) the files rewritten without it."""

from __future__ import annotations

import json
import os
from typing import Any

import typer

from tvmc_attend.errors import UserError

db_app = typer.Typer(
    help="Tuning databases (tuning_logs/<target>/<model>/): check and repair.",
    no_args_is_help=True,
)


def _shape(shape: list[int]) -> str:
    return "x".join(map(str, shape))


@db_app.command("check")
def check_command(
    directory: str = typer.Argument(..., help="A database, e.g. tuning_logs/host/attendnext."),
    repair: bool = typer.Option(
        False, "--repair",
        help="Rewrite the files without what is wrong (waits for a tune using the database)."),
    deep: bool = typer.Option(
        False, "--deep", help="Also replay every record's trace on its workload (slower)."),
    no_wait: bool = typer.Option(
        False, "--no-wait", help="With --repair: exit at once if a tune is using the database."),
) -> None:
    """Check every workload and record line; exit 1 if problems remain unrepaired."""
    from tvmc_attend.compiler.tuning.database import TuningDatabase

    if not os.path.isdir(directory):
        raise UserError(f"no such directory: {directory}")
    database = TuningDatabase(directory)
    info = database.read_info()  # a one-line error if this is not a database
    holder = None if repair else database.in_use_by()
    check = database.check(deep=deep, repair=repair, wait=not no_wait)

    shapes = ", ".join(_shape(s) for s in info.input_shapes) or "not recorded"
    if info.counted:
        cpu = (info.core_model or {}).get("qemu_cpu", "?")
        how = f"counted (not timed) on an emulated {cpu} core"
    else:
        how = f"{'emulated' if info.emulated else 'measured'} on {', '.join(info.devices) or '?'}"
    print(f"database: {database.path}")
    print(f"identity: {info.model} for {info.target_name} {json.dumps(info.target)}; input "
          f"shapes {shapes}; {how}; TVM {info.tvm_version or '?'}; updated {info.updated}")
    if info.cpu_class:
        print(f"CPU class: {info.cpu_class} (applies on any CPU of it); "
              f"{info.describe_origin()}")
    if holder:
        print(f"in use by {holder}: a torn last line may be a write in progress")
    print(f"workloads: {check.workloads} ({check.workload_lines} lines)")
    for i, (n, args) in enumerate(zip(check.records_per_workload, check.workload_args,
                                      strict=True)):
        print(f"  {i}: {n} records  {args}")
    print(f"records: {check.records} ({check.record_lines} lines)")
    print(f"torn lines: {check.torn}")
    print(f"duplicate workloads: {check.duplicate_workloads} ({check.remapped} "
          f"record{'' if check.remapped == 1 else 's'} remapped to the first copy)")
    print(f"out-of-range records: {check.out_of_range}")
    print(f"mis-attached records: {check.mis_attached} (argument shapes not their workload's)")
    if check.unreplayable is not None:
        print(f"unreplayable records: {check.unreplayable} (trace does not replay as recorded "
              "on its workload)")
    if deep:
        _print_defaults(check, info)
    if not check.problems:
        print("ok")
    elif repair:
        print(f"repaired: {check.describe()}")
    else:
        flags = "--repair --deep" if deep else "--repair"
        print(f"{check.problems} problem{'' if check.problems == 1 else 's'}: run "
              f"`tvmc-attend db check {flags} {directory}` to repair them")
        raise typer.Exit(1)


def _print_defaults(check: Any, info: Any) -> None:
    """--deep: the workloads whose default schedule no record beats, and those whose default
    was never measured (databases tuned before defaults were)."""
    import tvm

    from tvmc_attend.compiler.tuning.defaults import default_verdicts

    target = tvm.target.Target(info.target)
    mods = check.workload_mods()
    verdicts = default_verdicts(check.load(), mods, target)
    wins = [i for i, v in enumerate(verdicts) if v]
    unmeasured = [i for i, v in enumerate(verdicts) if v is None]
    print(f"default schedules: no record beats the default on {len(wins)} workloads "
          f"{wins}; never measured on {len(unmeasured)} {unmeasured}")


def register(app: typer.Typer) -> None:
    app.add_typer(db_app, name="db")
