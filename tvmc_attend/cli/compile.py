"""`tvmc-attend compile`: model -> Relax -> .so bundle (+ metadata + loader)."""

from __future__ import annotations

import os
import time

import typer

from . import options


def compile_command(
    model: str = options.MODEL,
    target: str = options.TARGET,
    output: str = typer.Option(..., "--output", "-o", help="Bundle directory to write."),
    untuned: bool = typer.Option(False, "--untuned", help="Ignore tuning databases."),
    log_dir: str | None = options.LOG_DIR,
    database: str | None = typer.Option(None, "--database",
                                        help="A database directory to apply instead."),
    input_size: int | None = options.INPUT_SIZE,
    checkpoint: str | None = options.CHECKPOINT,
    seed: int = options.SEED,
    fuse_dcac: bool = options.FUSE_DCAC,
) -> None:
    """Compile a model for a board into a self-contained bundle directory."""
    from tvmc_attend.compile.bundle import check_output_dir
    from tvmc_attend.targets import get_board

    # Check the cheap things before importing TVM and torch (seconds) and the model (minutes).
    board = get_board(target)
    check_output_dir(os.path.abspath(output))

    from tvmc_attend.compile.frontend import ModelSource
    from tvmc_attend.compile.pipeline import compile_bundle

    source = ModelSource(model=model, input_size=input_size, checkpoint=checkpoint, seed=seed)
    start = time.perf_counter()
    meta = compile_bundle(source, board, output, untuned=untuned, log_dir=log_dir,
                          database_dir=database, fuse_dcac=fuse_dcac,
                          warn=lambda m: typer.echo(f"warning: {m}", err=True))
    elapsed = time.perf_counter() - start
    how = (f"tuned, {meta['tuning']['records']} records" if meta["tuned"] else "untuned")
    how += f", {meta['fused_dcac']} DC-AC blocks fused"
    typer.echo(f"compiled {meta['model']} for {board.name} ({meta['target']['triple']}, {how}) "
               f"in {elapsed:.1f} s -> {output}")
    typer.echo(f"  input {meta['input']['name']} {meta['input']['shape']} "
               f"{meta['input']['dtype']}, output {meta['output']['shape']}, "
               f"library {meta['library']['file']} sha256 {meta['library']['sha256'][:16]}...")


def register(app: typer.Typer) -> None:
    app.command("compile")(compile_command)
