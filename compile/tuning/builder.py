"""A MetaSchedule builder that is fast on a 2-core machine and exports what a board can load.

MetaSchedule's LocalBuilder re-creates its worker pool for every batch, and each worker
imports ``tvm.s_tir.tensor_intrin`` (50-75 s here), so out of the box a batch of 16 candidates
spends minutes starting Python. It also exports a .tar that a board must link itself.

This builder keeps a pool of spawned workers alive for the whole tuning run (each imports TVM
once), builds candidates in parallel, and exports a shared library: cross-compiled for boards,
so the board needs only the TVM runtime. Float32 candidates carry no tensor intrinsics, so
skipping the intrinsic registry is safe. Workers are recycled every ``tasks_per_worker``
builds because long-lived TVM build workers slowly leak memory.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from typing import Any

from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.builder import BuilderInput, BuilderResult, PyBuilder

from .replay import MeasuredCandidates
from .stop import StopFlag


def _init_worker() -> None:
    # Ctrl-C is the parent's to handle: it stops the run and keeps the records.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import tvm  # noqa: F401  (the import is the expensive part: pay it once per worker)


def _build_one(mod_json: str, target_json: str, cross_compiler: str | None,
               out_dir: str) -> tuple[str | None, str | None]:
    """Build one scheduled TIR module and export it as a .so; return (path, error)."""
    try:
        import tvm
        from tvm.driver import build as tvm_build
        from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock
        from tvm.support import cc

        mod = tvm.ir.load_json(mod_json)
        target = tvm.ir.load_json(target_json)
        mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
        rt_mod = tvm_build(mod, target=target)
        # One directory per candidate: MetaSchedule's RemoveBuildArtifact deletes the
        # artifact's whole directory after measuring it.
        path = os.path.join(tempfile.mkdtemp(prefix="candidate-", dir=out_dir), "candidate.so")
        if cross_compiler:
            rt_mod.export_library(path, fcompile=cc.cross_compiler(cross_compiler))
        else:
            rt_mod.export_library(path)
        return path, None
    except Exception as err:  # reported per candidate, as MetaSchedule expects
        return None, f"{type(err).__name__}: {err}"


@derived_object
class SharedLibraryBuilder(PyBuilder):
    """Builds candidates in a persistent process pool and exports them as .so files."""

    def __init__(self, cross_compiler: str | None = None, max_workers: int | None = None,
                 timeout_s: float = 120.0, tasks_per_worker: int = 256,
                 measured: MeasuredCandidates | None = None, stop: StopFlag | None = None,
                 build_function: Callable[..., tuple[str | None, str | None]] | None = None,
                 ) -> None:
        super().__init__()
        # What a worker runs per candidate (module-level, so that spawned workers import it).
        self.build_function = build_function or _build_one
        self.cross_compiler = cross_compiler
        self.measured = measured
        self.stop = stop or StopFlag()
        self.max_workers = max_workers or max(1, len(os.sched_getaffinity(0)))
        self.timeout_s = timeout_s
        self.tasks_per_worker = tasks_per_worker
        self.artifact_dir = tempfile.mkdtemp(prefix="tvmc-attend-build-")
        self._pool_builds = 0  # builds since the pool started
        self._pool: cf.ProcessPoolExecutor | None = None

    def _get_pool(self) -> cf.ProcessPoolExecutor:
        if self._pool is None:
            self._pool = cf.ProcessPoolExecutor(
                max_workers=self.max_workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
            )
        return self._pool

    def build(self, build_inputs: list[BuilderInput]) -> list[BuilderResult]:
        import tvm

        self.stop.check()
        outcomes: dict[int, tuple[str | None, str | None]] = {}
        payloads = {}
        for i, inp in enumerate(build_inputs):
            replayed = self.measured.replay_artifact(inp.mod) if self.measured else None
            if replayed is not None:
                outcomes[i] = (replayed, None)
            else:
                payloads[i] = (tvm.ir.save_json(inp.mod), tvm.ir.save_json(inp.target))
        # Recycle the workers between batches (LLVM's memory grows over thousands of builds).
        # Not max_tasks_per_child: with it, CPython 3.11's pool can stop replacing exited
        # workers, and the batch then waits for the build timeout (seen here: 2 min lost).
        if self._pool_builds >= self.tasks_per_worker * self.max_workers:
            self.close_pool()
        self._pool_builds += len(payloads)
        attempts = dict.fromkeys(payloads, 0)
        while len(outcomes) < len(build_inputs):
            self._build_round({i: p for i, p in payloads.items() if i not in outcomes},
                              attempts, outcomes)
        return [BuilderResult(*outcomes[i]) for i in range(len(build_inputs))]

    def _build_round(self, payloads: dict[int, tuple[str, str]], attempts: dict[int, int],
                     outcomes: dict[int, tuple[str | None, str | None]]) -> None:
        """Submit ``payloads`` and collect results until done or the pool had to restart.

        A candidate that hangs or kills its worker takes the pool down with it; the other
        candidates of the batch are then built again in a fresh pool, not thrown away (one
        slow candidate used to cost a whole batch). Each gets at most two pools."""
        pool = self._get_pool()
        futures = {}
        for i, (mod_json, target_json) in payloads.items():
            attempts[i] += 1
            futures[i] = pool.submit(self.build_function, mod_json, target_json,
                                     self.cross_compiler, self.artifact_dir)
        for i, future in futures.items():
            outcomes[i], restarted = self._result(future)
            if not restarted:
                continue
            # The candidate we waited on takes the blame; the others built so far are kept.
            for j, other in futures.items():
                if j in outcomes:
                    continue
                if other.done() and not other.cancelled() and other.exception() is None:
                    outcomes[j] = other.result()
                elif attempts[j] >= 2:
                    outcomes[j] = (None, "build abandoned after two worker restarts")
            return

    def _result(self, future: cf.Future) -> tuple[tuple[str | None, str | None], bool]:
        """(artifact path, error) of one build, and whether the pool had to be restarted."""
        deadline = time.monotonic() + self.timeout_s
        # Poll so that Ctrl-C (which only sets the stop flag) ends a long batch promptly.
        while not future.done():
            self.stop.check()
            if time.monotonic() > deadline:
                self._restart_pool()
                return (None, f"build timed out after {self.timeout_s:.0f} s"), True
            cf.wait([future], timeout=0.25)
        try:
            return future.result(), False
        except cf.process.BrokenProcessPool:
            self._restart_pool()
            return (None, "build worker crashed"), True

    def _restart_pool(self) -> None:
        if self._pool is not None:
            for proc in list(getattr(self._pool, "_processes", {}).values()):
                proc.kill()
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        self._pool_builds = 0

    def close_pool(self) -> None:
        """Stop the workers (the next batch starts new ones)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._pool_builds = 0

    def close(self) -> None:
        """Stop the workers and delete the built candidates."""
        self.close_pool()
        shutil.rmtree(self.artifact_dir, ignore_errors=True)

    def __getstate__(self) -> dict[str, Any]:  # the pool never travels
        state = self.__dict__.copy()
        state["_pool"] = None
        return state
