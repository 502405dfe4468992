"""The cached arm64 Debian rootfs that emulated boards run in, and how to run a program inside it.

One rootfs serves every board: qemu-user picks the CPU model per process from ``QEMU_CPU``, so
the cache is keyed only by the TVM version (and a recipe number bumped whenever the recipe
changes). It is built in a temporary directory and renamed into place when complete, so an
interrupted set-up never leaves a half-built rootfs that looks ready.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from tvmc_attend.cache import cache_dir
from tvmc_attend.errors import UserError

# The project's pins (requirements.txt): the remote must run the same TVM as the host compiler.
TVM_VERSION = "0.27.0.post1"
TVM_FFI_VERSION = "0.1.14.post1"
# Bump when the recipe below changes, so old caches are not reused.
RECIPE = 1
SUITE = "bookworm"  # Debian 12: Python 3.11, matching the wheels' --python-version below
PYTHON_VERSION = "3.11"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# What TVM's RPC server imports at run time, beside TVM itself.
REMOTE_PACKAGES = [
    f"apache-tvm=={TVM_VERSION}",
    f"apache-tvm-ffi=={TVM_FFI_VERSION}",
    "numpy<2.4",
    "psutil",
    "cloudpickle",
    "tornado",
    "typing_extensions",
    "ml_dtypes",
]
# The oldest CPU among the presets: the smoke test proves the wheels run on all of them.
SMOKE_TEST_CPU = "cortex-a53"
QEMU_STATIC = "/usr/bin/qemu-aarch64-static"
BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")
SITE_PACKAGES = f"usr/local/lib/python{PYTHON_VERSION}/dist-packages"
MANIFEST = ".tvmc-attend-rootfs.json"
# The host environment must not leak into the rootfs (PYTHONPATH, VIRTUAL_ENV, ...).
CLEAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

Progress = Callable[[str], None]


def rootfs_path() -> Path:
    return cache_dir() / "rootfs" / f"arm64-{SUITE}-tvm{TVM_VERSION}-r{RECIPE}"


def is_ready(path: Path | None = None) -> bool:
    return ((path or rootfs_path()) / MANIFEST).is_file()


def manifest(path: Path | None = None) -> dict:
    return json.loads(((path or rootfs_path()) / MANIFEST).read_text())


def check_host() -> None:
    """Fail with the exact fix when this machine cannot build or run an emulated board."""
    if os.geteuid() != 0:
        raise UserError(
            "emulated boards need root (debootstrap, chroot, mount): run the command as root "
            "or with sudo"
        )
    missing = [pkg for tool, pkg in (("debootstrap", "debootstrap"), ("unshare", "util-linux"))
               if shutil.which(tool) is None]
    if not Path(QEMU_STATIC).exists():
        missing.append("qemu-user-static")
    if missing:
        raise UserError(
            f"missing system packages for the emulated board: run "
            f"`sudo apt-get install {' '.join(missing + ['binfmt-support'])}`"
        )
    ensure_binfmt()


def _binfmt_entry() -> Path | None:
    """The registered binfmt entry that runs aarch64 ELF files, if enabled."""
    if not (BINFMT_DIR / "status").exists():
        return None
    for entry in BINFMT_DIR.iterdir():
        if entry.name in ("status", "register"):
            continue
        with contextlib.suppress(OSError):
            text = entry.read_text()
            # e_machine 0xb7 (EM_AARCH64) at offset 18 of the ELF header
            if text.startswith("enabled") and "0200b700" in text:
                return entry
    return None


def ensure_binfmt() -> None:
    """Make the kernel run aarch64 binaries through qemu (needed: the server spawns children).

    On a fresh boot of a minimal machine binfmt_misc may be unmounted; as root we mount it and
    enable Debian's qemu-aarch64 entry, which is what `binfmt-support` does at boot.
    """
    if _binfmt_entry() is not None:
        return
    if not (BINFMT_DIR / "status").exists():
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT_DIR)],
                       capture_output=True, check=False)
    if shutil.which("update-binfmts"):
        subprocess.run(["update-binfmts", "--enable", "qemu-aarch64"],
                       capture_output=True, check=False)
    if _binfmt_entry() is None:
        raise UserError(
            "the kernel cannot run aarch64 binaries (binfmt_misc): run `sudo apt-get install "
            "qemu-user-static binfmt-support && sudo mount -t binfmt_misc binfmt_misc "
            "/proc/sys/fs/binfmt_misc && sudo update-binfmts --enable qemu-aarch64`"
        )


def install_interpreter(root: Path) -> None:
    """Put qemu where the binfmt entry points, inside the rootfs.

    Entries registered without the F (fix-binary) flag resolve the interpreter path inside the
    chroot at exec time; copying it in makes both kinds work.
    """
    entry = _binfmt_entry()
    paths = {"/usr/bin/qemu-aarch64-static"}
    if entry is not None:
        match = re.search(r"^interpreter (\S+)$", entry.read_text(), re.MULTILINE)
        if match:
            paths.add(match.group(1))
    for path in paths:
        dest = root / path.lstrip("/")
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(QEMU_STATIC, dest)


def debian_mirror() -> str:
    """The Debian mirror this machine's apt uses (env TVMC_ATTEND_DEBIAN_MIRROR overrides)."""
    if os.environ.get("TVMC_ATTEND_DEBIAN_MIRROR"):
        return os.environ["TVMC_ATTEND_DEBIAN_MIRROR"]
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for source in sources:
        with contextlib.suppress(OSError):
            text = source.read_text()
            # deb822 (.sources): URIs/Suites stanzas; one-line format: deb URI SUITE COMPONENTS
            for stanza in re.split(r"\n\s*\n", text):
                uris = re.search(r"^URIs:\s*(\S+)", stanza, re.MULTILINE)
                suites = re.search(r"^Suites:\s*(.+)$", stanza, re.MULTILINE)
                if uris and suites and SUITE in suites.group(1).split():
                    return uris.group(1)
            for line in text.splitlines():
                parts = line.split()
                if len(parts) >= 3 and parts[0] == "deb" and parts[2] == SUITE:
                    return parts[1]
    return DEFAULT_MIRROR


def in_rootfs_argv(root: Path, argv: list[str], binds: dict[str, str] | None = None) -> list[str]:
    """A command that runs ``argv`` chrooted in ``root`` with /proc, /sys, /dev, a private /tmp
    and ``binds`` (host path -> absolute path inside the rootfs, e.g. a bundle under /tmp).

    The mounts live in a private mount namespace, so they vanish with the last process: nothing
    is left mounted on the host however the process ends.
    """
    script = (
        'set -e; r="$1"; shift; '
        'mount -t proc proc "$r/proc"; mount --rbind /sys "$r/sys"; '
        'mount --rbind /dev "$r/dev"; mount -t tmpfs tmpfs "$r/tmp"; '
    )
    for source, target in (binds or {}).items():
        inside = shlex.quote(target.lstrip("/"))
        script += f'mkdir -p "$r"/{inside}; mount --bind {shlex.quote(source)} "$r"/{inside}; '
    script += 'exec chroot "$r" "$@"'
    return ["unshare", "--mount", "--propagation", "private", "--",
            "sh", "-c", script, "sh", str(root), *argv]


def rootfs_env(qemu_cpu: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {"PATH": CLEAN_PATH, "HOME": "/root", "LANG": "C.UTF-8", "QEMU_CPU": qemu_cpu,
           "PYTHONUNBUFFERED": "1"}
    env.update(extra or {})
    return env


def ensure_rootfs(progress: Progress = print) -> Path:
    """The ready rootfs, built first if needed (once per TVM version; ~5 min, ~1.3 GB)."""
    final = rootfs_path()
    if is_ready(final):
        return final
    check_host()
    final.parent.mkdir(parents=True, exist_ok=True)
    with _build_lock(final.parent, progress):
        if is_ready(final):  # another process built it while we waited
            return final
        _remove_stale(final.parent)
        tmp = final.parent / f".building-{final.name}-{os.getpid()}"
        log = final.parent / f"{final.name}.build.log"
        try:
            _build(tmp, log, progress)
            os.rename(tmp, final)
        except BaseException:
            _remove_tree(tmp)
            raise
    return final


@contextlib.contextmanager
def _build_lock(folder: Path, progress: Progress) -> Iterator[None]:
    with open(folder / ".build.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress("another process is building the emulator rootfs; waiting for it ...")
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _build(tmp: Path, log: Path, progress: Progress) -> None:
    mirror = debian_mirror()
    started = time.monotonic()
    steps = [
        (f"debootstrap arm64 {SUITE} (minbase + python3) from {mirror}",
         lambda: _debootstrap(tmp, mirror, log)),
        ("install the qemu interpreter into the rootfs", lambda: install_interpreter(tmp)),
        (f"install the aarch64 TVM {TVM_VERSION} wheels", lambda: _pip_install(tmp, log)),
        (f"smoke test: import TVM's RPC server under qemu ({SMOKE_TEST_CPU})",
         lambda: _smoke_test(tmp, log)),
        ("clean up", lambda: _clean(tmp)),
    ]
    progress(f"building the emulator rootfs (once, ~5 min) in {tmp.parent}; log: {log}")
    with open(log, "w"):
        pass  # truncate the previous attempt's log
    for number, (title, step) in enumerate(steps, 1):
        step_start = time.monotonic()
        progress(f"[{number}/{len(steps)}] {title} ...")
        step()
        progress(f"[{number}/{len(steps)}] done in {time.monotonic() - step_start:.0f} s")
    size = _du(tmp)
    info = {"suite": SUITE, "mirror": mirror, "tvm": TVM_VERSION, "tvm_ffi": TVM_FFI_VERSION,
            "packages": REMOTE_PACKAGES, "recipe": RECIPE, "created": time.time(),
            "build_seconds": round(time.monotonic() - started), "size_bytes": size}
    # Written last: its presence is what marks the rootfs ready.
    (tmp / MANIFEST).write_text(json.dumps(info, indent=2))
    progress(f"rootfs ready: {size / 2**30:.2f} GB in {info['build_seconds']} s")


def _run_logged(argv: list[str], log: Path, what: str, env: dict[str, str] | None = None) -> None:
    with open(log, "a") as out:
        out.write(f"\n$ {' '.join(argv)}\n")
        out.flush()
        result = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, env=env, check=False)
    if result.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or [""]
        raise UserError(f"{what} failed (exit {result.returncode}: {tail[0][:200]}); "
                        f"see {log}, fix and re-run (the set-up starts over cleanly)")


def _debootstrap(tmp: Path, mirror: str, log: Path) -> None:
    # A private mount namespace: debootstrap's /proc and /sys mounts in the target cannot leak.
    argv = ["unshare", "--mount", "--propagation", "private", "--",
            "debootstrap", "--arch=arm64", "--variant=minbase", "--include=python3",
            SUITE, str(tmp), mirror]
    _run_logged(argv, log, "debootstrap", env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def _pip_install(tmp: Path, log: Path) -> None:
    argv = [sys.executable, "-m", "pip", "install", "--only-binary=:all:",
            "--platform", "manylinux_2_28_aarch64", "--python-version", PYTHON_VERSION,
            "--implementation", "cp", "--target", str(tmp / SITE_PACKAGES), *REMOTE_PACKAGES]
    if sys.version_info[:2] != tuple(int(x) for x in PYTHON_VERSION.split(".")):
        argv.insert(4, "--no-compile")  # the host's .pyc would be for another Python version
    _run_logged(argv, log, "pip install of the aarch64 wheels")


def _smoke_test(tmp: Path, log: Path) -> None:
    code = "import tvm, tvm.rpc.server, psutil, cloudpickle, tornado; print(tvm.__version__)"
    argv = in_rootfs_argv(tmp, ["/usr/bin/python3", "-c", code])
    _run_logged(argv, log, "importing TVM inside the rootfs", env=rootfs_env(SMOKE_TEST_CPU))


def _clean(tmp: Path) -> None:
    for folder in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for entry in (tmp / folder).glob("*"):
            if entry.is_file() and entry.name != "lock":
                entry.unlink()


def _du(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def _remove_stale(folder: Path) -> None:
    """Remove half-built rootfs dirs of interrupted set-ups (we hold the build lock)."""
    for stale in folder.glob(".building-*"):
        _remove_tree(stale)


def _remove_tree(path: Path) -> None:
    if not path.exists():
        return
    prefix = str(path.resolve()) + "/"
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    busy = [m for m in mounts if m.startswith(prefix)]
    if busy:
        raise UserError(f"{path} still has mounts ({busy[0]} ...): run `sudo umount -R "
                        f"{busy[0]}` and re-run")
    shutil.rmtree(path)
