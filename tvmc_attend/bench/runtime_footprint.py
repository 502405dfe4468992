"""What a bundle costs on the device: its size, split into model library, TVM runtime and
loader, and on this host the time and memory of a fresh process that imports the loader, loads
the bundle and runs the first inference, with the bundled runtime (a Python that has numpy
only) and with the installed TVM (``import tvm``). Beside them, the installed size of the
runtimes people deploy with on a Pi, measured from their aarch64 wheels.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tvmc_attend.compiler.bundle import Bundle
from tvmc_attend.timestamps import utc_timestamp

from .report import machine_info

Progress = Callable[[str], None]

# What a Pi user installs instead (aarch64 wheels for this Python, without dependencies).
ALTERNATIVES = ("tflite-runtime", "ai-edge-litert", "onnxruntime", "executorch")

# A fresh process: import the bundle's loader, load, first inference; it reports its own
# clock at each step (from before `import numpy`), its resident memory after the inference
# and its peak (TVM's library load holds the executable's blob twice for a moment).
START_UP = """
import time
start = time.perf_counter()
import os, sys, json
sys.path.insert(0, sys.argv[1])
import numpy as np
import attend_runtime
imported = time.perf_counter()
m = attend_runtime.load(sys.argv[1], runtime=sys.argv[2])
loaded = time.perf_counter()
m(np.zeros(m.input_shape, m.input_dtype))
first = time.perf_counter()
with open("/proc/self/status") as f:
    status = dict(line.split(":", 1) for line in f)
print(json.dumps({"import_s": imported - start, "load_s": loaded - imported,
                  "first_inference_s": first - loaded, "total_s": first - start,
                  "rss_mb": int(status["VmRSS"].split()[0]) / 1024,
                  "peak_rss_mb": int(status["VmHWM"].split()[0]) / 1024,
                  "tvm_imported": "tvm" in sys.modules,
                  "compiler_mapped": "libtvm_compiler" in open("/proc/self/maps").read()}))
"""


@dataclass
class FootprintReport:
    model: str
    board: str
    sizes: dict[str, int]  # part -> bytes
    start_up: dict[str, dict[str, Any]]  # runtime -> medians (and every run)
    alternatives: dict[str, Any]  # package -> installed bytes of its aarch64 wheel, or why not
    runs: int
    date: str = field(default_factory=utc_timestamp)

    def as_json(self) -> dict[str, Any]:
        return {"model": self.model, "target": self.board, "sizes_bytes": self.sizes,
                "start_up": self.start_up, "alternatives_installed_bytes": self.alternatives,
                "runs": self.runs, "date": self.date, "machine": machine_info()}


def bundle_sizes(bundle: Bundle) -> dict[str, int]:
    """Bytes of each part of a bundle: model library, runtime libraries, loader, metadata."""
    meta = bundle.metadata
    path = Path(bundle.path)
    sizes = {"model library": (path / meta.library_file).stat().st_size}
    for entry in (meta.runtime or {}).get("files", []):
        sizes[entry["file"]] = (path / entry["file"]).stat().st_size
    runner = (meta.runtime or {}).get("runner")
    if runner:
        sizes["run (C program)"] = (path / runner["file"]).stat().st_size
    sizes["loader (attend_runtime.py)"] = (path / "attend_runtime.py").stat().st_size
    sizes["metadata.json"] = (path / "metadata.json").stat().st_size
    return sizes


def link_numpy_only(folder: Path) -> Path:
    """``folder`` holding links to this Python's numpy and nothing else: on the PYTHONPATH of a
    ``python -S`` (no site-packages), numpy is all that process can import."""
    site = Path(np.__file__).parent.parent
    for name in ("numpy", "numpy.libs"):
        if (site / name).exists():
            (folder / name).symlink_to(site / name)
    return folder


def start_up(bundle: Bundle, runs: int, progress: Progress) -> dict[str, dict[str, Any]]:
    """Medians over ``runs`` fresh processes per runtime (alternating, so drift hits both)."""
    with tempfile.TemporaryDirectory(prefix="tvmc-attend-numpy-only-") as tmp:
        samples = _start_up_samples(bundle, runs, link_numpy_only(Path(tmp)), progress)
    return {runtime: {**{key: statistics.median(s[key] for s in runs_)
                         for key in ("import_s", "load_s", "first_inference_s", "total_s",
                                     "rss_mb", "peak_rss_mb")},
                      "tvm_imported": runs_[0]["tvm_imported"],
                      "compiler_mapped": runs_[0]["compiler_mapped"], "runs": runs_}
            for runtime, runs_ in samples.items()}


def _start_up_samples(bundle: Bundle, runs: int, numpy_only: Path,
                      progress: Progress) -> dict[str, list[dict[str, Any]]]:
    how = {"bundled": [sys.executable, "-S"], "system": [sys.executable]}
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    samples: dict[str, list[dict[str, Any]]] = {k: [] for k in how}
    for i in range(runs):
        for runtime, python in how.items():
            run_env = {**env, "PYTHONPATH": str(numpy_only)} if runtime == "bundled" else env
            done = subprocess.run([*python, "-c", START_UP, bundle.path, runtime],
                                  capture_output=True, text=True, env=run_env, check=True)
            samples[runtime].append(json.loads(done.stdout.strip().splitlines()[-1]))
        progress(f"start-up run {i + 1}/{runs}: " + ", ".join(
            f"{k} {v[-1]['total_s']:.2f} s" for k, v in samples.items()))
    return samples


def installed_size(package: str) -> int | str:
    """Bytes the package's aarch64 wheel for this Python unpacks to (no dependencies), or why
    it could not be measured."""
    with tempfile.TemporaryDirectory(prefix="tvmc-attend-wheel-") as tmp:
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
             "--only-binary=:all:", "--platform", "manylinux2014_aarch64", "--platform",
             "manylinux_2_28_aarch64", "--python-version",
             f"{sys.version_info[0]}.{sys.version_info[1]}", "--implementation", "cp",
             "--dest", tmp, package], capture_output=True, text=True, check=False)
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            return "no aarch64 wheel for this Python in the package index here"
        with zipfile.ZipFile(wheels[0]) as archive:
            return sum(info.file_size for info in archive.infolist())


def footprint(bundle: Bundle, runs: int = 5, alternatives: bool = True,
              progress: Progress = print) -> FootprintReport:
    meta = bundle.metadata
    arch = (meta.runtime or {}).get("arch")
    timed = arch == os.uname().machine
    return FootprintReport(
        model=meta.model, board=meta.target.name, sizes=bundle_sizes(bundle),
        start_up=start_up(bundle, runs, progress) if timed else {},
        alternatives={p: installed_size(p) for p in ALTERNATIVES} if alternatives else {},
        runs=runs if timed else 0)
