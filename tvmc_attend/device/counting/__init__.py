"""Counting device: runs compiled candidates on an emulated core under a QEMU plugin that counts
instructions, loads, stores, the misses of a simulated cache hierarchy and how often each block
of code ran (``counter``, ``counts``), built from ``count_plugin.c`` at first use (``plugin``).
``cost`` weighs the counts by the board's ``CoreModel``: each block by llvm-mca's model of the
core (``throughput``) plus the exposed misses. They rank schedules on a board nobody here has;
they are never a latency.
"""

from .cost import CostModel, CountedCost
from .counter import CountingCore, CountingError, GuestSpec
from .counts import CodeBlock, Counts

__all__ = ["CodeBlock", "CostModel", "CountedCost", "CountingCore", "CountingError", "Counts",
           "GuestSpec"]
