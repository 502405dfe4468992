"""Runs inside the emulated core (qemu-user with count_plugin): calls compiled functions between
the plugin's markers. Standard library, numpy and the TVM runtime only: it runs in the board's
rootfs as well as on this host.

Protocol, one JSON object per line: a job on stdin, either one function
``{"tag": N, "module": PATH, "args": [[SHAPE, DTYPE], ...]}`` (a tuning candidate: its entry
function) or a whole bundle ``{"tag": N, "bundle": DIR, "loader": PATH}`` (opened with the
bundle's own one-file loader, run on a random input); a reply on stdout ``{"tag": N}`` or
``{"tag": N, "error": MESSAGE}``. Each job is called twice, each call bracketed: tag 2N warms
the simulated caches, tag 2N+1 is the count to keep (the plugin writes both to its file).
"""

import ctypes
import importlib.util
import json
import os
import sys

os.environ.setdefault("TVM_USE_RUNTIME_LIB", "1")  # the runtime alone: seconds, not minutes

import numpy as np  # noqa: E402
import tvm  # noqa: E402

MARKER_SYSCALL = 0x5CA1E  # count_plugin.c
MARK_START, MARK_STOP = 1, 2
_syscall = ctypes.CDLL(None, use_errno=True).syscall
_syscall.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_long]


def _argument(shape: list, dtype: str, rng: np.random.Generator) -> object:
    if dtype.startswith("float"):
        data = rng.uniform(-1.0, 1.0, size=shape).astype(dtype)
    else:  # indices: zeros are in range for any gather
        data = np.zeros(shape, dtype=dtype)
    return tvm.runtime.tensor(data)


def _function_call(job: dict, rng: np.random.Generator) -> tuple:
    module = tvm.runtime.load_module(job["module"])
    return module[module.entry_name], [_argument(s, d, rng) for s, d in job["args"]]


def _bundle_call(job: dict, rng: np.random.Generator) -> tuple:
    spec = importlib.util.spec_from_file_location("attend_runtime", job["loader"])
    loader = importlib.util.module_from_spec(spec)
    sys.modules["attend_runtime"] = loader  # its dataclasses look their module up there
    spec.loader.exec_module(loader)
    model = loader.load(job["bundle"], threads=1)
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
