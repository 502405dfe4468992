"""The TVM runtime a bundle carries: ``libtvm_runtime.so`` and ``libtvm_ffi.so`` of the TVM
that compiled it, for the target's architecture. The loader drives them through TVM FFI's C
ABI (``attend_runtime``), so a board needs numpy and nothing else.

The host's come from the installed packages; a board's from the apache-tvm and apache-tvm-ffi
wheels of the same versions for its architecture, downloaded once (pip, ~98 MB, of which these
two files are ~5 MB) and cached under ``cache_dir()/runtime``. Nothing here imports TVM: the
files are found before the compile starts, so a board build without them fails in a second,
not after the compile.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tvmc_attend.attend_runtime import machine_arch
from tvmc_attend.cache import cache_dir
from tvmc_attend.errors import UserError

RUNTIME_DIR = "runtime"  # inside a bundle
# file -> (the distribution that ships it, its path inside that distribution's wheel)
LIBRARIES = {
    "libtvm_ffi.so": ("apache-tvm-ffi", "tvm_ffi/lib/libtvm_ffi.so"),
    "libtvm_runtime.so": ("apache-tvm", "tvm/lib/libtvm_runtime.so"),
}
# architecture -> the wheels' platform tag (the same manylinux floor the pinned wheels use)
WHEEL_PLATFORMS = {"aarch64": "manylinux_2_28_aarch64", "x86_64": "manylinux_2_28_x86_64"}
READY = ".complete"  # written last: a cache directory without it is an interrupted fetch


@dataclass(frozen=True)
class RuntimeLibs:
    """The runtime files for one architecture, and the versions they are from."""

    arch: str
    paths: dict[str, Path]  # file name (LIBRARIES) -> where it is
    versions: dict[str, str]  # distribution -> version
    runner: Path | None = None  # `run`, the program that runs a bundle without Python

    @property
    def size(self) -> int:
        return sum(path.stat().st_size for path in self.paths.values())


def installed_versions() -> dict[str, str]:
    """The versions of TVM installed here: a bundle's runtime must be the compiler's."""
    try:
        return {dist: importlib.metadata.version(dist) for dist, _ in LIBRARIES.values()}
    except importlib.metadata.PackageNotFoundError as err:
        raise UserError(f"{err.name} is not installed; run `make setup`") from None


def arch_of(triple: str) -> str:
    """``aarch64-linux-gnu`` -> ``aarch64``; a host build ("host") is this machine's, named as
    the loader names it (the architecture it checks a bundle against)."""
    if triple == "host":
        return machine_arch()
    return triple.split("-")[0]


def runtime_libs(arch: str, fetch: bool = True) -> RuntimeLibs:
    """The runtime libraries for ``arch`` (this machine's: from the installed packages;
    another's: the cached wheels' copy, fetched first unless ``fetch`` is False)."""
    versions = installed_versions()
    if arch == machine_arch():
        return RuntimeLibs(arch, _installed_paths(), versions)
    if arch not in WHEEL_PLATFORMS:
        raise UserError(f"no TVM runtime wheels for {arch}; compile with --runtime system")
    folder = cache_dir() / "runtime" / "-".join(
        f"{dist}{version}" for dist, version in sorted(versions.items())) / arch
    if not (folder / READY).is_file():
        if not fetch:
            raise UserError(f"the TVM runtime for {arch} is not cached at {folder}; run "
                            "`make setup`, or compile with --runtime system")
        _fetch(arch, versions, folder)
    return RuntimeLibs(arch, {name: folder / name for name in LIBRARIES}, versions)


def _installed_paths() -> dict[str, Path]:
    paths = {}
    for name, (dist, member) in LIBRARIES.items():
        package, inside = member.split("/", 1)
        spec = importlib.util.find_spec(package)  # finds the package without importing it
        if spec is None or not spec.submodule_search_locations:
            raise UserError(f"{dist} is not installed; run `make setup`")
        paths[name] = Path(spec.submodule_search_locations[0]) / inside
    return paths


def _fetch(arch: str, versions: dict[str, str], folder: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="tvmc-attend-wheels-") as tmp:
        argv = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                "--only-binary=:all:", "--platform", WHEEL_PLATFORMS[arch],
                "--python-version", f"{sys.version_info[0]}.{sys.version_info[1]}",
                "--implementation", "cp", "--dest", tmp,
                *(f"{dist}=={version}" for dist, version in sorted(versions.items()))]
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise UserError(f"downloading the {arch} TVM runtime wheels failed ({tail}); check "
                            "the network or pip's index, or compile with --runtime system")
        contents = {}
        for name, (dist, member) in LIBRARIES.items():
            prefix = dist.replace("-", "_") + "-"
            wheel = next((w for w in os.listdir(tmp) if w.startswith(prefix)), None)
            if wheel is None:
                raise UserError(f"pip downloaded no {dist} wheel for {arch}; compile with "
                                "--runtime system")
            with zipfile.ZipFile(os.path.join(tmp, wheel)) as archive:
                contents[name] = archive.read(member)
    _publish(folder, contents)


def _publish(folder: Path, contents: dict[str, bytes]) -> None:
    """Write the libraries into ``folder`` all at once (staged beside it, then renamed), so a
    concurrent or interrupted fetch never leaves a folder that looks complete."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        for name, data in contents.items():
            (staging / name).write_bytes(data)
            os.chmod(staging / name, 0o755)
        digest = hashlib.sha256(b"".join(contents.values())).hexdigest()
        (staging / READY).write_text(digest + "\n")
        try:
            os.rename(staging, folder)
        except OSError:  # another process published it first: theirs is as good
            if not (folder / READY).is_file():
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging)
