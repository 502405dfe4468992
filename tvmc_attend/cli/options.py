"""Options shared by several verbs, defined once so every verb spells them the same way."""

from __future__ import annotations

import typer

MODEL = typer.Option(..., "--model", "-m",
                     help="Zoo model name (see `tvmc-attend models`) or a .onnx / .pt2 file.")
TARGET = typer.Option("host", "--target", "-t", help="Board preset (see `tvmc-attend targets`).")
INPUT_SIZE = typer.Option(None, "--input-size",
                          help="Square input resolution for zoo models (multiple of 32).")
INPUT_SHAPE = typer.Option(
    None, "--input-shape",
    help="Input shape of a .onnx/.pt2 file with symbolic dims, e.g. 1x3x224x224 (default: a "
         "symbolic batch is 1, other symbolic dims must be given).")
CHECKPOINT = typer.Option(None, "--checkpoint",
                          help="PyTorch state dict for a zoo model (loaded with weights_only).")
SEED = typer.Option(0, "--seed", help="Seed of the deterministic initialisation (no checkpoint).")
RPC_TRACKER = typer.Option(None, "--rpc-tracker", help="RPC tracker HOST:PORT (device farm).")
RPC_KEY = typer.Option(None, "--rpc-key", help="Device key at the tracker (default: the board's).")
RPC_HOST = typer.Option(None, "--rpc-host", help="A single RPC server HOST:PORT.")
EMULATE = typer.Option(False, "--emulate",
                       help="Use (starting if needed) an emulated board for the target.")
LOG_DIR = typer.Option(None, "--log-dir", help="Tuning database root (default ./tuning_logs).")
FUSE_DCAC = typer.Option(True, "--fuse-dcac/--no-fuse-dcac",
                         help="Replace each DC-AC block by our fused operator (default: on).")
ROUNDS = typer.Option(10, "--rounds", min=1,
                      help="Interleaved timing rounds (every variant once per round).")
JSON_REPORT = typer.Option(None, "--json", help="Write the results as JSON.")
KEEP = typer.Option(None, "--keep", help="Keep the bundles in this directory.")
