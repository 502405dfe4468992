"""attend_runtime: the one-file loader shipped in every tvmc-attend bundle.

It needs numpy and nothing else: a bundle carries the TVM runtime it was compiled against
(``runtime/libtvm_runtime.so`` and ``runtime/libtvm_ffi.so``, ~5 MB), which this file drives
through TVM FFI's C ABI with ctypes, so a board needs no TVM install:

    import attend_runtime
    m = attend_runtime.load("bundle_dir")      # verifies every library's sha256, then loads it
    y = m(x)                                    # numpy in, numpy out
    stats = m.benchmark(x, repeat=50)           # median / p10 / p90 latency in ms

or, as a command on the board:

    python3 bundle_dir/attend_runtime.py bundle_dir --input x.npy --output y.npy --repeat 20

``load(dir, remote=session)`` runs the bundle on a TVM RPC device instead; that, a bundle
compiled with ``--runtime system``, and a process that has already imported TVM use the
installed TVM (``runtime="system"``).
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

BUNDLE_FORMAT = "tvmc-attend-bundle/1"
METADATA_FILE = "metadata.json"
RUNTIMES = ("bundled", "system")  # whose TVM runtime runs the model


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


def verify_file(bundle_dir: str, entry: dict[str, str], what: str = "library") -> str:
    """The path of a bundle's file ``entry`` ({"file", "sha256"}) after checking its sha256:
    loading a .so runs its code."""
    path = os.path.join(bundle_dir, entry["file"])
    if not os.path.isfile(path):
        raise BundleError(f"bundle '{bundle_dir}' lacks its {what} {entry['file']}; recompile it "
                          "or copy the whole directory again")
    actual = sha256_of(path)
    if actual != entry["sha256"]:
        raise BundleError(
            f"{path} does not match the sha256 recorded in {METADATA_FILE} "
            f"({actual[:12]}... != {entry['sha256'][:12]}...): the {what} was modified or "
            "corrupted; recompile the bundle and copy it again"
        )
    return path


def verify_library(bundle_dir: str, meta: dict[str, Any]) -> str:
    """The model library's path after checking its sha256."""
    return verify_file(bundle_dir, meta["library"])


def machine_arch() -> str:
    """This machine's architecture as bundles name it (``aarch64``, ``x86_64``)."""
    machine = os.uname().machine
    return {"arm64": "aarch64", "amd64": "x86_64"}.get(machine.lower(), machine)


def bundle_arch(meta: dict[str, Any]) -> str | None:
    """The architecture a bundle's code is for: its runtime's, else its target triple's (a
    host bundle written before runtimes were bundled: unknown, None)."""
    runtime = meta.get("runtime") or {}
    if runtime.get("arch"):
        return runtime["arch"]
    triple = meta["target"].get("triple", "host")
    return None if triple == "host" else triple.split("-")[0]

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


# ---------------------------------------------------------------------------------------
# The bundled runtime: TVM FFI's C ABI (tvm/ffi/c_api.h of apache-tvm-ffi 0.1) through ctypes.
# Only what running a Relax VM needs: global functions, calls, objects, tensors and errors.

_NONE, _INT, _BOOL, _FLOAT, _OPAQUE_PTR, _DATA_TYPE, _DEVICE, _DLTENSOR_PTR, _RAW_STR = range(9)
_SMALL_BYTES, _OBJECT_BEGIN, _BYTES, _ERROR, _FUNCTION, _TENSOR = 12, 64, 66, 67, 68, 70
_OBJECT_HEADER = 24  # TVMFFIObject: ref counts (8), type index (4), padding (4), deleter (8)
_CPU = 1  # kDLCPU
_POOLED_ALLOCATOR = 2
_DTYPE_CODES = {"i": 0, "u": 1, "f": 2}  # numpy kind -> DLPack type code


class _Any(ctypes.Structure):
    """TVMFFIAny: a type index and an 8-byte value."""

    _fields_ = [("type_index", ctypes.c_int32), ("small_len", ctypes.c_uint32),
                ("value", ctypes.c_uint64)]


class _ByteArray(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("size", ctypes.c_size_t)]


class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", _DLDevice), ("ndim", ctypes.c_int32),
                ("dtype", _DLDataType), ("shape", ctypes.POINTER(ctypes.c_int64)),
                ("strides", ctypes.POINTER(ctypes.c_int64)), ("byte_offset", ctypes.c_uint64)]


class _Object:
    """An owned reference to a TVM FFI object (released when collected)."""

    __slots__ = ("_lib", "handle", "type_index")

    def __init__(self, lib: ctypes.CDLL, handle: int, type_index: int):
        self._lib, self.handle, self.type_index = lib, handle, type_index

    def __del__(self) -> None:
        if self.handle:
            self._lib.TVMFFIObjectDecRef(ctypes.c_void_p(self.handle))
            self.handle = 0


class _FFI:
    """The bundle's ``libtvm_ffi.so`` and ``libtvm_runtime.so``, loaded once per process."""

    def __init__(self, ffi_path: str, runtime_path: str):
        # RTLD_GLOBAL: libtvm_runtime.so resolves its libtvm_ffi.so to the copy loaded here
        self.lib = ctypes.CDLL(ffi_path, mode=ctypes.RTLD_GLOBAL)
        self.runtime = ctypes.CDLL(runtime_path, mode=ctypes.RTLD_GLOBAL)
        self.lib.TVMFFIFunctionGetGlobal.argtypes = [ctypes.POINTER(_ByteArray),
                                                     ctypes.POINTER(ctypes.c_void_p)]
        self.lib.TVMFFIFunctionCall.argtypes = [ctypes.c_void_p, ctypes.POINTER(_Any),
                                                ctypes.c_int32, ctypes.POINTER(_Any)]
        self.lib.TVMFFIObjectDecRef.argtypes = [ctypes.c_void_p]
        self.lib.TVMFFIErrorMoveFromRaised.argtypes = [ctypes.POINTER(ctypes.c_void_p)]
        self._globals: dict[str, _Object] = {}

    def function(self, name: str) -> _Object:
        """The global function ``name`` (KeyError when the runtime has none)."""
        if name not in self._globals:
            data = name.encode()
            handle = ctypes.c_void_p()
            array = _ByteArray(ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p), len(data))
            self._check(self.lib.TVMFFIFunctionGetGlobal(ctypes.byref(array),
                                                         ctypes.byref(handle)))
            if not handle.value:
                raise KeyError(name)
            self._globals[name] = _Object(self.lib, handle.value, _FUNCTION)
        return self._globals[name]

    def call(self, func: _Object, *args: Any) -> Any:
        keep: list[Any] = []  # what the arguments point into, alive until the call returns
        packed = (_Any * max(len(args), 1))()
        for slot, arg in zip(packed, args, strict=False):
            self._pack(slot, arg, keep)
        result = _Any()
        self._check(self.lib.TVMFFIFunctionCall(ctypes.c_void_p(func.handle), packed, len(args),
                                                ctypes.byref(result)))
        return self._unpack(result)

    def __call__(self, name: str, *args: Any) -> Any:
        return self.call(self.function(name), *args)

    def method(self, module: _Object, name: str) -> _Object:
        """The function ``name`` of a runtime module."""
        return self("ffi.ModuleGetFunction", module, name, True)

    def tensor(self, x: np.ndarray) -> _Object:
        """A runtime-owned CPU copy of ``x`` (aligned as the kernels expect)."""
        x = np.ascontiguousarray(x)
        shape = self("ffi.Shape", *(int(d) for d in x.shape))
        tensor = self("runtime.TVMTensorAllocWithScope", shape, _dl_dtype(x.dtype),
                      _DLDevice(_CPU, 0), None)
        self("runtime.TVMTensorCopyFromBytes", tensor, ctypes.c_void_p(x.ctypes.data),
             x.nbytes)
        return tensor

    def to_numpy(self, tensor: _Object) -> np.ndarray:
        """A numpy copy of a CPU tensor."""
        if tensor.type_index != _TENSOR:
            raise BundleError("the model returned something other than one tensor; this "
                              "loader reads single-output models")
        view = _DLTensor.from_address(tensor.handle + _OBJECT_HEADER)
        kinds = {code: kind for kind, code in _DTYPE_CODES.items()}
        dtype = np.dtype(f"{kinds[view.dtype.code]}{view.dtype.bits // 8}")
        out = np.empty(tuple(view.shape[i] for i in range(view.ndim)), dtype)
        self("runtime.TVMTensorCopyToBytes", tensor, ctypes.c_void_p(out.ctypes.data),
             out.nbytes)
        return out

    @staticmethod
    def _pack(slot: _Any, arg: Any, keep: list[Any]) -> None:
        if arg is None:
            slot.type_index = _NONE
        elif isinstance(arg, bool):
            slot.type_index, slot.value = _BOOL, int(arg)
        elif isinstance(arg, int):
            slot.type_index, slot.value = _INT, arg & 0xFFFFFFFFFFFFFFFF  # two's complement
        elif isinstance(arg, str):
            data = ctypes.c_char_p(arg.encode())
            keep.append(data)
            slot.type_index = _RAW_STR
            slot.value = ctypes.cast(data, ctypes.c_void_p).value
        elif isinstance(arg, _Object):
            slot.type_index, slot.value = arg.type_index, arg.handle
        elif isinstance(arg, _DLDataType | _DLDevice):
            slot.type_index = _DATA_TYPE if isinstance(arg, _DLDataType) else _DEVICE
            ctypes.memmove(ctypes.addressof(slot) + 8, ctypes.addressof(arg), ctypes.sizeof(arg))
        elif isinstance(arg, ctypes.c_void_p):
            slot.type_index, slot.value = _OPAQUE_PTR, arg.value or 0
        else:
            raise TypeError(f"cannot pass {type(arg).__name__} to the TVM runtime")

    def _unpack(self, result: _Any) -> Any:
        kind = result.type_index
        if kind == _NONE:
            return None
        if kind in (_INT, _BOOL):
            return ctypes.c_int64(result.value).value
        if kind == _FLOAT:
            return struct.unpack("d", struct.pack("Q", result.value))[0]
        if kind == _SMALL_BYTES:  # up to 7 bytes kept in the value itself
            return struct.pack("Q", result.value)[:result.small_len]
        if kind == _BYTES:
            obj = _Object(self.lib, result.value, kind)
            cell = _ByteArray.from_address(obj.handle + _OBJECT_HEADER)
            return ctypes.string_at(cell.data, cell.size)
        if kind >= _OBJECT_BEGIN:
            return _Object(self.lib, result.value, kind)
        raise TypeError(f"the TVM runtime returned a value of type index {kind}")

    def _check(self, status: int) -> None:
        if status == 0:
            return
        error = ctypes.c_void_p()
        self.lib.TVMFFIErrorMoveFromRaised(ctypes.byref(error))
        if not error.value:
            raise RuntimeError(f"the TVM runtime failed (status {status})")
        owned = _Object(self.lib, error.value, _ERROR)
        kind, message = (_ByteArray.from_address(owned.handle + _OBJECT_HEADER + i * 16)
                         for i in range(2))
        raise RuntimeError(f"{ctypes.string_at(kind.data, kind.size).decode()}: "
                           f"{ctypes.string_at(message.data, message.size).decode()}")


_LOADED_RUNTIME: tuple[tuple[str, ...], _FFI] | None = None  # (files' sha256, the runtime)


def runtime_at(ffi_path: str, runtime_path: str,
               digests: tuple[str, str] | None = None) -> _FFI:
    """The TVM runtime of these two files (``libtvm_ffi.so``, ``libtvm_runtime.so``; their
    sha256 ``digests`` when already known), loaded unless this process already has the same
    one (the same bytes, wherever they lie): two copies of TVM FFI in one process would not
    share objects."""
    global _LOADED_RUNTIME
    digests = digests or (sha256_of(ffi_path), sha256_of(runtime_path))
    if _LOADED_RUNTIME is None:
        _LOADED_RUNTIME = (digests, _FFI(ffi_path, runtime_path))
    elif _LOADED_RUNTIME[0] != digests:
        raise BundleError("this process already runs another TVM runtime; load the bundle in "
                          "a new process")
    return _LOADED_RUNTIME[1]


def _bundled_runtime(bundle_dir: str, runtime: dict[str, Any]) -> _FFI:
    """The bundle's runtime, after checking each of its files against its recorded sha256."""
    entries = {os.path.basename(entry["file"]): entry for entry in runtime["files"]}
    names = ("libtvm_ffi.so", "libtvm_runtime.so")
    paths = [verify_file(bundle_dir, entries[name], "TVM runtime library") for name in names]
    return runtime_at(*paths, digests=tuple(entries[name]["sha256"] for name in names))


def _dl_dtype(dtype: np.dtype) -> _DLDataType:
    if dtype.kind not in _DTYPE_CODES:
        raise BundleError(f"dtype {dtype} is not supported by the bundled runtime's loader")
    return _DLDataType(_DTYPE_CODES[dtype.kind], dtype.itemsize * 8, 1)


class _BundledVM:
    """The Relax VM of a model library, run by the bundled TVM runtime."""

    runtime = "bundled"

    def __init__(self, ffi: _FFI, lib_path: str, threads: int | None, pool: int):
        self._ffi = ffi
        if threads and int(threads) < pool:
            ffi("runtime.config_threadpool", 0, int(threads))  # pins the caller to one core
        self.threads = int(ffi("runtime.NumThreads"))
        try:
            library = ffi("ffi.ModuleLoadFromFile", lib_path)
        except RuntimeError as err:
            raise BundleError(f"the TVM runtime cannot load {lib_path} ({_first_line(err)}); "
                              "recompile the bundle for this machine") from None
        self._vm = ffi.call(ffi.method(library, "vm_load_executable"))
        ffi.call(ffi.method(self._vm, "vm_initialization"), _CPU, 0, _POOLED_ALLOCATOR)
        self._main = ffi.method(self._vm, "main")
        self._set_input = ffi.method(self._vm, "set_input")
        self._invoke = ffi.method(self._vm, "invoke_stateful")

    def run(self, x: np.ndarray) -> np.ndarray:
        return self._ffi.to_numpy(self._ffi.call(self._main, self._ffi.tensor(x)))

    def stage(self, x: np.ndarray) -> Callable[[], None]:
        self._ffi.call(self._set_input, "main", self._ffi.tensor(x))
        return lambda: self._ffi.call(self._invoke, "main")

    def time(self, repeat: int) -> list[float]:
        """Seconds per staged run, ``repeat`` times, by the runtime's own timer."""
        timer = self._ffi("runtime.RPCTimeEvaluator", self._vm, "invoke_stateful", _CPU, 0, 1,
                          repeat, 0, 100, 0, 1, 0, "")
        return list(struct.unpack(f"@{repeat}d", self._ffi.call(timer, "main")))


class _SystemVM:
    """The Relax VM of a model library, run by the installed TVM (here or over RPC)."""

    runtime = "system"

    def __init__(self, lib_path: str, threads: int | None, pool: int, remote: Any):
        import tvm  # after the checks: importing TVM takes seconds
        from tvm.runtime.vm import VirtualMachine

        if remote is not None:
            if threads:
                remote.get_function("runtime.config_threadpool")(0, int(threads))
            self.threads = (int(threads) if threads else
                            int(remote.get_function("runtime.NumThreads")()))
            remote.upload(lib_path)
            library = remote.load_module(os.path.basename(lib_path))
            self._device = remote.cpu(0)
        else:
            if threads and int(threads) < pool:
                # Fewer than the pool holds; this pins the caller to one core (TVM's binding).
                tvm.get_global_func("runtime.config_threadpool")(0, int(threads))
            self.threads = int(tvm.get_global_func("runtime.NumThreads")())
            library = tvm.runtime.load_module(lib_path)
            self._device = tvm.cpu(0)
        self._vm = VirtualMachine(library, self._device)
        self._tvm = tvm

    def run(self, x: np.ndarray) -> np.ndarray:
        return self._vm["main"](self._tvm.runtime.tensor(x, device=self._device)).numpy()

    def stage(self, x: np.ndarray) -> Callable[[], None]:
        self._vm.set_input("main", self._tvm.runtime.tensor(x, device=self._device))
        return lambda: self._vm.invoke_stateful("main")

    def time(self, repeat: int) -> list[float]:
        """Seconds per staged run (the device's own clock over RPC)."""
        timer = self._vm.time_evaluator("invoke_stateful", self._device, number=1,
                                        repeat=repeat)
        return [float(t) for t in timer("main").results]


class Model:
    """A loaded bundle: call it with a numpy array, get a numpy array back."""

    def __init__(self, bundle_dir: str, meta: dict[str, Any], vm: _BundledVM | _SystemVM,
                 remote: Any = None, load_seconds: float = 0.0):
        self.bundle_dir = bundle_dir
        self.metadata = meta
        self._vm = vm
        self._remote = remote
        self.input_shape = tuple(meta["input"]["shape"])
        self.input_dtype = meta["input"]["dtype"]
        self.threads: int = vm.threads  # TVM's threads in effect
        self.runtime: str = vm.runtime  # "bundled" or "system"
        self.load_seconds = load_seconds

    def _check_input(self, x: Any) -> np.ndarray:
        return check_input(x, self.input_shape, self.input_dtype)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self._vm.run(self._check_input(x))

    def staged(self, x: np.ndarray) -> Callable[[], None]:
        """Put ``x`` on the device and return a call of the model on it that leaves the output
        there: the inference alone, without copies in or out (what ``benchmark`` times)."""
        return self._vm.stage(self._check_input(x))

    def benchmark(self, x: np.ndarray, repeat: int = 50, warmup: int = 3) -> LatencyStats:
        """Time ``repeat`` single runs on the device (the device's own clock over RPC)."""
        if repeat < 1:
            raise BundleError("repeat must be at least 1")
        run = self.staged(x)
        for _ in range(warmup):
            run()
        return LatencyStats(times_ms=[t * 1e3 for t in self._vm.time(repeat)],
                            threads=self.threads)

    def __repr__(self) -> str:
        where = "remote" if self._remote is not None else "local"
        return (f"<attend_runtime.Model {self.metadata.get('model')} "
                f"target={self.metadata['target']['name']} {where} {self.runtime} runtime>")


def _first_line(err: BaseException) -> str:
    lines = [line for line in str(err).splitlines() if line.strip()]
    return lines[0].strip() if lines else type(err).__name__


def _choose_runtime(bundle_dir: str, meta: dict[str, Any], remote: Any,
                    runtime: str | None) -> str:
    carried = (meta.get("runtime") or {}).get("files")
    if runtime is not None and runtime not in RUNTIMES:
        raise BundleError(f"unknown runtime {runtime!r}; use one of {', '.join(RUNTIMES)}")
    if runtime == "bundled" and (remote is not None or not carried):
        raise BundleError(f"bundle '{bundle_dir}' carries no TVM runtime" if not carried else
                          "an RPC device runs bundles with its own TVM: use runtime='system'")
    if runtime is None:
        # the installed TVM when it is needed (RPC) or already in this process: one TVM FFI
        runtime = ("bundled" if carried and remote is None and "tvm_ffi" not in sys.modules
                   else "system")
    if runtime == "system" and remote is None:
        try:
            import tvm  # noqa: F401
        except ImportError:
            raise BundleError(f"bundle '{bundle_dir}' carries no TVM runtime and TVM is not "
                              "installed here: recompile it with --runtime bundled, or pip "
                              f"install apache-tvm=={meta.get('tvm_version')}") from None
    return runtime


def load(bundle_dir: str, remote: Any = None, threads: int | None = None,
         runtime: str | None = None) -> Model:
    """Open a bundle: verify its files, load its library, and set up the Relax VM.

    remote:  a ``tvm.rpc`` session; the library is uploaded and run there.
    threads: worker threads of the TVM runtime (default: ``TVM_NUM_THREADS`` if set, else the
             bundle's recorded count for boards, all cores for the host). TVM sizes its pool
             once per process: load before any other TVM code runs, or ask for no more than
             the pool already has.
    runtime: "bundled" (the TVM runtime inside the bundle, numpy only), "system" (the
             installed TVM), or None: bundled unless there is none, ``remote`` is given, or
             this process already imported TVM.
    """
    meta = read_metadata(bundle_dir)
    lib_path = verify_library(bundle_dir, meta)
    arch, here = bundle_arch(meta), machine_arch()
    if remote is None and arch is not None and arch != here:
        triple = meta["target"].get("triple", "host")
        raise BundleError(
            f"bundle '{bundle_dir}' is compiled for {meta['target']['name']} "
            f"({arch if triple == 'host' else triple}) and cannot run on this {here} machine; "
            "run it on the board or pass an RPC device (--rpc-tracker/--rpc-key or --rpc-host)"
        )
    runtime = _choose_runtime(bundle_dir, meta, remote, runtime)
    asked = threads or meta.get("threads")
    # before TVM's pool exists (loading the runtime does not create it; the first kernel does)
    pool = size_thread_pool(asked) if remote is None else 0
    start = time.perf_counter()
    if runtime == "bundled":
        vm: _BundledVM | _SystemVM = _BundledVM(_bundled_runtime(bundle_dir, meta["runtime"]),
                                                lib_path, asked, pool)
    else:
        vm = _SystemVM(lib_path, asked, pool, remote)
    return Model(bundle_dir, meta, vm, remote=remote,
                 load_seconds=time.perf_counter() - start)


# ---------------------------------------------------------------------------------------
# As a command on the board: python3 attend_runtime.py BUNDLE [--input x.npy] ...


def _read_input(path: str | None, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    if path is None:
        return np.random.default_rng(0).standard_normal(shape).astype(dtype)
    try:
        return np.load(path, allow_pickle=False)
    except OSError as err:
        raise BundleError(f"cannot read input '{path}' ({err.strerror or err})") from None
    except ValueError:
        raise BundleError(f"input '{path}' is not a .npy array; save it with numpy.save") \
            from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="attend_runtime.py",
        description="Run a tvmc-attend bundle: prediction and median latency.")
    parser.add_argument("bundle", help="the bundle directory")
    parser.add_argument("--input", help="input .npy (default: seeded random)")
    parser.add_argument("--output", help="save the output here (.npy)")
    parser.add_argument("--repeat", type=int, default=20, help="timed runs (default 20)")
    parser.add_argument("--threads", type=int, help="TVM runtime threads")
    parser.add_argument("--runtime", choices=RUNTIMES,
                        help="bundled (default when the bundle has one) or the installed TVM")
    args = parser.parse_args(argv)
    try:
        if args.repeat < 1:
            raise BundleError("--repeat must be at least 1")
        model = load(args.bundle, threads=args.threads, runtime=args.runtime)
        x = model._check_input(_read_input(args.input, model.input_shape, model.input_dtype))
        y = model(x)
        stats = model.benchmark(x, repeat=args.repeat)
        if args.output:
            np.save(args.output, y)
    except (BundleError, RuntimeError) as err:
        print(f"error: {_first_line(err)}", file=sys.stderr)
        return 2
    meta = model.metadata
    print(f"{meta.get('model')} for {meta['target']['name']}, {model.runtime} TVM runtime, "
          f"loaded in {model.load_seconds:.2f} s, input {args.input or 'random'}")
    if y.ndim == 2 and y.shape[0] == 1 and y.shape[1] > 1:
        probs = np.exp(y[0] - y[0].max())
        probs /= probs.sum()
        for rank, idx in enumerate(np.argsort(-probs)[:5], start=1):
            print(f"  {rank}. class {idx:4d}  p={probs[idx]:.4f}")
    else:
        print(f"output {list(y.shape)}: mean {y.mean():.4g}, std {y.std():.4g}")
    print(f"latency: {stats}, {model.threads} TVM threads")
    if args.output:
        print(f"output saved to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
