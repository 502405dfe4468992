"""`tvmc-attend benchmark`: tuned vs untuned vs ONNX Runtime vs PyTorch, measured in one run."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from . import options
from .options import DeviceRequest, ModelFlags
from .report import show_report

if TYPE_CHECKING:
    from tvmc_attend.bench.benchmark import BenchmarkReport
    from tvmc_attend.bench.op_benchmark import DCACReport
    from tvmc_attend.bench.versus_onnxruntime import Versus
    from tvmc_attend.compiler.frontend import ModelSource
    from tvmc_attend.targets import Board


def report_table(report: BenchmarkReport) -> Table:
    run, label = report.run, report.run.label
    table = Table(title=f"{report.model} on {run.board}{label}: {run.threads} threads, "
                        f"{run.date}")
    # Ratios read "this many times faster than": >1 is faster.
    for col in ("variant", "median ms", "p10", "p90", "img/s", "x untuned", "x ORT",
                "x torch", "threads busy", "rel err"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    med = {v.key: v.stats().median_ms for v in report.variants}
    from tvmc_attend.bench.variants import VARIANT_LABELS

    for v in report.variants:
        s = v.stats()
        table.add_row(
            VARIANT_LABELS[v.key] + (label if v.key.startswith("tvm") else ""),
            f"{s.median_ms:.2f}", f"{s.p10_ms:.2f}", f"{s.p90_ms:.2f}", f"{1e3 / s.median_ms:.1f}",
            *(f"{med[ref] / s.median_ms:.2f}x" if ref in med else "-"
              for ref in ("tvm_untuned", "onnxruntime", "torch")),
            f"{'?' if v.busy_threads is None else v.busy_threads}/{v.threads or '?'}",
            "-" if v.max_rel_err is None else f"{v.max_rel_err:.1e}",
        )
    return table


def dcac_tables(report: DCACReport) -> list[Table]:
    """Block-level and end-to-end tables of `benchmark --op dcac` (ratios: stock / fused)."""
    from tvmc_attend.bench.op_benchmark import VARIANTS

    run = report.run
    title = (f"DC-AC on {run.board}: {run.threads} threads, {report.trials} trials per "
             f"tuned block variant, {report.repeat} samples, {run.date}")
    rows = [(f"{b['channels']}x{b['size']}x{b['size']}", b) for b in report.blocks]
    if report.end_to_end:
        e = report.end_to_end
        rows.append((f"{e['model']} {'x'.join(map(str, e['input_shape'][1:]))} "
                     f"({e['fused_dcac']} fused)", e))
    table = Table(title=title)
    for col in ("block", *(f"{k} ms" for k in VARIANTS), "fused vs stock tuned",
                "untuned", "max rel err"):
        table.add_column(col, justify="left" if col == "block" else "right")
    for name, row in rows:
        errors = [e for e in row["max_rel_err"].values() if e is not None]
        table.add_row(name, *(f"{row['median_ms'][k]:.3f}" for k in VARIANTS),
                      f"{row['speedup_tuned']:.2f}x", f"{row['speedup_untuned']:.2f}x",
                      f"{max(errors):.1e}" if errors else "-")
    return [table]


def _benchmark_op(op: str, model: str | None, target: str, trials: int, rounds: int,
                  log_dir: str | None, input_size: int | None, seed: int,
                  json_path: str | None, keep: str | None) -> None:
    from tvmc_attend.compiler.frontend import ModelSource
    from tvmc_attend.errors import UserError
    from tvmc_attend.targets import get_board

    if op not in _OPS:
        raise UserError(f"unknown operator '{op}' for --op; valid: {', '.join(_OPS)}")
    board = get_board(target)
    source = ModelSource(model=model or "attendnext", input_size=input_size, seed=seed)
    _OPS[op](board, source, trials, rounds, log_dir, seed, json_path, keep)


def _dcac(board: Board, source: ModelSource, trials: int, rounds: int, log_dir: str | None,
          seed: int, json_path: str | None, keep: str | None) -> None:
    """`--op dcac`: stock Relax fusion vs our fused DC-AC, per stage and end to end."""
    from tvmc_attend.bench.op_benchmark import benchmark_dcac

    report = benchmark_dcac(board, trials=trials, repeat=rounds, seed=seed, model=source,
                            log_dir=log_dir, work_dir=keep,
                            progress=lambda m: typer.echo(m, err=True))
    show_report(report, dcac_tables(report), (report.end_to_end or {}).get("notes", []),
                width=150, json_path=json_path)


def _cache_flush(board: Board, source: ModelSource, candidates: int, rounds: int,
                 log_dir: str | None, seed: int, json_path: str | None,
                 keep: str | None) -> None:
    """`--op cache-flush`: do warm or cache-flushed kernel timings rank a tuned database's
    best records as the whole model runs them?"""
    from tvmc_attend.bench.cache_flush import flush_check

    report = flush_check(source, board, log_dir=log_dir, candidates=min(candidates, 8),
                         runs=max(rounds, 5), seed=seed,
                         progress=lambda m: typer.echo(m, err=True))
    table = Table(title=f"kernel timings vs time in the whole model, {report.model} on "
                        f"{report.board} ({report.threads} threads), {report.date}")
    for col in ("task", "candidates", "Spearman warm", "Spearman flushed"):
        table.add_column(col, justify="left" if col == "task" else "right")
    for name, rho in report.per_task.items():
        n = sum(1 for r in report.rows if r["task"] == name)
        table.add_row(name[:48], str(n), f"{rho['warm']:.2f}", f"{rho['flushed']:.2f}")
    table.add_row("mean", "", f"{report.mean_rho('warm'):.2f}",
                  f"{report.mean_rho('flushed'):.2f}")
    totals = {k: report.total_us(k) / 1e3 for k in ("warm", "flushed", "in_model")}
    note = (f"best records of these tasks, calls x time: warm {totals['warm']:.2f} ms, "
            f"flushed {totals['flushed']:.2f} ms, in the model {totals['in_model']:.2f} ms")
    show_report(report, [table], [note], width=120, json_path=json_path)


def _in_model(board: Board, source: ModelSource, trials: int, rounds: int,
              log_dir: str | None, seed: int, json_path: str | None, keep: str | None) -> None:
    """`--op in-model`: where a tuned whole model's time goes, kernel by kernel, against the
    tuner's warm timing of the same kernels, and layer by layer against ONNX Runtime."""
    from tvmc_attend.bench.in_model import in_model_check

    report = in_model_check(source, board, log_dir=log_dir, runs=max(rounds, 5), seed=seed,
                            progress=lambda m: typer.echo(m, err=True))
    table = Table(title=f"{report.model} on {report.board} ({report.threads} threads): each "
                        f"kernel inside the model vs alone warm (the tuner's timing), "
                        f"{report.date}")
    for col in ("task", "calls", "warm us", "in model us", "in model / warm"):
        table.add_column(col, justify="left" if col == "task" else "right")
    for row in report.rows:
        in_model = row["in_model_us"]
        table.add_row(row["task"][:52], f"{row['calls']:.0f}", f"{row['warm_us']:.1f}",
                      "-" if in_model is None else f"{in_model:.1f}",
                      "-" if in_model is None else f"{row['ratio']:.2f}")
    tables = [table]
    if report.versus is not None:
        tables += _versus_tables(report.versus)
    ms = 1e-3
    notes = [
        f"whole model {report.whole_ms:.2f} ms (median of {report.runs}); the tune's estimate "
        f"(calls x warm time) {report.estimate_us * ms:.2f} ms",
        f"with every call timed: {report.timed_ms:.2f} ms = kernels "
        f"{report.kernels_us * ms:.2f} + VM builtins {report.builtins_us * ms:.2f} + between "
        f"calls {report.timed_ms - (report.kernels_us + report.builtins_us) * ms:.2f} ms, over "
        f"{report.calls} calls; a no-op instrument alone costs "
        f"{report.instrument_us_per_call:.1f} us per call ({report.no_op_ms:.2f} ms)"]
    if report.versus is not None:
        versus = report.versus.as_json()
        notes.append(f"ONNX Runtime whole model {versus['onnxruntime_whole_ms']:.2f} ms without "
                     f"its profiler; its nodes sum to {versus['onnxruntime_nodes_us'] * ms:.2f}"
                     f" ms, TVM's calls to {versus['tvm_layers_us'] * ms:.2f} ms; "
                     f"convolutions {versus['conv_match']}")
    else:
        notes.append("ONNX Runtime not compared: the model has no .onnx file or PyTorch module")
    show_report(report, tables, notes, width=130, json_path=json_path)


def _versus_tables(versus: Versus) -> list[Table]:
    """`--op in-model`'s comparison with ONNX Runtime: per kind of layer, then the matched
    convolutions TVM loses most on."""
    by_kind = Table(title="per kind of layer, inside the whole model: TVM calls vs ONNX "
                          "Runtime nodes (summed medians; ORT/TVM > 1: TVM faster)")
    for col in ("kind", "TVM calls", "TVM us", "ORT nodes", "ORT us", "ORT/TVM"):
        by_kind.add_column(col, justify="left" if col == "kind" else "right")
    for row in versus.by_kind():
        ratio = (f"{row['onnxruntime_us'] / row['tvm_us']:.2f}"
                 if row["tvm_us"] and row["onnxruntime_us"] else "-")
        by_kind.add_row(row["kind"], str(row["tvm_layers"]), f"{row['tvm_us']:.0f}",
                        str(row["onnxruntime_layers"]), f"{row['onnxruntime_us']:.0f}", ratio)
    pairs = versus.conv_pairs()
    if not versus.pairs:
        return [by_kind]
    worst = Table(title="the convolutions TVM loses most time on (matched in graph order)")
    for col in ("#", "kind", "out HxW", "TVM kernel", "TVM us", "ORT us", "ORT/TVM"):
        worst.add_column(col, justify="left" if col in ("kind", "TVM kernel") else "right")
    for pair in pairs[:10]:
        worst.add_row(str(pair["position"]), pair["kind"], "x".join(map(str, pair["out_hw"])),
                      pair["tvm"][:44], f"{pair['tvm_us']:.1f}", f"{pair['onnxruntime_us']:.1f}",
                      f"{pair['onnxruntime_us'] / pair['tvm_us']:.2f}")
    return [by_kind, worst]


def _counted_vs_timed(board: Board, source: ModelSource, candidates: int, rounds: int,
                      log_dir: str | None, seed: int, json_path: str | None,
                      keep: str | None) -> None:
    """`--op counted-vs-timed`: does the counted cost rank schedules as this host's clock?"""
    from tvmc_attend.bench.counted import rank_check
    from tvmc_attend.errors import UserError

    if board.is_remote:
        raise UserError("--op counted-vs-timed checks counting against this host's own clock: "
                        "use --target host")
    report = rank_check(source, candidates=candidates, seed=seed, work_dir=keep,
                        progress=lambda m: typer.echo(m, err=True))
    table = Table(title=f"counted cost vs time, {report.model} candidates on this host "
                        f"(AVX2, 1 thread; counted on llvm-mca's "
                        f"{report.core_model['mca_cpu']}), {report.date}")
    for col in ("task", "candidates", "Spearman", "top-1 regret", "counted spread",
                "timed spread", "clock vs clock"):
        table.add_column(col, justify="left" if col == "task" else "right")
    for name, row in report.per_task.items():
        table.add_row(name[:56], str(row["candidates"]), f"{row['spearman']:.3f}",
                      f"{100 * row['regret']:.1f} %", f"{row['cost_spread']:.2f}x",
                      f"{row['timed_spread']:.2f}x", f"{row['clock_spearman']:.3f}")
    table.add_row("pooled (all tasks)", str(len(report.candidates)), f"{report.pooled:.3f}",
                  "", "", "", "")
    fit = report.calibration
    apart = report.told_apart()
    notes = [f"median Spearman per task {report.median_spearman():.3f}; tasks whose counted "
             f"best runs within 10 % of the fastest: {100 * report.regret_within_10():.0f} %",
             f"over the {len(apart)} tasks whose candidates the cost tells apart (counted "
             f"spread >= 1.02x): median Spearman {report.median_spearman(apart):.3f}, within "
             f"10 %: {100 * report.regret_within_10(apart):.0f} %",
             "the clock against itself (each kernel timed twice, loaded afresh; the table's "
             "times are the geometric mean): median Spearman per task "
             f"{report.median_spearman(key='clock_spearman'):.3f}, the first pass's fastest "
             "within 10 % of the second's on "
             f"{100 * report.regret_within_10(key='clock_regret'):.0f} % of tasks: no cost "
             "ranks better than the clock repeats",
             f"calibration (timed cycles at {report.host_mhz:.0f} MHz ~ scale x (compute + "
             f"exposed x miss cycles)): scale {fit['compute_scale']:.3f}, exposed "
             f"{fit['exposed_miss']:.3f}, median error {100 * fit['median_relative_error']:.0f} %"]
    show_report(report, [table], notes, width=120, json_path=json_path)


def _runtime_footprint(board: Board, source: ModelSource, trials: int, rounds: int,
                       log_dir: str | None, seed: int, json_path: str | None,
                       keep: str | None) -> None:
    """`--op runtime-footprint`: a bundle's size by part and, for this host's architecture,
    a fresh process's import + load + first inference with the bundled runtime and with
    the installed TVM; beside the installed size of other runtimes' aarch64 wheels."""
    import tempfile

    from tvmc_attend import api
    from tvmc_attend.bench.runtime_footprint import footprint

    with tempfile.TemporaryDirectory(prefix="tvmc-attend-footprint-") as tmp:
        out = keep or os.path.join(tmp, "bundle")
        typer.echo(f"compiling {source.model} for {board.name} into {out}", err=True)
        bundle = api.compile(source.model, board.name, out, input_size=source.input_size,
                             seed=seed, log_dir=log_dir, verify=False,
                             warn=lambda m: typer.echo(f"warning: {m}", err=True))
        report = footprint(bundle, runs=max(rounds, 1),
                           progress=lambda m: typer.echo(m, err=True))
    mb = 1e6
    sizes = Table(title=f"{report.model} bundle for {report.board}, {report.date}")
    for col in ("part", "MB"):
        sizes.add_column(col, justify="left" if col == "part" else "right")
    for part, size in report.sizes.items():
        sizes.add_row(part, f"{size / mb:.2f}")
    runtime_part = sum(v for k, v in report.sizes.items() if k != "model library")
    sizes.add_row("runtime part (all but the model library)", f"{runtime_part / mb:.2f}")
    tables = [sizes]
    if report.start_up:
        timing = Table(title=f"fresh process on this host: import + load + first inference, "
                             f"median of {report.runs}")
        for col in ("runtime", "import s", "load s", "first inference s", "total s",
                    "RSS MB", "peak RSS MB", "tvm imported", "compiler mapped"):
            timing.add_column(col, justify="left" if col == "runtime" else "right")
        for runtime, row in report.start_up.items():
            timing.add_row(f"{runtime} TVM runtime", f"{row['import_s']:.3f}",
                           f"{row['load_s']:.3f}", f"{row['first_inference_s']:.3f}",
                           f"{row['total_s']:.3f}", f"{row['rss_mb']:.0f}",
                           f"{row['peak_rss_mb']:.0f}",
                           str(row["tvm_imported"]), str(row["compiler_mapped"]))
        tables.append(timing)
    if report.alternatives:
        others = Table(title="other runtimes: installed size of their aarch64 wheel "
                             "(no dependencies)")
        for col in ("package", "MB"):
            others.add_column(col, justify="left" if col == "package" else "right")
        for package, size in report.alternatives.items():
            others.add_row(package, f"{size / mb:.1f}" if isinstance(size, int) else size)
        tables.append(others)
    show_report(report, tables, [], width=130, json_path=json_path)


def _estimate_vs_measured(board: Board, source: ModelSource, trials: int, rounds: int,
                          log_dir: str | None, seed: int, json_path: str | None,
                          keep: str | None) -> None:
    """`--op estimate-vs-measured`: the counted cost of one inference over this CPU's clock,
    beside its measured single-thread latency."""
    from tvmc_attend.bench.counted import latency_estimate
    from tvmc_attend.errors import UserError

    if board.is_remote:
        raise UserError("--op estimate-vs-measured checks the counted cost against this "
                        "host's own clock: use --target host")
    report = latency_estimate(source, log_dir=log_dir, work_dir=keep,
                              progress=lambda m: typer.echo(m, err=True))
    table = Table(title=f"{report.model} on this host (AVX2 build, 1 thread, "
                        f"{report.records} records), {report.date}")
    for col in ("", "ms"):
        table.add_column(col, justify="left" if not col else "right")
    table.add_row("estimated from the counted cost (not measured)", f"{report.estimated_ms:.2f}")
    table.add_row("  of which code (llvm-mca)", f"{report.compute_ms:.2f}")
    table.add_row("  of which exposed misses", f"{report.memory_ms:.2f}")
    table.add_row("measured (median, 1 thread)", f"{report.measured_ms:.2f}")
    notes = [f"estimated / measured {report.ratio:.2f} (cycles over {report.host_mhz:.0f} MHz, "
             "the clock the kernel reports)"]
    show_report(report, [table], notes, width=110, json_path=json_path)


# --op NAME -> its handler (board, source, trials, rounds, log_dir, seed, json, keep)
_OPS: dict[str, Callable[..., None]] = {
    "dcac": _dcac,
    "counted-vs-timed": _counted_vs_timed,
    "estimate-vs-measured": _estimate_vs_measured,
    "cache-flush": _cache_flush,
    "in-model": _in_model,
    "runtime-footprint": _runtime_footprint,
}


def _count_model(board: Board, source: ModelSource, log_dir: str | None, layout: str,
                 json_path: str | None, keep: str | None) -> None:
    """`benchmark --counted`: untuned vs tuned-by-counting, counted on the board's core."""
    from tvmc_attend.bench.counted import count_model

    report = count_model(source, board, log_dir=log_dir, layout=layout, work_dir=keep,
                         progress=lambda m: typer.echo(m, err=True))
    whole = Table(title=f"{report.model} on {report.board}: counted on an emulated "
                        f"{report.qemu_cpu} core, one inference, {report.date} (Mcycles of the "
                        "core model: a rank, not a latency)")
    for col in ("variant", "instructions", "loads", "stores", "cache misses", "Mcycles",
                "x untuned"):
        whole.add_column(col, justify="left" if col == "variant" else "right")
    for variant, row in report.whole.items():
        whole.add_row(variant, f"{row['instructions']:,}", f"{row['loads']:,}",
                      f"{row['stores']:,}", " / ".join(f"{m:,}" for m in row["misses"]),
                      f"{row['mcycles']:,.1f}",
                      f"{report.whole['untuned']['mcycles'] / row['mcycles']:.2f}x")
    tasks = Table(title="per task (Mcycles per call; tuned: best counted record)")
    for col in ("task", "calls", "untuned", "tuned", "x untuned"):
        tasks.add_column(col, justify="left" if col == "task" else "right")
    for row in report.tasks:
        untuned, tuned = row.get("untuned_mcycles"), row.get("tuned_mcycles")
        tasks.add_row(row["task"][:48], f"{row['calls']:g}",
                      f"{untuned:.2f}" if untuned else row.get("untuned_error", "-")[:30],
                      f"{tuned:.2f}" if tuned else "-",
                      f"{untuned / tuned:.2f}x" if untuned and tuned else "-")
    show_report(report, [whole, tasks], [], width=130, json_path=json_path)


@options.with_device_flags
@options.with_model_flags
def benchmark_command(
    model: str | None = typer.Option(
        None, "--model", "-m", help="Zoo model name or a .onnx / .pt2 file (with --op: the "
        "model measured end to end, default attendnext)."),
    target: str = options.TARGET,
    rounds: int = options.rounds(),
    runs_per_round: int = options.runs_per_round(5),
    json_path: str | None = options.json_report(),
    plot_path: str | None = options.plot("Write a PNG bar chart."),
    log_dir: str | None = options.LOG_DIR,
    keep: str | None = options.KEEP,
    op: str | None = typer.Option(
        None, "--op", help="Benchmark an operator instead: 'dcac' (stock Relax fusion vs our "
        "fused DC-AC, per AttendNeXt stage and end to end; host only), 'counted-vs-timed' "
        "(how the counted cost of sampled conv schedules ranks against their time here), "
        "'cache-flush' (warm vs cache-flushed kernel timings of a tuned database's best "
        "records, against their time inside the whole model), 'in-model' (a tuned model's "
        "time kernel by kernel inside the model vs the tuner's warm timing, VM builtins and "
        "the time between calls, then layer by layer against ONNX Runtime's profile) or "
        "'runtime-footprint' (the bundle's size by part; a fresh process's start-up with "
        "the bundled runtime and with the installed TVM, --rounds times; other runtimes' "
        "installed sizes)."),
    trials: int = typer.Option(64, "--trials", min=1,
                               help="With --op dcac: tuning trials for each block variant; "
                                    "with --op counted-vs-timed: candidates per task; "
                                    "with --op cache-flush: records per task (at most 8)."),
    counted: bool = typer.Option(
        False, "--counted",
        help="Count one inference of the untuned and the tuned-by-counting bundle (and each "
             "task) on an emulated core of the board, instead of timing (see `tune --counted`)."),
    model_flags: ModelFlags = options.NO_MODEL_FLAGS,
    device: DeviceRequest = options.NO_DEVICE_FLAGS,
) -> None:
    """Measure tuned vs untuned TVM (and ONNX Runtime and PyTorch on the host) side by side."""
    from tvmc_attend import api
    from tvmc_attend.errors import UserError
    from tvmc_attend.targets import get_board

    if op is not None:
        if device.given:
            raise UserError("--op measures on this host only; drop --rpc-*/--emulate")
        _benchmark_op(op, model, target, trials, rounds, log_dir, model_flags.input_size,
                      model_flags.seed, json_path, keep)
        return
    if model is None:
        raise UserError("missing --model: pass a zoo model name or a .onnx/.pt2 file "
                        "(or --op dcac)")
    if counted:
        if device.given:
            raise UserError("--counted counts on an emulated core: drop --rpc-*/--emulate")
        board = get_board(target)
        _count_model(board, model_flags.source(model), log_dir, model_flags.layout, json_path,
                     keep)
        return
    report = api.benchmark(
        model, target, rounds=rounds, runs_per_round=runs_per_round, log_dir=log_dir,
        keep=keep, **model_flags.as_kwargs(), device=device,
        progress=lambda m: typer.echo(m, err=True))
    from tvmc_attend.bench.benchmark import plot

    show_report(report, [report_table(report)], report.notes, width=110, json_path=json_path,
                plot_path=plot_path, plot=plot)


def register(app: typer.Typer) -> None:
    app.command("benchmark")(benchmark_command)
