"""Runs inside the emulated core (qemu-user with count_plugin): calls compiled functions between
the plugin's markers. Standard library, numpy and the installed TVM runtime library, driven
through the loader's ctypes binding (``attend_runtime.py``, whose path is the first argument):
``import tvm`` takes ~23 s under qemu, the binding ~1 s. It runs in the board's rootfs as well as
on this host.

Protocol, one JSON object per line: a job on stdin, either one function
``{"tag": N, "module": PATH, "args": [[SHAPE, DTYPE], ...]}`` (a tuning candidate: its entry
function) or a whole bundle ``{"tag": N, "bundle": DIR}`` (opened by the loader, whose bundled
runtime is the installed one byte for byte, and run on a random input); a reply on stdout
``{"tag": N}`` or ``{"tag": N, "error": MESSAGE}``. Each job is called twice, each call
bracketed: tag 2N warms the simulated caches, tag 2N+1 is the count to keep (the plugin writes
both to its file).
"""

import ctypes
import functools
import importlib.util
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(sys.argv[1]))
import attend_runtime  # noqa: E402

MARKER_SYSCALL = 0x5CA1E  # count_plugin.c
MARK_START, MARK_STOP = 1, 2
_syscall = ctypes.CDLL(None, use_errno=True).syscall
_syscall.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_long]


@functools.cache  # found and hashed once per guest, not once per candidate
def _installed_runtime() -> "attend_runtime._FFI":
    """The TVM runtime library of the TVM installed for this Python (found, not imported)."""
    paths = []
    for package, library in (("tvm_ffi", "lib/libtvm_ffi.so"), ("tvm", "lib/libtvm_runtime.so")):
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeError(f"{package} is not installed for {sys.executable}")
        paths.append(os.path.join(spec.submodule_search_locations[0], library))
    return attend_runtime.runtime_at(*paths)


def _argument(ffi: "attend_runtime._FFI", shape: list, dtype: str,
              rng: np.random.Generator) -> object:
    if dtype.startswith("float"):
        data = rng.uniform(-1.0, 1.0, size=shape).astype(dtype)
    else:  # indices: zeros are in range for any gather
        data = np.zeros(shape, dtype=dtype)
    return ffi.tensor(data)


def _function_call(job: dict, rng: np.random.Generator) -> tuple:
    ffi = _installed_runtime()
    if not os.path.isfile(job["module"]):
        raise FileNotFoundError(f"cannot find file {job['module']}")
    module = ffi("ffi.ModuleLoadFromFile", job["module"])
    function = ffi.method(module, "main")  # tvm.compile's entry function
    args = [_argument(ffi, s, d, rng) for s, d in job["args"]]
    return (lambda *a: ffi.call(function, *a)), args


def _bundle_call(job: dict, rng: np.random.Generator) -> tuple:
    _installed_runtime()  # a bundle's own runtime is the same bytes: the loader reuses it
    model = attend_runtime.load(job["bundle"], threads=1)
    x = rng.uniform(-1.0, 1.0, size=model.input_shape).astype(model.input_dtype)
    return model.staged(x), []


def _count(job: dict, rng: np.random.Generator) -> None:
    function, args = (_bundle_call if "bundle" in job else _function_call)(job, rng)
    for tag in (2 * job["tag"], 2 * job["tag"] + 1):
        _syscall(MARKER_SYSCALL, MARK_START, tag)
        function(*args)
        _syscall(MARKER_SYSCALL, MARK_STOP, tag)


def main() -> None:
    rng = np.random.default_rng(0)
    out = sys.stdout
    sys.stdout = sys.stderr  # nothing but replies on the protocol stream
    print(json.dumps({"ready": True}), file=out, flush=True)
    for line in sys.stdin:
        job = json.loads(line)
        reply = {"tag": job["tag"]}
        try:
            _count(job, rng)
        except Exception as err:  # reported per candidate; the runner goes on
            reply["error"] = f"{type(err).__name__}: {err}"[:2000]
        print(json.dumps(reply), file=out, flush=True)


if __name__ == "__main__":
    main()
