"""The counting plugin (count_plugin.c), built once per source version, and the qemu that loads it.

Only Debian's dynamically linked ``qemu-user`` loads TCG plugins (the ``-static`` build that runs
the emulated boards cannot dlopen), so counting uses ``/usr/bin/qemu-<arch>`` with the rootfs as
its library prefix (``-L``) instead of a chroot.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from tvmc_attend.cache import cache_dir
from tvmc_attend.errors import UserError

SOURCES = ("count_plugin.c", "qemu_plugin_api.h")
QEMU_PACKAGE = "qemu-user"  # Debian's dynamic build: 1:7.2 on bookworm, plugin API version 1
GCC_FLAGS = ["-O2", "-pthread", "-shared", "-fPIC", "-fvisibility=hidden", "-Wall", "-Wextra"]


def qemu_binary(arch: str) -> str:
    """``/usr/bin/qemu-<arch>``, the plugin-capable qemu, or a one-line error saying how to get
    it."""
    path = f"/usr/bin/qemu-{arch}"
    if not os.access(path, os.X_OK):
        raise UserError(f"counting needs {path} from Debian's {QEMU_PACKAGE} (the dynamic build "
                        f"that loads plugins): run `make setup` or `sudo apt-get install "
                        f"{QEMU_PACKAGE}`")
    return path


def _source_digest() -> str:
    digest = hashlib.sha256()
    for name in SOURCES:
        digest.update(Path(__file__).with_name(name).read_bytes())
    return digest.hexdigest()[:16]


def plugin_path() -> Path:
    """The built plugin, compiled first if this source version has not been (~1 s)."""
    path = cache_dir() / "count-plugin" / f"count_plugin-{_source_digest()}.so"
    if path.is_file():
        return path
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        raise UserError("building the counting plugin needs a C compiler: run `sudo apt-get "
                        "install gcc`")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    source = Path(__file__).with_name(SOURCES[0])
    result = subprocess.run([compiler, *GCC_FLAGS, "-o", str(tmp), str(source)],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tmp.unlink(missing_ok=True)
        first = (result.stderr.strip().splitlines() or ["(no output)"])[0]
        raise UserError(f"building the counting plugin failed: {first}")
    os.replace(tmp, path)  # atomic: a concurrent build of the same source is harmless
    return path
