"""`tvmc-attend explore`: seeded design-space search over AttendNeXt, hardware in the loop."""

from __future__ import annotations

import os
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from . import options
from .options import DeviceRequest
from .report import show_report


def front_table(report: Any) -> Table:
    label = report.run.label
    o = report.options
    table = Table(title=f"Pareto front on {report.run.board}{label}: seed {o.seed}, "
                        f"{sum(c.variant is not None for c in report.candidates)} measured of "
                        f"{len(report.candidates)} screened, {report.run.date}")
    for col in ("name", "params M", f"GMACs@{o.input_size}", "NASWOT",
                f"ms@{o.input_size}{label}", "p10", "p90", "widths", "depths", "DC-AC",
                "r", "g", "origin"):
        table.add_column(col, justify="left" if col in ("name", "origin") else "right")
    for c in report.front:
        s = c.variant.stats()
        d = c.design
        table.add_row(c.name, f"{c.params / 1e6:.2f}", f"{c.macs / 1e9:.3f}", f"{c.proxy:.2f}",
                      f"{s.median_ms:.2f}", f"{s.p10_ms:.2f}", f"{s.p90_ms:.2f}",
                      "/".join(map(str, d.widths)), "/".join(map(str, d.depths)),
                      "".join("1" if b else "0" for b in d.dcac), str(d.dcac_reduction),
                      str(d.groups), c.origin)
    return table


@options.with_device_flags
def explore_command(
    target: str = options.TARGET,
    max_params: float = typer.Option(..., "--max-params", min=1,
                                     help="Parameter limit (e.g. 3.9e6)."),
    max_latency: float | None = typer.Option(
        None, "--max-latency", min=0, help="Latency limit in ms, at --input-size on the target."),
    budget: int = typer.Option(12, "--budget", min=1,
                               help="Designs compiled and timed on the target."),
    screen: int | None = typer.Option(
        None, "--screen", min=1,
        help="Designs scored training-free before measuring (default 4 x budget, >= 16)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the search, the weights and the "
                                                 "proxy's input batch."),
    input_size: int = typer.Option(128, "--input-size",
                                   help="Timing resolution, multiple of 32 (224: the paper's)."),
    trials: int = typer.Option(0, "--trials", min=0,
                               help="Tuning trials per measured design (0: untuned build)."),
    latency_tolerance: float = typer.Option(
        0.1, "--latency-tolerance", min=0,
        help="Relative latency band treated as equal on the front (measurement noise)."),
    rounds: int = options.rounds(5, each="timed design"),
    runs_per_round: int = options.runs_per_round(2, each="design"),
    json_path: str | None = options.json_report("Report JSON (default <out>/front.json)."),
    plot_path: str | None = options.plot("Front plot PNG (default <out>/front.png)."),
    out: str = typer.Option("explored", "--out",
                            help="Where front members' configs (and bundles) are saved."),
    log_dir: str | None = options.LOG_DIR,
    device: DeviceRequest = options.NO_DEVICE_FLAGS,
) -> None:
    """Search AttendNeXt's design space under limits; save the Pareto front by name."""
    from tvmc_attend.explore.search import ExploreOptions, explore, plot
    from tvmc_attend.models.saved import ENV_DIRS, search_dirs
    from tvmc_attend.targets import get_board

    board = get_board(target)
    opts = ExploreOptions(max_params=int(max_params), max_latency_ms=max_latency, budget=budget,
                          screen=screen, seed=seed, input_size=input_size, trials=trials,
                          latency_tolerance=latency_tolerance, rounds=rounds,
                          runs_per_round=runs_per_round, out_dir=out, log_dir=log_dir)
    report = explore(opts, board, device=device.choose(board),
                     progress=lambda m: typer.echo(m, err=True))
    show_report(report, [front_table(report)], report.notes, width=160,
                json_path=json_path or os.path.join(out, "front.json"),
                plot_path=plot_path or os.path.join(out, "front.png"), plot=plot)
    if report.front:
        console = Console(width=None if Console().is_terminal else 160)
        found = os.path.abspath(out) in map(os.path.abspath, search_dirs())
        hint = "" if found else f" (with {ENV_DIRS}={out})"
        console.print(f"configs: {out}/explore-*.json; compile one{hint} with `tvmc-attend "
                      f"compile --model {report.front[0].name} --target {board.name} -o DIR`")


def register(app: typer.Typer) -> None:
    app.command("explore")(explore_command)
