"""Counting device: runs compiled candidates on an emulated core under a QEMU plugin that counts
instructions, loads, stores and the misses of a simulated cache hierarchy (``counter``), built
from ``count_plugin.c`` at first use (``plugin``). The counts, weighed by the board's
``CoreModel``, rank schedules on a board nobody here has; they are never a latency.
"""

from .counter import CountingCore, CountingError, Counts, GuestSpec

__all__ = ["CountingCore", "CountingError", "Counts", "GuestSpec"]
