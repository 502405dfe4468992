"""`tvmc-attend run`: open a bundle with its loader, run it, print top-5 and latency."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import typer

from tvmc_attend.errors import UserError

from . import options
from .options import DeviceRequest

if TYPE_CHECKING:
    from tvmc_attend.compiler.bundle import BundleMetadata


@options.with_device_flags
def run_command(
    bundle: str = typer.Argument(..., help="Bundle directory written by `tvmc-attend compile`."),
    input_path: str | None = typer.Option(None, "--input", "-i",
                                          help="Input .npy array or image (default: random)."),
    output_path: str | None = typer.Option(None, "--output", help="Save the raw output (.npy)."),
    repeat: int = typer.Option(10, "--repeat", min=1, help="Timed runs for the latency."),
    threads: int | None = typer.Option(
        None, "--threads", min=1,
        help="TVM runtime threads (default: TVM_NUM_THREADS if set, else the bundle's board's "
             "count, or every core for a host bundle)."),
    counted: bool = typer.Option(
        False, "--counted",
        help="Count one inference on an emulated core of the bundle's board instead: "
             "instructions, loads, stores, simulated cache misses and the counted cost (a "
             "rank for comparing builds, not a latency)."),
    device: DeviceRequest = options.NO_DEVICE_FLAGS,
) -> None:
    """Run a bundle locally or on an RPC device; print top-5 and the median latency."""
    from tvmc_attend import api
    from tvmc_attend.compiler.bundle import Bundle
    from tvmc_attend.compiler.inputs import imagenet_labels, top_k

    if counted:
        _count_bundle(bundle, Bundle.open(bundle).metadata, device)
        return
    result = api.run(bundle, input_path, repeat=repeat, threads=threads, device=device)
    y = result.output
    if output_path:
        np.save(output_path, y)
    typer.echo(f"{result.model} on {result.target} ({result.where}), "
               f"input {'random' if input_path is None else input_path}")
    if y.ndim == 2 and y.shape[0] == 1 and y.shape[1] > 1:
        labels = imagenet_labels(y.shape[1])
        typer.echo("top-5:")
        for rank, (idx, prob) in enumerate(top_k(y), start=1):
            name = f"  {labels[idx]}" if labels else ""
            typer.echo(f"  {rank}. class {idx:4d}  p={prob:.4f}{name}")
    else:
        typer.echo(f"output {list(y.shape)}: mean {y.mean():.4g}, std {y.std():.4g}")
    label = " (emulated)" if result.emulated else ""
    typer.echo(f"latency{label}: {result.latency}, {result.threads} TVM threads")
    if output_path:
        typer.echo(f"output saved to {output_path}")


def _count_bundle(bundle: str, meta: BundleMetadata, flags: DeviceRequest) -> None:
    """`run --counted`: one inference counted on an emulated core of the bundle's board."""
    from tvmc_attend.device.choice import counting_device
    from tvmc_attend.device.counting import CountingCore, CountingError
    from tvmc_attend.targets import get_board

    board = get_board(meta.target.name)
    counting_device(board, flags.rpc_tracker, flags.rpc_host)  # refuses what cannot count
    typer.echo(f"counting one inference of {meta.model} on an emulated {board.qemu_cpu} core "
               f"({board.name} core model, one thread) ...")
    with CountingCore.for_board(board) as core:
        try:
            counts = core.count_bundle(bundle)
        except CountingError as err:
            raise UserError(f"counting {bundle} failed: {err}") from None
        cost = core.cost.cost(counts)
    misses = ", ".join(f"L{i} {n:,}" for i, n in enumerate(counts.misses, 1))
    typer.echo(f"instructions {counts.instructions:,} | loads {counts.loads:,} | stores "
               f"{counts.stores:,} | misses {misses}")
    cpu = board.core_model.throughput_cpu
    weighed = f"llvm-mca's {cpu}" if cpu else "instructions / ipc"
    typer.echo(f"counted cost: {cost.cycles / 1e6:,.1f} Mcycles ({cost.compute / 1e6:,.1f} in "
               f"code by {weighed}, {cost.memory / 1e6:,.1f} in misses; a deterministic rank "
               "of the work done on this core model, not a latency)")


def register(app: typer.Typer) -> None:
    app.command("run")(run_command)
