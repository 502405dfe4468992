"""`tvmc-attend compile`: model -> Relax -> .so bundle (+ metadata + loader)."""

from __future__ import annotations

import time

import typer

from tvmc_attend.compiler.verify import DEFAULT_TOLERANCE

from . import options
from .options import DeviceRequest, ModelFlags


@options.with_device_flags
@options.with_model_flags
def compile_command(
    model: str = options.MODEL,
    target: str = options.TARGET,
    output: str = typer.Option(..., "--output", "-o", help="Bundle directory to write."),
    untuned: bool = typer.Option(False, "--untuned", help="Ignore tuning databases."),
    log_dir: str | None = options.LOG_DIR,
    database: str | None = typer.Option(None, "--database",
                                        help="A database directory to apply instead."),
    verify: bool = typer.Option(
        True, "--verify/--no-verify",
        help="Run the bundle on a seeded input and compare it with PyTorch (zoo, .pt2) or "
             "ONNX Runtime (.onnx) before writing it (default: on)."),
    tolerance: float | None = typer.Option(
        None, "--tolerance", min=0.0, show_default=False,
        help=f"Largest max|TVM - reference| / max|reference| that --verify accepts. Default: "
             f"{DEFAULT_TOLERANCE:g}, or twice the reference's own float32 error against its "
             f"float64 output where that is larger (deep random-init nets); given, it is exact."),
    runtime: str = typer.Option(
        "bundled", "--runtime",
        help="bundled: put the target's TVM runtime (~5 MB) in the bundle, so the board needs "
             "numpy only; system: leave it out and run on the TVM installed on the board."),
    model_flags: ModelFlags = options.NO_MODEL_FLAGS,
    device: DeviceRequest = options.NO_DEVICE_FLAGS,
) -> None:
    """Compile a model for a board into a self-contained bundle directory.

    The bundle is verified against the model's framework before it is written: on this host,
    on the board given by --rpc-*/--emulate, or else on the board build's host twin (the same
    graph and schedules compiled for this host)."""
    from tvmc_attend import api
    from tvmc_attend.targets import get_board

    board = get_board(target)
    start = time.perf_counter()
    meta = api.compile(model, target, output, untuned=untuned, log_dir=log_dir,
                       database=database, **model_flags.as_kwargs(), verify=verify,
                       tolerance=tolerance, device=device, runtime=runtime,
                       warn=lambda m: typer.echo(f"warning: {m}", err=True)).metadata
    elapsed = time.perf_counter() - start
    how = f"tuned, {meta.tuning.records} records" if meta.tuned else "untuned"
    how += f", {meta.fused_dcac} DC-AC blocks fused"
    typer.echo(f"compiled {meta.model} for {board.name} ({meta.target.triple}, {how}) "
               f"in {elapsed:.1f} s -> {output}")
    typer.echo(f"  input {meta.input.name} {list(meta.input.shape)} {meta.input.dtype}, output "
               f"{list(meta.output.shape)}, library {meta.library_file} sha256 "
               f"{meta.library_sha256[:16]}...")
    if meta.runtime is not None:
        versions = ", ".join(f"{d} {v}" for d, v in sorted(meta.runtime["versions"].items()))
        typer.echo(f"  TVM runtime for {meta.runtime['arch']} inside ({versions}): the "
                   f"device needs numpy only (python3 {output}/attend_runtime.py {output}), or "
                   f"nothing ({output}/run --input x.npy)")
    else:
        typer.echo("  no TVM runtime inside (--runtime system): the device needs apache-tvm "
                   f"{meta.tvm_version}")
    extra = meta.tuning.extra
    if meta.tuned and extra.get("cpu_class"):
        typer.echo(f"  tuning database for the {extra['cpu_class']} CPU class "
                   f"({meta.tuning.database}), {extra.get('origin', 'origin not recorded')}")
    if meta.tuned and extra.get("measured_by") == "counted":
        typer.echo(f"  tuned by counting on an emulated {extra.get('counted_on')} core (each "
                   "block on llvm-mca's model of the core, simulated cache misses), not "
                   f"measured on a {board.name}: retune on a board (`tvmc-attend tune "
                   "--rpc-tracker ...`) for schedules chosen by its clock")
    if meta.verified is not None:
        typer.echo(f"  verified against {meta.verified.reference} on {meta.verified.where}: max "
                   f"relative error {meta.verified.max_rel_err:.1e} (tolerance "
                   f"{meta.verified.bound:.2g})" + (
                       "" if meta.verified.max_rel_err <= meta.verified.bound else
                       f", {meta.verified.float64_err:.1e} from the float64 answer"))
    else:
        typer.echo("  not verified (--no-verify)" if not verify else
                   "  not verified: the model has no framework reference")


def register(app: typer.Typer) -> None:
    app.command("compile")(compile_command)
