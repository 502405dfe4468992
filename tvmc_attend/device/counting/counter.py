"""A counting core: one guest process under qemu + count_plugin that counts compiled functions.

``CountingCore`` keeps one guest runner alive (Python and the TVM runtime start once, ~10-60 s
under qemu) and sends it one job per candidate: the artifact to load and its arguments' shapes.
The plugin appends each bracketed call's counts to a file the host reads back. Counting does
not depend on the machine or its load (one emulated core, TVM_NUM_THREADS=1): the same
sequence of jobs gives the same counts anywhere. A job's misses depend a little on the jobs
before it in the same guest (the simulated caches and the allocator start where they left
off): up to 1.6 % apart on small kernels.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tvmc_attend import attend_runtime
from tvmc_attend.errors import UserError
from tvmc_attend.targets import Board, CoreModel

from .cost import CostModel
from .counts import CodeBlock, Counts
from .plugin import plugin_path, qemu_binary

GUEST_RUNNER = str(Path(__file__).with_name("guest_runner.py"))
# the loader whose ctypes binding the guest drives the TVM runtime with (a host path: qemu-user
# reads host files; the rootfs only prefixes the ones it has)
LOADER_SOURCE = attend_runtime.__file__
START_TIMEOUT_S = 600.0  # Python + numpy + the TVM runtime under qemu with the plugin loaded
JOB_TIMEOUT_S = 600.0  # one tuning candidate: a bad schedule can run billions of instructions
BUNDLE_TIMEOUT_S = 3600.0  # a whole untuned model: tens of billions under the cache model


class CountingError(RuntimeError):
    """A candidate could not be counted (it failed to load or run, or timed out)."""


@dataclass(frozen=True)
class GuestSpec:
    """How to start the guest: qemu for ``arch`` with CPU ``qemu_cpu``, the guest's Python,
    and the library prefix (the board's rootfs) or None for this host's own files."""

    arch: str
    qemu_cpu: str
    python: str
    rootfs: Path | None = None

    @classmethod
    def for_board(cls, qemu_cpu: str) -> GuestSpec:
        """An emulated aarch64 board core, in the cached rootfs (built first if needed)."""
        from tvmc_attend.device import rootfs

        root = rootfs.ensure_rootfs(lambda msg: print(msg, file=sys.stderr, flush=True))
        return cls("aarch64", qemu_cpu, str(root / "usr/bin/python3"), root)

    @classmethod
    def for_host(cls, qemu_cpu: str = "max") -> GuestSpec:
        """This machine's architecture under qemu, running this Python (for checking the
        counted cost against this host's own timings)."""
        return cls(os.uname().machine, qemu_cpu, sys.executable)


class CountingCore:
    """A running guest runner. Use as a context manager; ``count`` one artifact at a time."""

    def __init__(self, guest: GuestSpec, core: CoreModel) -> None:
        self.guest = guest
        self.core = core
        self.cost = CostModel(core, guest.arch)  # fails here if the core's model is missing
        self._dir = tempfile.TemporaryDirectory(prefix="tvmc-attend-count-")
        self._counts_file = Path(self._dir.name) / "counts.txt"
        self._blocks_file = Path(self._dir.name) / "blocks.txt"
        self._offset = self._blocks_offset = 0
        self._next_tag = 0
        self._proc: subprocess.Popen | None = None

    @classmethod
    def for_board(cls, board: Board) -> CountingCore:
        """A counting core for one core of ``board`` (its rootfs CPU model and core model)."""
        if board.core_model is None or not board.qemu_cpu:
            raise UserError(f"target {board.name} has no core model to count with: pick a board "
                            "whose preset has one (rpi3, rpi4, rpi5, jetson-nano)")
        if not board.core_model.mca_cpu:
            raise UserError(f"target {board.name}'s core model names no llvm-mca cpu "
                            "(core_model.mca_cpu in its preset): add one (see `llvm-mca "
                            "-mtriple=aarch64 -mcpu=help`), or set it to the fallback "
                            "\"instructions\" to count instructions / ipc")
        return cls(GuestSpec.for_board(board.qemu_cpu), board.core_model)

    def __enter__(self) -> CountingCore:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
        self._dir.cleanup()

    def _argv(self) -> list[str]:
        caches = []
        for i, level in enumerate(self.core.caches, 1):
            caches += [f"l{i}={level.bytes}", f"l{i}_ways={level.ways}"]
        plugin = ",".join([str(plugin_path()), f"out={self._counts_file}",
                           f"blocks={self._blocks_file}", f"line={self.core.line_bytes}",
                           *caches])
        argv = [qemu_binary(self.guest.arch), "-cpu", self.guest.qemu_cpu, "-plugin", plugin]
        if self.guest.rootfs is not None:
            argv += ["-L", str(self.guest.rootfs)]
        return [*argv, self.guest.python, GUEST_RUNNER, LOADER_SOURCE]

    def _env(self) -> dict[str, str]:
        env = {"TVM_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
               "TVM_USE_RUNTIME_LIB": "1", "LANG": "C.UTF-8"}
        if self.guest.rootfs is None:  # this host's Python: keep its environment
            return {**os.environ, **env}
        from tvmc_attend.device.rootfs import CLEAN_PATH

        return {**env, "PATH": CLEAN_PATH, "HOME": "/root"}

    def start(self) -> None:
        if len(self.core.caches) not in (2, 3):
            raise UserError("a core model needs two or three cache levels")
        self._log = open(Path(self._dir.name) / "guest.log", "w")  # noqa: SIM115
        self._proc = subprocess.Popen(self._argv(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=self._log, env=self._env(), text=True)
        reply = self._read_reply(START_TIMEOUT_S)
        if reply is None or not reply.get("ready"):
            self.close()
            raise UserError(f"the counting core ({self.guest.arch}, {self.guest.qemu_cpu}) did "
                            f"not start: {self._log_tail()}")

    def _log_tail(self) -> str:
        path = Path(self._dir.name) / "guest.log"
        lines = path.read_text(errors="replace").strip().splitlines() if path.exists() else []
        return lines[-1][:300] if lines else "(no output)"

    def _read_reply(self, timeout_s: float) -> dict | None:
        """The guest's next reply, or None if it died or timed out."""
        assert self._proc is not None and self._proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self._proc.stdout], [], [], 1.0)
            if ready:
                line = self._proc.stdout.readline()
                if not line:
                    return None
                return json.loads(line)
            if self._proc.poll() is not None:
                return None
        return None

    def count(self, artifact: str, args: list[tuple[list[int], str]],
              timeout_s: float = JOB_TIMEOUT_S) -> Counts:
        """Counts of one call of ``artifact``'s entry function on arguments of these shapes
        and dtypes (random data, seeded). Raises CountingError for this candidate; the core
        restarts itself if the guest died or hung."""
        return self._run({"module": os.path.abspath(artifact),
                          "args": [[list(shape), dtype] for shape, dtype in args]}, timeout_s)

    def count_bundle(self, bundle_dir: str, timeout_s: float = BUNDLE_TIMEOUT_S) -> Counts:
        """Counts of one inference of a compiled bundle, opened by the loader on the TVM
        runtime installed in the guest."""
        return self._run({"bundle": os.path.abspath(bundle_dir)}, timeout_s)

    def _run(self, job: dict, timeout_s: float) -> Counts:
        if self._proc is None or self._proc.poll() is not None:
            self.close()
            self.start()
        tag = self._next_tag
        self._next_tag += 1
        job = {"tag": tag, **job}
        artifact = job.get("module") or job["bundle"]
        assert self._proc is not None and self._proc.stdin is not None
        self._proc.stdin.write(json.dumps(job) + "\n")
        self._proc.stdin.flush()
        reply = self._read_reply(timeout_s)
        if reply is None:
            why = (f"timed out after {timeout_s:.0f} s" if self._proc.poll() is None
                   else f"the guest exited ({self._log_tail()})")
            self.close()
            raise CountingError(f"counting {artifact} failed: {why}")
        if "error" in reply:
            raise CountingError(reply["error"])
        return self._read_counts(2 * tag + 1)

    def _read_counts(self, tag: int) -> Counts:
        with open(self._counts_file) as f:
            f.seek(self._offset)
            lines = f.read().splitlines()
            self._offset = f.tell()
        for line in lines:
            fields = [int(x) for x in line.split()]
            if fields[0] == tag:
                levels = len(self.core.caches)
                return Counts(fields[1], fields[2], fields[3], tuple(fields[4:4 + levels]),
                              self._read_blocks(tag))
        raise CountingError(f"the plugin wrote no count for the call (tag {tag})")

    def _read_blocks(self, tag: int) -> tuple[CodeBlock, ...]:
        """The tag's blocks, retranslations merged (the plugin writes blocks after the
        counts)."""
        with open(self._blocks_file) as f:
            f.seek(self._blocks_offset)
            lines = f.read().splitlines()
            self._blocks_offset = f.tell()
        levels = len(self.core.caches)
        merged: dict[tuple[str, str], list[int]] = {}
        for line in lines:
            t, vaddr, executions, instructions, *misses, code = line.split()
            if int(t) == tag:
                entry = merged.setdefault((vaddr, code), [0, int(instructions)] + [0] * levels)
                entry[0] += int(executions)
                for i in range(levels):
                    entry[2 + i] += int(misses[i])
        return tuple(CodeBlock(bytes.fromhex(code), n, insns, tuple(m), address=int(vaddr, 16))
                     for (vaddr, code), (n, insns, *m) in merged.items())

    def close(self) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait()
            self._proc = None
            self._offset = self._blocks_offset = 0
            self._counts_file.unlink(missing_ok=True)
            self._blocks_file.unlink(missing_ok=True)
        if getattr(self, "_log", None):
            self._log.close()
            self._log = None
