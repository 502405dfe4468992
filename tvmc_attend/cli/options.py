"""Options shared by several verbs, defined once so every verb spells them the same way.

Constants are options that read the same everywhere; the functions make the ones whose default
or subject differs by verb; ``with_device_flags`` gives a verb the four options that choose a
device, handed to it as one ``DeviceRequest``, and ``with_model_flags`` the six that say how the
model is built and lowered, as one ``ModelFlags``.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
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


@dataclass(frozen=True)
class ModelFlags:
    """The options that say how a model is built and lowered, as one argument."""

    input_size: int | None = None
    input_shape: str | None = None
    checkpoint: str | None = None
    seed: int = 0
    fuse_dcac: bool = True
    layout: str = DEFAULT_LAYOUT

    def as_kwargs(self) -> dict[str, Any]:
        """The flags as the keyword arguments of ``api.compile``/``tune``/``benchmark``."""
        return dataclasses.asdict(self)

    def source(self, model: str) -> ModelSource:
        """The model ``model`` names with these flags, checked before TVM is imported."""
        from tvmc_attend.api import model_source

        return model_source(model, self.input_size, self.input_shape, self.checkpoint,
                            self.seed)


NO_DEVICE_FLAGS = DeviceRequest()  # what a decorated command's ``device`` defaults to
NO_MODEL_FLAGS = ModelFlags()  # what a decorated command's ``model_flags`` defaults to


def _keyword(name: str, option: Any, kind: Any) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option,
                             annotation=kind)


def _grouped(argument: str, flags: list[inspect.Parameter],
             build: Callable[..., Any]) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """A decorator giving a command the options ``flags`` after its own; the command gets them
    as one ``argument``, ``build(**flags)`` (typer reads options from the signature, hence the
    rewrite)."""
    names = {p.name for p in flags}

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        signature = inspect.signature(command, eval_str=True)
        own = [p for p in signature.parameters.values() if p.name != argument]

        @functools.wraps(command)
        def with_flags(*args: Any, **kwargs: Any) -> None:
            given = {name: kwargs.pop(name) for name in names if name in kwargs}
            command(*args, **{argument: build(**given)}, **kwargs)

        with_flags.__signature__ = signature.replace(parameters=own + flags)
        return with_flags
    return decorate


# ``device``: a DeviceRequest from the four options that choose a device
with_device_flags = _grouped("device", [
    _keyword("rpc_tracker", RPC_TRACKER, str | None), _keyword("rpc_key", RPC_KEY, str | None),
    _keyword("rpc_host", RPC_HOST, str | None), _keyword("emulate", EMULATE, bool),
], DeviceRequest)

# ``model_flags``: a ModelFlags from the six options that say how the model is built
with_model_flags = _grouped("model_flags", [
    _keyword("input_size", INPUT_SIZE, int | None),
    _keyword("input_shape", INPUT_SHAPE, str | None),
    _keyword("checkpoint", CHECKPOINT, str | None), _keyword("seed", SEED, int),
    _keyword("fuse_dcac", FUSE_DCAC, bool), _keyword("layout", LAYOUT, str),
], ModelFlags)
