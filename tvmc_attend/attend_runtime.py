"""attend_runtime: the one-file loader shipped in every tvmc-attend bundle.

It depends only on the TVM runtime and numpy, so it runs on a board that has nothing else:

    import attend_runtime
    m = attend_runtime.load("bundle_dir")      # verifies the library's sha256, then loads it
    y = m(x)                                    # numpy in, numpy out
    stats = m.benchmark(x, repeat=50)           # median / p10 / p90 latency in ms

``load(dir, remote=session)`` runs the bundle on a TVM RPC device instead of this machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

BUNDLE_FORMAT = "tvmc-attend-bundle/1"
METADATA_FILE = "metadata.json"


class BundleError(Exception):
    """A bundle that cannot be opened or an input that does not fit it (one-line message)."""


@dataclass
class LatencyStats:
    """Latencies of ``repeat`` single runs, in milliseconds."""

    times_ms: list[float] = field(repr=False)
    threads: int | None = None

    @property
    def median_ms(self) -> float:
        return float(np.median(self.times_ms))

    @property
    def p10_ms(self) -> float:
        return float(np.percentile(self.times_ms, 10))

    @property
    def p90_ms(self) -> float:
        return float(np.percentile(self.times_ms, 90))

    def as_dict(self) -> dict[str, Any]:
        return {
            "median_ms": self.median_ms,
            "p10_ms": self.p10_ms,
            "p90_ms": self.p90_ms,
            "repeat": len(self.times_ms),
            "times_ms": self.times_ms,
        }

    def __str__(self) -> str:
        return (f"median {self.median_ms:.2f} ms (p10 {self.p10_ms:.2f}, p90 {self.p90_ms:.2f}, "
                f"n={len(self.times_ms)})")


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_metadata(bundle_dir: str) -> dict[str, Any]:
    """Read and sanity-check a bundle's metadata JSON."""
    path = os.path.join(bundle_dir, METADATA_FILE)
    if not os.path.isdir(bundle_dir):
        raise BundleError(f"bundle directory '{bundle_dir}' does not exist; create one with "
                          "`tvmc-attend compile ... -o DIR`")
    if not os.path.isfile(path):
        raise BundleError(f"'{bundle_dir}' has no {METADATA_FILE}: it is not a tvmc-attend bundle; "
                          "recompile it with `tvmc-attend compile ... -o DIR`")
    try:
        with open(path) as f:
            meta = json.load(f)
    except (OSError, ValueError) as err:
        raise BundleError(f"{path} is not valid JSON ({err}); recompile the bundle") from None
    if not isinstance(meta, dict) or meta.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{path} is not a {BUNDLE_FORMAT} metadata file; recompile the bundle")
    return meta


def verify_library(bundle_dir: str, meta: dict[str, Any]) -> str:
    """Return the library path after checking its sha256: loading a .so runs its code."""
    lib = meta["library"]
    path = os.path.join(bundle_dir, lib["file"])
    if not os.path.isfile(path):
        raise BundleError(f"bundle '{bundle_dir}' lacks its library {lib['file']}; recompile it")
    actual = sha256_of(path)
    if actual != lib["sha256"]:
        raise BundleError(
            f"{path} does not match the sha256 recorded in {METADATA_FILE} "
            f"({actual[:12]}... != {lib['sha256'][:12]}...): the library was modified or "
            "corrupted; recompile the bundle and copy it again"
        )
    return path


def check_input(x: Any, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """``x`` as the contiguous array a bundle of input ``shape`` and ``dtype`` takes; a
    BundleError saying what to do when it is not one."""
    x = np.asarray(x)
    if tuple(x.shape) != tuple(shape):
        raise BundleError(
            f"input shape {tuple(x.shape)} does not match the bundle's "
            f"{tuple(shape)}; resize the input or recompile with that shape"
        )
    if str(x.dtype) != dtype:
        raise BundleError(
            f"input dtype {x.dtype} does not match the bundle's {dtype}; "
            f"convert it with x.astype('{dtype}')"
        )
    return np.ascontiguousarray(x)


class Model:
    """A loaded bundle: call it with a numpy array, get a numpy array back."""

    def __init__(self, bundle_dir: str, meta: dict[str, Any], vm: Any, device: Any,
                 remote: Any = None):
        self.bundle_dir = bundle_dir
        self.metadata = meta
        self._vm = vm
        self._device = device
        self._remote = remote
        self.input_shape = tuple(meta["input"]["shape"])
        self.input_dtype = meta["input"]["dtype"]
        self.threads: int | None = meta.get("_threads")  # TVM's threads in effect

    def _check_input(self, x: Any) -> np.ndarray:
        return check_input(x, self.input_shape, self.input_dtype)

    def _to_device(self, x: np.ndarray) -> Any:
        import tvm

        return tvm.runtime.tensor(x, device=self._device)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out = self._vm["main"](self._to_device(self._check_input(x)))
        return out.numpy()

    def staged(self, x: np.ndarray) -> Callable[[], None]:
        """Put ``x`` on the device and return a call of the model on it that leaves the output
        there: the inference alone, without copies in or out (what ``benchmark`` times)."""
        self._vm.set_input("main", self._to_device(self._check_input(x)))
        return lambda: self._vm.invoke_stateful("main")

    def benchmark(self, x: np.ndarray, repeat: int = 50, warmup: int = 3) -> LatencyStats:
        """Time ``repeat`` single runs on the device (the device's own clock over RPC)."""
        if repeat < 1:
            raise BundleError("repeat must be at least 1")
        run = self.staged(x)
        for _ in range(warmup):
            run()
        timer = self._vm.time_evaluator("invoke_stateful", self._device, number=1, repeat=repeat)
        result = timer("main")
        return LatencyStats(times_ms=[float(t) * 1e3 for t in result.results],
                            threads=self.threads)

    def __repr__(self) -> str:
        where = "remote" if self._remote is not None else "local"
        return (f"<attend_runtime.Model {self.metadata.get('model')} "
                f"target={self.metadata['target']['name']} {where}>")


THREADS_ENV = "TVM_NUM_THREADS"


def size_thread_pool(threads: int | None = None) -> int:
    """Size TVM's CPU thread pool before its first use; returns the size it will have.

    TVM reads ``TVM_NUM_THREADS`` once, when its pool is created; unset, an x86 machine gets
    half its logical CPUs (one worker on 2 vCPUs) and nothing can raise that later. A value
    already in the environment (the user's, or one set earlier in this process) is kept;
    otherwise ``threads``, else every CPU this process may run on."""
    try:
        current = int(os.environ.get(THREADS_ENV, ""))
    except ValueError:
        current = 0
    if current > 0:
        return current
    count = int(threads) if threads else len(os.sched_getaffinity(0))
    os.environ[THREADS_ENV] = str(count)
    return count


def _configure_threads(threads: int | None, pool: int, remote: Any) -> int:
    """Use ``threads`` of the pool (locally: at most its size ``pool``); the count in effect."""
    import tvm

    if remote is not None:
        if threads:
            remote.get_function("runtime.config_threadpool")(0, int(threads))
        return int(threads) if threads else int(remote.get_function("runtime.NumThreads")())
    if threads and int(threads) < pool:
        # Fewer than the pool holds; this pins the calling thread to one core (TVM's binding).
        tvm.get_global_func("runtime.config_threadpool")(0, int(threads))
    return int(tvm.get_global_func("runtime.NumThreads")())


def load(bundle_dir: str, remote: Any = None, threads: int | None = None) -> Model:
    """Open a bundle: verify its library, load it, and set up the Relax VM.

    remote:  a ``tvm.rpc`` session; the library is uploaded and run there.
    threads: worker threads of the TVM runtime (default: ``TVM_NUM_THREADS`` if set, else the
             bundle's recorded count for boards, all cores for the host). TVM sizes its pool
             once per process: load before any other TVM code runs, or ask for no more than
             the pool already has.
    """
    meta = read_metadata(bundle_dir)
    lib_path = verify_library(bundle_dir, meta)
    if remote is None and meta["target"].get("remote"):
        host = os.uname().machine
        if host not in ("aarch64", "arm64"):
            raise BundleError(
                f"bundle '{bundle_dir}' is compiled for {meta['target']['name']} "
                f"({meta['target']['triple']}) and cannot run on this {host} machine; run it on "
                "the board or pass an RPC device (--rpc-tracker/--rpc-key or --rpc-host)"
            )
    # before TVM's pool exists (importing TVM does not create it; the first kernel does)
    pool = size_thread_pool(threads or meta.get("threads")) if remote is None else 0
    import tvm  # after the checks above: importing TVM takes seconds
    from tvm.runtime.vm import VirtualMachine

    meta["_threads"] = _configure_threads(threads or meta.get("threads"), pool, remote)
    start = time.perf_counter()
    if remote is not None:
        remote.upload(lib_path)
        lib = remote.load_module(os.path.basename(lib_path))
        device = remote.cpu(0)
    else:
        lib = tvm.runtime.load_module(lib_path)
        device = tvm.cpu(0)
    vm = VirtualMachine(lib, device)
    meta["_load_seconds"] = time.perf_counter() - start
    return Model(bundle_dir, meta, vm, device, remote=remote)
