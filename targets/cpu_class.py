"""CPU classes: what host tuning databases are keyed by, so that they apply on every CPU of a
class, not only on the CPU model that tuned them.

A MetaSchedule record is a schedule of one task (a TIR function); the tasks of a model depend
on its lowering, and our lowering depends on the target only through its vector width
(channel blocks of 16 floats on AVX-512, 8 on AVX2). So records tuned on one AVX-512 CPU
apply, unchanged, on any other AVX-512 CPU, built there for that CPU. Each class has a preset
(``host-avx2``, ``host-avx512``) whose LLVM CPU model generates code that runs on every CPU of
the class; ``host`` is this machine's own CPU (``mcpu: native``) and belongs to the widest
class it runs. Read from ``/proc/cpuinfo``: no TVM needed.
"""

from __future__ import annotations

import functools
import platform
from dataclasses import dataclass


@dataclass(frozen=True)
class CpuClass:
    """An ISA class: its name, the preset that compiles for it, and the CPU flags it needs."""

    name: str
    preset: str
    needs: frozenset[str]

    def runs_on(self, flags: frozenset[str]) -> bool:
        return self.needs <= flags

    def missing(self, flags: frozenset[str]) -> list[str]:
        return sorted(self.needs - flags)


# Widest first. Flags as /proc/cpuinfo spells them; what LLVM's skylake-avx512 and haswell
# CPU models enable beyond SSE4.2 (so their code runs wherever these are present).
X86_CLASSES = (
    CpuClass("x86-64-avx512", "host-avx512", frozenset(
        {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl", "avx2", "fma", "bmi2",
         "f16c", "movbe"})),
    CpuClass("x86-64-avx2", "host-avx2", frozenset(
        {"avx2", "fma", "bmi1", "bmi2", "f16c", "movbe"})),
)
CLASSES = {c.name: c for c in X86_CLASSES}


@functools.cache
def cpu_flags() -> frozenset[str]:
    """This machine's CPU feature flags (empty where /proc/cpuinfo has none, e.g. not Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@functools.cache
def cpu_model_name() -> str:
    """This machine's CPU as /proc/cpuinfo names it (e.g. ``AMD EPYC 9B14``)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def classes_here(flags: frozenset[str] | None = None) -> list[CpuClass]:
    """The classes whose code runs on this CPU (or one with ``flags``), widest first."""
    if flags is None:
        if platform.machine() not in ("x86_64", "AMD64"):
            return []
        flags = cpu_flags()
    return [c for c in X86_CLASSES if c.runs_on(flags)]


def host_class(flags: frozenset[str] | None = None) -> CpuClass | None:
    """The widest class this CPU belongs to; None for a CPU without AVX2 (or not x86)."""
    here = classes_here(flags)
    return here[0] if here else None
