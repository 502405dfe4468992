"""``run``, the program a bundle carries to run its model without Python (``run.c``): built
for the target's architecture with its (cross) compiler against the same TVM runtime the bundle
carries, and cached by source, runtime and compiler (~1 s to build)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tvmc_attend.cache import cache_dir
from tvmc_attend.errors import UserError

from .runtime_libs import RuntimeLibs

SOURCE = Path(__file__).with_name("run.c")
HOST_COMPILER = "gcc"


def _ffi_include() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("tvm_ffi")  # the headers, without importing the package
    if spec is None or not spec.submodule_search_locations:
        raise UserError("apache-tvm-ffi is not installed; run `make setup`")
    return Path(spec.submodule_search_locations[0]) / "include"


def build_runner(runtime: RuntimeLibs, compiler: str | None) -> Path:
    """The ``run`` program for ``runtime``'s architecture, built with ``compiler`` (None: this
    machine's ``gcc``), linked to the runtime libraries and finding them in ``runtime/`` beside
    it at run time."""
    compiler = compiler or HOST_COMPILER
    if shutil.which(compiler) is None:
        raise UserError(f"'{compiler}' is not installed: it builds the bundle's `run` program; "
                        "run `make setup`, or compile with --runtime system")
    key = hashlib.sha256(SOURCE.read_bytes() + compiler.encode() + repr(
        sorted(runtime.versions.items())).encode() + runtime.arch.encode()).hexdigest()[:16]
    program = cache_dir() / "runner" / f"run-{runtime.arch}-{key}"
    if program.is_file():
        return program
    program.parent.mkdir(parents=True, exist_ok=True)
    libs = {path.parent for path in runtime.paths.values()}
    fd, staging = tempfile.mkstemp(prefix=".run-", dir=program.parent)
    os.close(fd)
    argv = [compiler, "-x", "c", "-std=c11", "-O2", "-Wall", f"-I{_ffi_include()}",
            str(SOURCE), "-x", "none", "-o", staging,
            *(f"-L{d}" for d in sorted(libs)), *(f"-Wl,-rpath-link,{d}" for d in sorted(libs)),
            "-Wl,--no-as-needed", "-ltvm_runtime", "-ltvm_ffi", "-Wl,-rpath,$ORIGIN/runtime"]
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        os.unlink(staging)
        tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"building the bundle's `run` program with {compiler} failed ({tail}); "
                        "compile with --runtime system")
    os.chmod(staging, 0o755)
    os.replace(staging, program)
    return program
