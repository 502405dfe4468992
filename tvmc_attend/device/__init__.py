"""Where the pipeline runs and measures: this host or a board, over TVM RPC.

``choice`` turns the --rpc-*/--emulate flags into a ``DeviceChoice`` (what tuning, run,
benchmark, compare and explore take); ``rpc`` opens sessions (``RemoteSpec``, ``connect``);
``tracker``, ``server``, ``emulator`` and ``rootfs`` back the ``tracker`` and ``device``
commands, ``doctor`` the checks of ``doctor``; ``endpoints`` holds the port and process helpers
they share. Nothing here imports TVM at import time.
"""

from tvmc_attend.device.rpc import RemoteSpec, connect

__all__ = ["RemoteSpec", "connect"]
