"""A bundle: the compiled .so, its metadata JSON and a copy of the one-file runtime loader.

The bundle is self-contained (weights are constants inside the .so) and is written into a
temporary directory first, then moved into place, so a failed compile never leaves a bundle
that looks complete.
"""

from __future__ import annotations

import datetime
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

from .build import export_library

if TYPE_CHECKING:  # the frontend imports TVM; `compile -o` is checked before that
    from .frontend import ImportedModel
    from .verify import Verification

LOADER_SOURCE = attend_runtime.__file__


@dataclass
class TuningInfo:
    """How the library was tuned, as recorded in the bundle."""

    tuned: bool = False
    database: str | None = None
    records: int = 0
    emulated: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def _metadata(imported: ImportedModel, board: Board, library: str, sha256: str,
              tuning: TuningInfo, fused_dcac: int,
              verified: Verification | None) -> dict[str, Any]:
    import tvm

    return {
        "format": attend_runtime.BUNDLE_FORMAT,
        "model": imported.name,
        "source": imported.source,
        "input": {"name": imported.input_name, "shape": list(imported.input_shape),
                  "dtype": imported.input_dtype},
        "output": {"shape": list(imported.output_shape), "dtype": imported.output_dtype},
        "target": {"name": board.name, "target": board.resolved_target_dict(),
                   "triple": board.triple, "remote": board.is_remote},
        "threads": board.threads,
        "tvm_version": tvm.__version__,
        "tuned": tuning.tuned,
        "tuning": {"database": tuning.database, "records": tuning.records,
                   "emulated": tuning.emulated, **tuning.extra},
        "fused_dcac": fused_dcac,
        # What `compile` checked against the framework (None: --no-verify).
        "verified": verified.as_dict() if verified is not None else None,
        "library": {"file": library, "sha256": sha256},
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "compiled_on": platform.node(),
    }


def _write_metadata(bundle_dir: str, meta: dict[str, Any]) -> None:
    with open(os.path.join(bundle_dir, attend_runtime.METADATA_FILE), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")


def check_output_dir(out_dir: str) -> None:
    """Only an earlier bundle (or an empty directory) may be overwritten."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UserError(f"output '{out_dir}' is a file; pass a directory path to -o")
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not os.path.isfile(
            os.path.join(out_dir, attend_runtime.METADATA_FILE)):
        raise UserError(f"output directory '{out_dir}' exists and is not a tvmc-attend bundle; "
                        "choose another -o path or empty it")


BundleCheck = Callable[[str], "Verification | None"]


def write_bundle(out_dir: str, imported: ImportedModel, board: Board, executable: Any,
                 tuning: TuningInfo | None = None, fused_dcac: int = 0,
                 check: BundleCheck | None = None) -> dict[str, Any]:
    """Export ``executable`` into the bundle directory ``out_dir``; return its metadata.

    ``check`` gets the finished bundle in its staging directory before it is moved into
    place: what it returns is recorded as ``verified``, and an exception leaves nothing."""
    tuning = tuning or TuningInfo()
    out_dir = os.path.abspath(out_dir)
    check_output_dir(out_dir)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".bundle-", dir=parent)
    os.chmod(staging, 0o755)  # mkdtemp makes it private; a bundle is meant to be copied around
    try:
        library = f"{imported.name}-{board.name}.so"
        lib_path = os.path.join(staging, library)
        export_library(executable, board, lib_path)
        sha256 = attend_runtime.sha256_of(lib_path)
        shutil.copyfile(LOADER_SOURCE, os.path.join(staging, "attend_runtime.py"))
        meta = _metadata(imported, board, library, sha256, tuning, fused_dcac, None)
        _write_metadata(staging, meta)
        if check is not None:
            meta = _metadata(imported, board, library, sha256, tuning, fused_dcac,
                             check(staging))
            _write_metadata(staging, meta)
        if os.path.isdir(out_dir):
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
    finally:
        if os.path.isdir(staging):
            shutil.rmtree(staging)
    return meta
