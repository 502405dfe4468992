"""`tvmc-attend compare`: AttendNeXt vs the paper's peers, tuned, compiled and timed in one run."""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table

from tvmc_attend.errors import UserError

from . import options
from .options import DeviceRequest
from .report import show_report


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def report_table(report: Any) -> Table:
    """One row per model: size, TVM latency and throughput, ratios to the baseline, and the
    ONNX Runtime / PyTorch medians on the host."""
    label = report.run.label
    base = report.options.baseline_model
    table = Table(title=f"compare on {report.run.board}{label}: {report.run.threads} threads, "
                        f"{report.options.trials} trials/model, {report.run.date}",
                  caption=f"ratios: latency (or params) / {base}'s; >1 means {base} is "
                          "faster (or smaller). rel err: TVM vs PyTorch float32; fp32 floor: "
                          "PyTorch float32 vs float64")
    host = any("torch" in r.variants for r in report.results)
    columns = ["model", "params M", "size ratio", "GMACs", f"TVM ms{label}", "p10", "p90",
               "img/s", "latency ratio", "TVM rel err", "fp32 floor"]
    if host:
        columns += ["ORT ms", "ORT ratio", "torch ms", "torch ratio"]
    for col in columns:  # model names stay whole: the numbers' headers wrap instead
        table.add_column(col, justify="left" if col == "model" else "right",
                         no_wrap=col == "model")
    for r in report.results:
        s = r.variants["tvm"].stats()
        ratios = report.vs_baseline(r)
        tuned = "" if r.tuning.get("tuned") else " (untuned)"
        err = r.variants["tvm"].max_rel_err
        row = [r.name + tuned, f"{r.params / 1e6:.2f}", _ratio(ratios["params"]),
               f"{r.macs / 1e9:.3f}", _ms(s.median_ms), _ms(s.p10_ms), _ms(s.p90_ms),
               f"{1e3 / s.median_ms:.1f}", _ratio(ratios["tvm"]),
               ("-" if err is None else f"{err:.1e}") + ("" if r.numerics_ok else " FAIL"),
               f"{r.torch_fp64_err:.1e}"]
        if host:
            row += [_ms(r.median_ms("onnxruntime")), _ratio(ratios["onnxruntime"]),
                    _ms(r.median_ms("torch")), _ratio(ratios["torch"])]
        table.add_row(*row)
    return table


@options.with_device_flags
def compare_command(
    target: str = options.TARGET,
    models: str = typer.Option(
        "attendnext,mobilenetv3_large_100,mobileone_s1,fbnetc_100,mobilevit_xs", "--models",
        help="Comma-separated zoo models, or timm:<name> / torchvision:<name>, to compare."),
    baseline: str | None = typer.Option(
        None, "--baseline", help="Model the ratios refer to (default: attendnext if compared, "
                                 "else the first)."),
    trials: int = typer.Option(200, "--trials", min=0,
                               help="Tuning budget per model (resumes; 0: no tuning)."),
    rounds: int = options.rounds(),
    runs_per_round: int = options.runs_per_round(3),
    json_path: str | None = options.json_report(),
    plot_path: str | None = options.plot("Write latency vs params (PNG)."),
    log_dir: str | None = options.LOG_DIR,
    keep: str | None = options.KEEP,
    input_size: int | None = options.INPUT_SIZE,
    seed: int = options.SEED,
    layout: str = options.LAYOUT,
    device: DeviceRequest = options.NO_DEVICE_FLAGS,
) -> None:
    """Tune, compile and time AttendNeXt and its peers on one target, side by side."""
    from tvmc_attend.bench.compare import CompareOptions, plot, run_compare
    from tvmc_attend.targets import get_board

    board = get_board(target)
    opts = CompareOptions(models=[m.strip() for m in models.split(",") if m.strip()],
                          baseline=baseline, trials=trials, input_size=input_size, seed=seed,
                          log_dir=log_dir, work_dir=keep, rounds=rounds,
                          runs_per_round=runs_per_round, layout=layout)
    report = run_compare(opts, board, device=device.choose(board),
                         progress=lambda m: typer.echo(m, err=True))
    show_report(report, [report_table(report)], report.notes, width=200, json_path=json_path,
                plot_path=plot_path, plot=plot)
    bad = [f"{r.name} ({r.variants['tvm'].max_rel_err})" for r in report.results
           if not r.numerics_ok]
    if bad:
        from tvmc_attend.bench.compare import NUMERICS_RULE

        raise UserError(f"TVM output is wrong for {', '.join(bad)}: not {NUMERICS_RULE}")


def register(app: typer.Typer) -> None:
    app.command("compare")(compare_command)
