"""Cycles per execution of a block of machine code on one core, by LLVM's scheduling models.

``llvm-mca`` simulates a block run back to back (``-iterations``) on the out-of-order or
in-order model of a named CPU (``-mcpu``: dispatch width, ports, latencies) and reports the
cycles it took; cycles / iterations is what one execution of the block costs in a loop, with
its dependency chains (how many accumulators a register tile keeps in flight) and port
pressure, which counting instructions cannot see. Blocks come from the counting plugin as
bytes: ``llvm-mc --disassemble`` turns them into assembly (many blocks per call, separated by
an undefined instruction), one ``llvm-mca`` call analyses them all as code regions. Results are
cached on disk by (LLVM version, triple, cpu) and the block's bytes, so a tune analyses each
distinct block once.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
from functools import cache

from tvmc_attend.cache import cache_dir
from tvmc_attend.errors import UserError

from . import memory_chains

# The oldest LLVM whose llvm-mca can skip what it cannot parse (a block with a system
# instruction would otherwise fail the whole batch): 19, Debian 12's newest llvm package.
MIN_LLVM = 19
ITERATIONS = 100  # enough for a loop-carried chain's steady state; ~1 ms per block
# Bump when what a block costs changes (the on-disk cache is keyed by it).
MODEL_VERSION = 2
# qemu runs a rep-prefixed string instruction (memset/memcpy inlined as rep stos/movs) one
# iteration per block execution; llvm-mca charges the whole instruction (~100 cycles) each
# time. One element per cycle is the order of a fast-string engine's rate.
REP_ITERATION_CYCLES = 1.0
# Between blocks in one disassembly: an undefined instruction (never executed inside a block
# that ran) whose disassembly marks the boundary.
SEPARATORS = {"aarch64": (bytes(4), "udf"), "x86_64": (b"\x0f\x0b", "ud2")}
TRIPLES = {"aarch64": "aarch64-linux-gnu", "x86_64": "x86_64-linux-gnu"}


@cache
def llvm_tools() -> tuple[str, str, int]:
    """(llvm-mc, llvm-mca, major version) of the newest LLVM >= MIN_LLVM installed, or a
    one-line error saying how to get one."""
    found = []
    for mca in glob.glob("/usr/lib/llvm-*/bin/llvm-mca"):
        match = re.search(r"llvm-(\d+)/", mca)
        mc = os.path.join(os.path.dirname(mca), "llvm-mc")
        if match and os.access(mc, os.X_OK):
            found.append((int(match.group(1)), mc, mca))
    mca, mc = shutil.which("llvm-mca"), shutil.which("llvm-mc")  # unversioned, on PATH
    if mca and mc:
        out = subprocess.run([mca, "--version"], capture_output=True, text=True).stdout
        match = re.search(r"LLVM version (\d+)", out)
        if match:
            found.append((int(match.group(1)), mc, mca))
    usable = sorted(f for f in found if f[0] >= MIN_LLVM)
    if not usable:
        have = ", ".join(str(f[0]) for f in sorted(found)) or "none"
        raise UserError(f"the counted cost needs llvm-mca from LLVM >= {MIN_LLVM} (found: "
                        f"{have}): run `make setup` or `sudo apt-get install llvm-{MIN_LLVM}`")
    version, mc, mca = usable[-1]
    return mc, mca, version


@cache
def known_cpus(arch: str) -> frozenset[str]:
    """The ``-mcpu`` names llvm-mca has for ``arch``."""
    _mc, mca, _v = llvm_tools()
    listed = subprocess.run([mca, f"-mtriple={TRIPLES[arch]}", "-mcpu=help"],
                            capture_output=True, text=True)
    section = (listed.stdout + listed.stderr).split("Available features")[0]
    return frozenset(m.group(1) for m in re.finditer(r"^\s+([\w.-]+)\s+- Select the",
                                                     section, re.M))


class BlockThroughput:
    """Cycles per execution of code blocks of ``arch`` on llvm-mca's model of ``cpu``."""

    def __init__(self, arch: str, cpu: str) -> None:
        if arch not in TRIPLES:
            raise UserError(f"no block throughput model for {arch} code (have: "
                            f"{', '.join(TRIPLES)})")
        self.mc, self.mca, version = llvm_tools()
        if cpu not in known_cpus(arch):
            raise UserError(f"llvm-mca {version} has no model of cpu '{cpu}' for {arch}; pick "
                            f"one of `{self.mca} -mtriple={TRIPLES[arch]} -mcpu=help`")
        self.arch, self.cpu, self.triple = arch, cpu, TRIPLES[arch]
        self._path = (cache_dir() / "block-throughput"
                      / f"llvm{version}-{arch}-{cpu}-i{ITERATIONS}-v{MODEL_VERSION}.tsv")
        self._known: dict[str, float] = {}
        if self._path.is_file():
            for line in self._path.read_text().splitlines():
                key, _, value = line.partition("\t")
                if value:
                    self._known[key] = float(value)

    @staticmethod
    def key(code: bytes) -> str:
        return hashlib.sha1(code).hexdigest()

    def cycles(self, blocks: list[bytes]) -> list[float]:
        """Cycles per execution of each block."""
        keys = [self.key(code) for code in blocks]
        todo = {k: code for k, code in zip(keys, blocks, strict=True) if k not in self._known}
        if todo:
            self._analyse(todo)
        return [self._known[k] for k in keys]

    def _analyse(self, todo: dict[str, bytes]) -> None:
        asm = self._disassemble(list(todo.values()))
        regions = []
        for i, lines in enumerate(asm):
            regions += [f"# LLVM-MCA-BEGIN b{i}", *lines, f"# LLVM-MCA-END b{i}"]
        result = subprocess.run(
            [self.mca, f"-mtriple={self.triple}", f"-mcpu={self.cpu}",
             f"-iterations={ITERATIONS}", "-json", "--skip-unsupported-instructions=any",
             "-"], input="\n".join(regions) + "\n", capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"llvm-mca failed on {len(todo)} blocks: "
                               f"{result.stderr.strip().splitlines()[:1]}")
        found = {}
        sizes = [len(code) for code in todo.values()]
        for region in json.loads(result.stdout).get("CodeRegions", []):
            summary = region.get("SummaryView", {})
            if summary.get("Iterations"):
                found[region["Name"]] = self._region_cycles(region, sizes[int(region["Name"][1:])])
        new = {}
        for i, key in enumerate(todo):
            # a block llvm-mca skipped entirely (all system instructions) costs its
            # instructions at one per cycle
            new[key] = found.get(f"b{i}", float(max(len(asm[i]), 1)))
        self._known.update(new)
        self._path.parent.mkdir(parents=True, exist_ok=True)
        # one append per batch: O_APPEND writes of a few KiB do not interleave, so two tunes
        # sharing the cache lose nothing
        with open(self._path, "a") as f:
            f.write("".join(f"{k}\t{v:.4f}\n" for k, v in new.items()))

    def _region_cycles(self, region: dict, n_bytes: int) -> float:
        """Cycles per execution of one analysed block: llvm-mca's steady state, at least its
        chains through memory (memory_chains.py)."""
        summary = region["SummaryView"]
        lines = region.get("Instructions", [])
        if len(lines) == 1 and lines[0].startswith("rep"):
            return REP_ITERATION_CYCLES
        latencies = [i["Latency"] for i in region["InstructionInfoView"]["InstructionList"]]
        block = [memory_chains.parse(self.arch, line, lat)
                 for line, lat in zip(lines, latencies, strict=False)]
        self_loop = bool(lines) and memory_chains.branches_to_itself(self.arch, lines[-1],
                                                                      n_bytes)
        return max(summary["TotalCycles"] / summary["Iterations"],
                   memory_chains.chain_cycles(block, self_loop))

    def _disassemble(self, blocks: list[bytes]) -> list[list[str]]:
        """Each block's instructions as assembly text: all in one llvm-mc call, or block by
        block when one did not decode cleanly (qemu 7.2 hands over an instruction that
        crosses a page truncated; decoding it swallows the separator after it)."""
        separator, _mnemonic = SEPARATORS[self.arch]
        groups = self._split(self._llvm_mc(separator.join(blocks)))
        if len(groups) == len(blocks):
            return groups
        return [self._split(self._llvm_mc(code))[0] for code in blocks]

    def _llvm_mc(self, code: bytes) -> str:
        return subprocess.run(
            [self.mc, "--disassemble", f"-triple={self.triple}", f"-mcpu={self.cpu}"],
            input=" ".join(f"0x{b:02x}" for b in code), capture_output=True, text=True).stdout

    def _split(self, listing: str) -> list[list[str]]:
        mnemonic = SEPARATORS[self.arch][1]
        groups: list[list[str]] = [[]]
        for line in listing.splitlines():
            text = line.strip()
            if not text or text.startswith("."):
                continue
            if text.split()[0] == mnemonic:
                groups.append([])
            else:
                groups[-1].append(text)
        return groups


@cache
def block_throughput(arch: str, cpu: str) -> BlockThroughput:
    """One analyser (and its cache) per (arch, cpu) in this process."""
    return BlockThroughput(arch, cpu)
