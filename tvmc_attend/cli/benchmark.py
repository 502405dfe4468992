"""`tvmc-attend benchmark`: tuned vs untuned vs ONNX Runtime vs PyTorch, measured in one run."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from . import options
from .remote import resolve_remote


def report_table(report) -> Table:
    label = " (emulated)" if report.emulated else ""
    table = Table(title=f"{report.model} on {report.board}{label}: {report.threads} threads, "
                        f"{report.date}")
    # Ratios read "this many times faster than": >1 is faster.
    for col in ("variant", "median ms", "p10", "p90", "img/s", "x untuned", "x ORT",
                "x torch", "rel err"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    med = {v.key: v.stats().median_ms for v in report.variants}
    from tvmc_attend.compile.benchmark import VARIANT_LABELS

    for v in report.variants:
        s = v.stats()
        table.add_row(
            VARIANT_LABELS[v.key] + (label if v.key.startswith("tvm") else ""),
            f"{s.median_ms:.2f}", f"{s.p10_ms:.2f}", f"{s.p90_ms:.2f}", f"{1e3 / s.median_ms:.1f}",
            *(f"{med[ref] / s.median_ms:.2f}x" if ref in med else "-"
              for ref in ("tvm_untuned", "onnxruntime", "torch")),
            "-" if v.max_rel_err is None else f"{v.max_rel_err:.1e}",
        )
    return table


def benchmark_command(
    model: str = options.MODEL,
    target: str = options.TARGET,
    rounds: int = typer.Option(10, "--rounds", min=1, help="Interleaved rounds."),
    runs_per_round: int = typer.Option(5, "--runs-per-round", min=1,
                                       help="Timed runs of each variant per round."),
    json_path: str | None = typer.Option(None, "--json", help="Write the results as JSON."),
    plot_path: str | None = typer.Option(None, "--plot", help="Write a PNG bar chart."),
    log_dir: str | None = options.LOG_DIR,
    keep: str | None = typer.Option(None, "--keep", help="Keep the bundles in this directory."),
    input_size: int | None = options.INPUT_SIZE,
    checkpoint: str | None = options.CHECKPOINT,
    seed: int = options.SEED,
    rpc_tracker: str | None = options.RPC_TRACKER,
    rpc_key: str | None = options.RPC_KEY,
    rpc_host: str | None = options.RPC_HOST,
    emulate: bool = options.EMULATE,
) -> None:
    """Measure tuned vs untuned TVM (and ONNX Runtime and PyTorch on the host) side by side."""
    from tvmc_attend.compile import benchmark
    from tvmc_attend.compile.frontend import ModelSource
    from tvmc_attend.targets import get_board

    board = get_board(target)
    remote, emulated = resolve_remote(board, rpc_tracker, rpc_key, rpc_host, emulate)
    session, device = None, "local"
    if remote is not None:
        from tvmc_attend.device import connect

        session, device = connect(remote), remote.describe()
    elif board.is_remote:
        from tvmc_attend.errors import UserError

        raise UserError(f"target {board.name} is a board: pass --rpc-tracker/--rpc-key, "
                        "--rpc-host or --emulate to measure on one")
    source = ModelSource(model=model, input_size=input_size, checkpoint=checkpoint, seed=seed)
    report = benchmark.run_benchmark(
        source, board, remote_session=session, device=device, emulated=emulated,
        rounds=rounds, runs_per_round=runs_per_round, log_dir=log_dir, work_dir=keep,
        progress=lambda m: typer.echo(m, err=True))
    console = Console(width=None if Console().is_terminal else 110)
    console.print(report_table(report))
    for note in report.notes:
        console.print(f"note: {note}")
    if json_path:
        benchmark.write_json(report, json_path)
        console.print(f"JSON: {json_path}")
    if plot_path:
        benchmark.plot(report, plot_path)
        console.print(f"plot: {plot_path}")


def register(app: typer.Typer) -> None:
    app.command("benchmark")(benchmark_command)
