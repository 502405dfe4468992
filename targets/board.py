"""Board presets: data files in ``presets/`` and the small class that reads them.

A preset is everything the pipeline needs to know about a board: the TVM target (as a dict,
since TVM 0.27 no longer parses target strings), the cross compiler, the RPC key under which
its devices register, its thread count, the CPU model qemu should emulate for it, and (for
tuning by counting) a model of one core: its data caches and the cost of a miss at each.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import Any

from tvmc_attend.errors import UserError

from .cpu_class import CLASSES, CpuClass, cpu_flags, host_class

_PRESET_PACKAGE = "tvmc_attend.targets"


@dataclass(frozen=True)
class CacheLevel:
    """One data cache level of a core: geometry, and what a miss here costs (the load-to-use
    latency of the next level, or of DRAM after the last level), in core cycles."""

    bytes: int
    ways: int
    miss_cycles: float


INSTRUCTIONS_ONLY = "instructions"  # a preset's mca_cpu that asks for instructions / ipc


@dataclass(frozen=True)
class CoreModel:
    """The counted cost of one core (``device.counting.cost``): each block of code that ran
    costs the slower of its compute (executions x its cycles on llvm-mca's model of
    ``mca_cpu``; cold blocks, and every block when ``mca_cpu`` is None or "instructions",
    instructions / ``ipc``) and its misses x their miss cycles x ``exposed_miss`` (the share
    of a miss's latency left once misses overlap each other, calibrated on a clock).
    Published figures and a calibration, with their sources; it ranks schedules, it is not a
    latency."""

    ipc: float
    line_bytes: int
    caches: tuple[CacheLevel, ...]
    source: str
    mca_cpu: str | None = None
    exposed_miss: float = 1.0

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CoreModel:
        return cls(ipc=float(data["ipc"]), line_bytes=int(data["line_bytes"]),
                   caches=tuple(CacheLevel(**level) for level in data["caches"]),
                   source=str(data["source"]), mca_cpu=data.get("mca_cpu"),
                   exposed_miss=float(data.get("exposed_miss", 1.0)))

    @property
    def throughput_cpu(self) -> str | None:
        """The llvm-mca cpu blocks are weighed on, or None for instructions / ipc."""
        return None if self.mca_cpu in (None, INSTRUCTIONS_ONLY) else self.mca_cpu

    def miss_cycles(self, misses: tuple[int, ...], exposed: float | None = None) -> float:
        """The exposed cycles of these misses per level, L1 first (``exposed``: instead of
        the core's ``exposed_miss``)."""
        share = self.exposed_miss if exposed is None else exposed
        return share * sum(
            n * level.miss_cycles for n, level in zip(misses, self.caches, strict=False))


@dataclass(frozen=True)
class Board:
    name: str
    description: str
    target: dict[str, Any] = field(hash=False)
    cross_compiler: str | None = None
    rpc_key: str | None = None
    threads: int | None = None
    qemu_cpu: str | None = None
    core_model: CoreModel | None = field(default=None, hash=False)
    # the CPU class (cpu_class.py) a host preset compiles for; ``host`` itself has the class
    # of the CPU it runs on
    cpu_class: str | None = None

    @property
    def isa_class(self) -> CpuClass | None:
        """The CPU class of this target: a class preset's own, this CPU's for ``host``, None
        for boards (their databases are keyed by the board itself)."""
        if self.cpu_class:
            return CLASSES[self.cpu_class]
        if not self.is_remote and self.target.get("mcpu") == "native":
            return host_class()
        return None

    @property
    def database_name(self) -> str:
        """The folder under a log dir that holds this target's databases: the class's preset
        for host CPUs (``host`` on an AVX-512 CPU shares ``host-avx512``), else the board."""
        cls = self.isa_class
        return cls.preset if cls else self.name

    def check_runs_here(self) -> None:
        """A class preset compiles code that this CPU must be able to run."""
        if self.cpu_class and not self.is_remote:
            missing = CLASSES[self.cpu_class].missing(cpu_flags())
            if missing:
                raise UserError(f"target {self.name} needs a CPU with {', '.join(missing)}, "
                                "which this one lacks; use --target host")

    def require_toolchain(self) -> None:
        """What building for this target needs here: its cross compiler, or a CPU that runs a
        class preset's code (it is run here, to verify and to tune)."""
        self.check_runs_here()
        if self.cross_compiler and shutil.which(self.cross_compiler) is None:
            raise UserError(
                f"cross compiler '{self.cross_compiler}' for target {self.name} is not "
                "installed; run `make setup` or `apt-get install gcc-aarch64-linux-gnu`")

    @property
    def is_remote(self) -> bool:
        """True for boards reached over RPC (cross-compiled), False for this host."""
        return self.cross_compiler is not None

    @property
    def triple(self) -> str:
        return self.target.get("mtriple", "host")

    def resolved_target_dict(self) -> dict[str, Any]:
        """The target dict with ``mcpu: native`` resolved, and for a target on this host its
        core count."""
        target = dict(self.target)
        if target.get("mcpu") == "native":
            target["mcpu"] = native_cpu()
        if not self.is_remote:  # MetaSchedule needs it for a local target
            target.setdefault("num-cores", self.thread_count())
        return target

    def tvm_target(self):
        """The ``tvm.target.Target`` of this board (imports TVM)."""
        import tvm

        return tvm.target.Target(self.resolved_target_dict())

    def thread_count(self) -> int:
        """Threads it runs with: a board's own count; on this host, TVM's (``threads.py``)."""
        if self.threads:
            return self.threads
        from tvmc_attend.threads import tvm_threads

        return tvm_threads()

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "target": self.target,
            "cross_compiler": self.cross_compiler,
            "rpc_key": self.rpc_key,
            "threads": self.threads,
            "qemu_cpu": self.qemu_cpu,
            "core_model": asdict(self.core_model) if self.core_model else None,
            "cpu_class": self.isa_class.name if self.isa_class else None,
        }


def native_cpu() -> str:
    """LLVM's name for this machine's CPU (e.g. ``znver4``; imports TVM)."""
    from tvm.target import codegen

    return str(codegen.llvm_get_system_cpu())


def _load_presets() -> dict[str, Board]:
    boards: dict[str, Board] = {}
    for entry in sorted(resources.files(_PRESET_PACKAGE).joinpath("presets").iterdir(),
                        key=lambda p: (p.name != "host.json", p.name)):
        if entry.name.endswith(".json"):
            data = json.loads(entry.read_text())
            if data.get("core_model"):
                data["core_model"] = CoreModel.from_json(data["core_model"])
            boards[data["name"]] = Board(**data)
    return boards


_BOARDS: dict[str, Board] | None = None


def list_boards() -> list[Board]:
    global _BOARDS
    if _BOARDS is None:
        _BOARDS = _load_presets()
    return list(_BOARDS.values())


def get_board(name: str) -> Board:
    boards = {b.name: b for b in list_boards()}
    if name not in boards:
        raise UserError(
            f"unknown target '{name}'; valid targets: {', '.join(sorted(boards))} "
            "(see `tvmc-attend targets`)"
        )
    return boards[name]
