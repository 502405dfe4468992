"""Boards the pipeline measures on: RPC sessions, the tracker, and emulated boards.

``RemoteSpec``/``connect`` are what tuning, run and benchmark use; the rest backs the
``device``, ``tracker`` and ``doctor`` commands. Nothing here imports TVM at import time.
"""

from tvmc_attend.device.rpc import RemoteSpec, connect

__all__ = ["RemoteSpec", "connect"]
