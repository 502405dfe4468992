"""A bundle: the compiled .so, its metadata JSON and a copy of the one-file runtime loader.

The bundle is self-contained (weights are constants inside the .so) and is written into a
temporary directory first, then moved into place, so a failed compile never leaves a bundle
that looks complete.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tvmc_attend import attend_runtime
from tvmc_attend.errors import UserError
from tvmc_attend.targets import Board
from tvmc_attend.timestamps import utc_timestamp

from .runtime_libs import RUNTIME_DIR, RuntimeLibs
from .verify import Verification

if TYPE_CHECKING:  # the frontend imports TVM; `compile -o` is checked before that
    from .frontend import ImportedModel

LOADER_SOURCE = attend_runtime.__file__


@dataclass
class TuningInfo:
    """How the library was tuned, as recorded in the bundle."""

    tuned: bool = False
    database: str | None = None
    records: int = 0
    emulated: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. the devices it was tuned on


@dataclass
class TensorSpec:
    """A model input or output as the bundle records it (outputs have no name)."""

    shape: tuple[int, ...]
    dtype: str
    name: str | None = None


@dataclass
class TargetInfo:
    """The board a bundle is compiled for."""

    name: str
    target: dict[str, Any]  # the resolved TVM target
    triple: str
    remote: bool

    @classmethod
    def of(cls, board: Board) -> TargetInfo:
        return cls(name=board.name, target=board.resolved_target_dict(), triple=board.triple,
                   remote=board.is_remote)


@dataclass
class BundleMetadata:
    """Everything ``metadata.json`` says about a bundle. ``to_json`` and ``from_json`` are the
    one place its JSON form is spelled (the loader reads the same file on its own)."""

    model: str
    source: str  # "zoo", ".onnx" or ".pt2"
    input: TensorSpec
    output: TensorSpec
    target: TargetInfo
    threads: int | None  # runtime threads (None: all cores)
    tvm_version: str
    tuning: TuningInfo
    fused_dcac: int  # DC-AC blocks replaced by the fused operator
    verified: Verification | None  # what `compile` checked (None: --no-verify, or nothing to)
    library_file: str
    library_sha256: str
    # the layout convolutions compute in and what the conversion took (compile.prepare's
    # LayoutReport); None in bundles written before it was recorded
    layout: dict[str, Any] | None = None
    # the TVM runtime the bundle carries ({"arch", "versions", "files": [{"file", "sha256"}]});
    # None: it runs on the TVM installed where it runs (--runtime system, older bundles)
    runtime: dict[str, Any] | None = None
    created: str = field(default_factory=utc_timestamp)
    compiled_on: str = field(default_factory=platform.node)

    @property
    def tuned(self) -> bool:
        return self.tuning.tuned

    def to_json(self) -> dict[str, Any]:
        return {
            "format": attend_runtime.BUNDLE_FORMAT,
            "model": self.model,
            "source": self.source,
            "input": {"name": self.input.name, "shape": list(self.input.shape),
                      "dtype": self.input.dtype},
            "output": {"shape": list(self.output.shape), "dtype": self.output.dtype},
            "target": dataclasses.asdict(self.target),
            "threads": self.threads,
            "tvm_version": self.tvm_version,
            "tuned": self.tuning.tuned,
            "tuning": {"database": self.tuning.database, "records": self.tuning.records,
                       "emulated": self.tuning.emulated, **self.tuning.extra},
            "fused_dcac": self.fused_dcac,
            "layout": self.layout,
            "verified": self.verified.as_dict() if self.verified is not None else None,
            "library": {"file": self.library_file, "sha256": self.library_sha256},
            "runtime": self.runtime,
            "created": self.created,
            "compiled_on": self.compiled_on,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BundleMetadata:
        """The metadata of ``data`` (a KeyError or TypeError when it is not a bundle's);
        bundles written before ``fused_dcac`` and ``verified`` existed read as 0 and None."""
        tuning = dict(data["tuning"])
        verified = data.get("verified")
        return cls(
            model=data["model"], source=data["source"],
            input=TensorSpec(shape=tuple(data["input"]["shape"]), dtype=data["input"]["dtype"],
                             name=data["input"]["name"]),
            output=TensorSpec(shape=tuple(data["output"]["shape"]),
                              dtype=data["output"]["dtype"]),
            target=TargetInfo(**data["target"]), threads=data["threads"],
            tvm_version=data["tvm_version"],
            tuning=TuningInfo(tuned=data["tuned"], database=tuning.pop("database"),
                              records=tuning.pop("records"), emulated=tuning.pop("emulated"),
                              extra=tuning),
            fused_dcac=data.get("fused_dcac", 0), layout=data.get("layout"),
            verified=Verification(**verified) if verified is not None else None,
            library_file=data["library"]["file"], library_sha256=data["library"]["sha256"],
            runtime=data.get("runtime"), created=data["created"], compiled_on=data["compiled_on"])

    def write(self, bundle_dir: str) -> None:
        with open(os.path.join(bundle_dir, attend_runtime.METADATA_FILE), "w") as f:
            json.dump(self.to_json(), f, indent=2)
            f.write("\n")


@dataclass
class Bundle:
    """A bundle directory and its metadata."""

    path: str
    metadata: BundleMetadata

    @classmethod
    def open(cls, path: str) -> Bundle:
        """The bundle at ``path``; a UserError when it is not one."""
        try:
            data = attend_runtime.read_metadata(path)
            return cls(path=os.path.abspath(path), metadata=BundleMetadata.from_json(data))
        except attend_runtime.BundleError as err:
            raise UserError(str(err)) from None
        except (KeyError, TypeError) as err:
            raise UserError(f"{os.path.join(path, attend_runtime.METADATA_FILE)} lacks or "
                            f"mangles {err}; recompile the bundle") from None


def _metadata(imported: ImportedModel, board: Board, library: str, sha256: str,
              tuning: TuningInfo, fused_dcac: int,
              layout: dict[str, Any] | None) -> BundleMetadata:
    import tvm

    return BundleMetadata(
        model=imported.name, source=imported.source,
        input=TensorSpec(shape=imported.input_shape, dtype=imported.input_dtype,
                         name=imported.input_name),
        output=TensorSpec(shape=imported.output_shape, dtype=imported.output_dtype),
        target=TargetInfo.of(board), threads=board.threads, tvm_version=tvm.__version__,
        tuning=tuning, fused_dcac=fused_dcac, verified=None, library_file=library,
        library_sha256=sha256, layout=layout)


def check_output_dir(out_dir: str) -> None:
    """Only an earlier bundle (or an empty directory) may be overwritten."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UserError(f"output '{out_dir}' is a file; pass a directory path to -o")
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not os.path.isfile(
            os.path.join(out_dir, attend_runtime.METADATA_FILE)):
        raise UserError(f"output directory '{out_dir}' exists and is not a tvmc-attend bundle; "
                        "choose another -o path or empty it")



BundleCheck = Callable[[str], Verification | None]


def _copy_runtime(runtime: RuntimeLibs, staging: str) -> dict[str, Any]:
    """Copy the runtime libraries (and `run`) into the staged bundle; what the metadata
    records."""

    def copy(source: os.PathLike, relative: str) -> dict[str, str]:
        target = os.path.join(staging, relative)
        shutil.copyfile(source, target)
        os.chmod(target, 0o755)
        return {"file": relative, "sha256": attend_runtime.sha256_of(target)}

    os.makedirs(os.path.join(staging, RUNTIME_DIR))
    recorded = {"arch": runtime.arch, "versions": runtime.versions,
                "files": [copy(source, f"{RUNTIME_DIR}/{name}")
                          for name, source in runtime.paths.items()]}
    if runtime.runner is not None:  # next to the model library: `DIR/run --input x.npy`
        recorded["runner"] = copy(runtime.runner, "run")
    return recorded


def write_bundle(out_dir: str, imported: ImportedModel, board: Board, executable: Any,
                 tuning: TuningInfo | None = None, fused_dcac: int = 0,
                 layout: dict[str, Any] | None = None,
                 check: BundleCheck | None = None,
                 runtime: RuntimeLibs | None = None) -> Bundle:
    """Export ``executable`` into the bundle directory ``out_dir``, with ``runtime`` (the TVM
    runtime libraries it carries; None: it runs on the TVM installed where it runs).

    ``check`` gets the finished bundle in its staging directory before it is moved into
    place: what it returns is recorded as ``verified``, and an exception leaves nothing."""
    from .build import export_library  # TVM: only once there is something to write

    tuning = tuning or TuningInfo()
    out_dir = os.path.abspath(out_dir)
    check_output_dir(out_dir)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".bundle-", dir=parent)
    os.chmod(staging, 0o755)  # mkdtemp makes it private; a bundle is meant to be copied around
    try:
        # "timm:resnet18" -> "timm-resnet18": a colon in a file name trips scp and Windows
        library = f"{imported.name.replace(':', '-')}-{board.name}.so"
        lib_path = os.path.join(staging, library)
        export_library(executable, board, lib_path)
        sha256 = attend_runtime.sha256_of(lib_path)
        shutil.copyfile(LOADER_SOURCE, os.path.join(staging, "attend_runtime.py"))
        meta = _metadata(imported, board, library, sha256, tuning, fused_dcac, layout)
        if runtime is not None:
            meta = dataclasses.replace(meta, runtime=_copy_runtime(runtime, staging))
        meta.write(staging)
        if check is not None:
            meta = dataclasses.replace(meta, verified=check(staging))
            meta.write(staging)
        if os.path.isdir(out_dir):
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
    finally:
        if os.path.isdir(staging):
            shutil.rmtree(staging)
    return Bundle(path=out_dir, metadata=meta)
