"""Options shared by several verbs, defined once so every verb spells them the same way.

Constants are options that read the same everywhere; the functions make the ones whose default
or subject differs by verb; ``with_device_flags`` gives a verb the four options that choose a
device, handed to it as one ``DeviceRequest``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import typer

from tvmc_attend.compiler.lowering import DEFAULT_LAYOUT
from tvmc_attend.device.choice import DeviceRequest

if TYPE_CHECKING:
    from tvmc_attend.compiler.frontend import ModelSource

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
LAYOUT = typer.Option(
    DEFAULT_LAYOUT, "--layout",
    help="Layout convolutions compute in: blocked (channel-blocked NCHW{b}c where padding is "
         "cheap, NCHW elsewhere; default), nhwc, or nchw (as imported).")
KEEP = typer.Option(None, "--keep", help="Keep the bundles in this directory.")


def model_source(model: str, input_size: int | None, input_shape: str | None,
                 checkpoint: str | None, seed: int) -> ModelSource:
    """The model the --model, --input-size, --input-shape, --checkpoint and --seed options
    name, checked before TVM is imported (``api.model_source``)."""
    from tvmc_attend.api import model_source as checked_source

    return checked_source(model, input_size, input_shape, checkpoint, seed)


def rounds(default: int = 10, each: str = "variant") -> Any:
    return typer.Option(default, "--rounds", min=1,
                        help=f"Interleaved timing rounds (every {each} once per round).")


def runs_per_round(default: int, each: str = "variant") -> Any:
    return typer.Option(default, "--runs-per-round", min=1,
                        help=f"Timed runs of each {each} per round.")


def json_report(help: str = "Write the results as JSON.") -> Any:
    return typer.Option(None, "--json", help=help)


def plot(help: str) -> Any:
    return typer.Option(None, "--plot", help=help)


NO_DEVICE_FLAGS = DeviceRequest()  # what a decorated command's ``device`` defaults to
_DEVICE_OPTIONS = [
    inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=kind)
    for name, option, kind in (("rpc_tracker", RPC_TRACKER, str | None),
                               ("rpc_key", RPC_KEY, str | None),
                               ("rpc_host", RPC_HOST, str | None),
                               ("emulate", EMULATE, bool))
]


def with_device_flags(command: Callable[..., None]) -> Callable[..., None]:
    """``command`` with the four device options after its own; it gets them as its ``device``
    argument, a ``DeviceRequest`` (typer reads options from the signature, hence the rewrite)."""
    signature = inspect.signature(command, eval_str=True)
    own = [p for p in signature.parameters.values() if p.name != "device"]

    @functools.wraps(command)
    def with_flags(*args: Any, rpc_tracker: str | None = None, rpc_key: str | None = None,
                   rpc_host: str | None = None, emulate: bool = False, **kwargs: Any) -> None:
        command(*args, device=DeviceRequest(rpc_tracker, rpc_key, rpc_host, emulate), **kwargs)

    with_flags.__signature__ = signature.replace(parameters=own + _DEVICE_OPTIONS)
    return with_flags
