"""How the timing verbs (benchmark, compare, explore) print a report: its tables and notes, and
where its JSON and plot went."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table


def show_report(report: Any, tables: Sequence[Table], notes: Sequence[str], width: int,
                json_path: str | None = None, plot_path: str | None = None,
                plot: Callable[[Any, str], None] | None = None) -> None:
    """Print ``tables`` and ``notes`` (``width`` columns when not on a terminal, so that logs
    keep whole rows), then write the JSON and the plot when asked for."""
    from tvmc_attend.bench.report import write_json

    terminal = Console().is_terminal
    console = Console(width=None if terminal else width)
    for table in tables:
        if not terminal:
            # a log gets each table whole, however wide its numbers run (under load they once
            # squeezed "PyTorch eager" onto two lines)
            natural = Measurement.get(console, console.options.update_width(1000), table)
            console.width = max(width, natural.maximum)
        console.print(table)
    if not terminal:
        console.width = width  # notes wrap at the log's width
    for note in notes:
        console.print(f"note: {note}")
    if json_path:
        write_json(report, json_path)
        console.print(f"JSON: {json_path}")
    if plot_path and plot is not None:
        plot(report, plot_path)
        console.print(f"plot: {plot_path}")
