"""`tvmc-attend tune`: MetaSchedule tuning, locally or over RPC, resumable, with live progress."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from . import options
from .options import DeviceRequest, ModelFlags

if TYPE_CHECKING:
    from tvmc_attend.compiler.tuning.progress import ProgressHook, TuneResult


def _fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def task_table(result: TuneResult, title: str) -> Table:
    """Per-task table: where the model's time (or counted cost) goes and where the trials
    went. Counted costs are shown as Mcycles, with no GFLOP/s: they are not latencies."""
    label = " (emulated)" if result.emulated else ""
    best = "best Mcycles (counted)" if result.counted else f"best ms{label}"
    speed = () if result.counted else ("GFLOP/s",)
    table = Table(title=title)
    for col in ("#", "task", "MFLOP", "calls", best, *speed, "share", "trials", "errors"):
        table.add_column(col, justify="left" if col == "task" else "right")
    for i, t in enumerate(result.tasks):
        share = result.share(t)
        speed_value = result.gflops(t)
        gflops = () if result.counted else (f"{speed_value:.1f}" if speed_value else "-",)
        table.add_row(str(i), t.name[:44], f"{t.flops / 1e6:.1f}", f"{t.weight:g}",
                      _fmt_ms(t.best), *gflops,
                      f"{100 * share:.1f}%" if share is not None else "-", str(t.done),
                      str(t.errors) if t.errors else "")
    return table


def summary_line(result: TuneResult) -> str:
    label = " (emulated)" if result.emulated else ""
    done = sum(t.done for t in result.tasks)
    cost = (f"counted cost {_fmt_ms(result.counted_mcycles)} Mcycles (not a latency)"
            if result.counted else f"estimated latency{label} {_fmt_ms(result.estimated_ms)} ms")
    # a replay is a candidate the search offered again, answered from the database
    replayed = f", {result.replayed} known answered from the database" if result.replayed else ""
    return (f"trials {done}/{result.budget} ({result.new_trials} new{replayed}, "
            f"{result.trials_per_minute:.1f} trials/min) | {cost} | {result.seconds:.0f} s "
            f"on {result.device}")


@options.with_device_flags
@options.with_model_flags
def tune_command(
    model: str = options.MODEL,
    target: str = options.TARGET,
    trials: int = typer.Option(
        200, "--trials", min=1,
        help="Total trial budget (all tasks; the last round may pass it by less than one "
             "round, as MetaSchedule's own does)."),
    trials_per_task: int | None = typer.Option(
        None, "--trials-per-task", min=1,
        help="Per-task cap (default: none; trials go where the model's time is)."),
    trials_per_round: int | None = typer.Option(
        None, "--trials-per-round", min=1,
        help="Candidates per search round (default: 2-16, so that every task gets one)."),
    log_dir: str | None = options.LOG_DIR,
    counted: bool = typer.Option(
        False, "--counted",
        help="No board needed: rank candidates by their counted cost (instructions and "
             "simulated cache misses) on an emulated core of the target, not by time. The "
             "database records measured_by: counted; a later tune on a real board replaces it."),
    warm_start: bool = typer.Option(
        True, "--warm-start/--no-warm-start",
        help="Start each task the database has no record of from the 2 best schedules of "
             "the database shipped for this target and model, measured here first (their "
             "run times elsewhere are not copied)."),
    warm_start_from: str | None = typer.Option(
        None, "--warm-start-from",
        help="Warm-start from the database of this target and model under this tuning-log "
             "root (e.g. a colleague's --log-dir) instead of the shipped one."),
    no_wait: bool = typer.Option(
        False, "--no-wait",
        help="Exit at once if another tune is using the database (default: wait for it)."),
    json_path: str | None = options.json_report(
        "Write the per-task table and the run's figures as JSON."),
    model_flags: ModelFlags = options.NO_MODEL_FLAGS,
    device: DeviceRequest = options.NO_DEVICE_FLAGS,
) -> None:
    """Tune a model's operators for a board; rerun to resume (records are never re-measured)."""
    from tvmc_attend import api

    result = _with_progress(lambda on_progress: api.tune(
        model, target, trials=trials, trials_per_task=trials_per_task,
        trials_per_round=trials_per_round, log_dir=log_dir, **model_flags.as_kwargs(),
        counted=counted, wait=not no_wait, warm_start=warm_start,
        warm_start_from=warm_start_from, device=device, on_progress=on_progress))
    # Off a terminal (a log file, CI), wide enough for whole task names.
    console = Console(width=None if Console().is_terminal else 160)
    console.print(task_table(result, f"{result.model} on {result.board}"))
    console.print(summary_line(result))
    if result.defaults_measured:
        console.print(f"default schedules measured: {result.defaults_measured} (what an "
                      "untuned build runs; the search's records must beat them to be used)")
    if result.seed:
        console.print(f"warm start: {result.seeded} schedules of {result.seed} measured "
                      "here first")
    console.print(f"database: {result.database}")
    if json_path:
        from tvmc_attend.files import write_json_atomic

        write_json_atomic(json_path, result.as_json())
    if result.stopped:
        console.print(f"[bold]stopped:[/bold] {result.stopped}. Every record measured so far "
                      "is in the database; rerun the same command to resume.")
        sys.exit(130 if "Ctrl-C" in result.stopped else 1)


def _with_progress(run: Callable[[ProgressHook], TuneResult]) -> TuneResult:
    """``run(on_progress)`` with a live table on a terminal, else a line every 30 s (a log
    file or CI would only show a live table at the end)."""
    from tvmc_attend.compiler.tuning.progress import at_most_every

    console = Console()
    if not console.is_terminal:
        return run(at_most_every(30.0, lambda r: console.print(summary_line(r))))
    with Live(Text("importing the model and extracting tasks..."), console=console,
              auto_refresh=False, transient=True) as live:
        return run(lambda r: live.update(Group(Text(summary_line(r)), task_table(r, "tuning")),
                                         refresh=True))


def register(app: typer.Typer) -> None:
    app.command("tune")(tune_command)
