"""Which board a build compiles for, given the tuning databases there are: the choice that
lets a host database apply on any CPU of its class. Reads only ``tuning.json`` files (no TVM),
so a command makes it before the minutes of import and build.
"""

from __future__ import annotations

from collections.abc import Callable

from tvmc_attend.targets import Board, get_board
from tvmc_attend.targets.cpu_class import CLASSES, classes_here

from .lowering import DEFAULT_LAYOUT, lowering_of
from .tuning.database import TuningDatabase


def build_board(board: Board, model_name: str, log_dir: str | None = None,
                database_dir: str | None = None, layout: str = DEFAULT_LAYOUT,
                untuned: bool = False, warn: Callable[[str], None] = print) -> Board:
    """The board to compile ``model_name`` for: ``board`` itself, except ``host`` on a CPU
    whose own class has no database for the model while a narrower class that runs here has
    one (e.g. an AVX-512 CPU and only an AVX2 database): then that class's preset, so that its
    records apply (they are schedules of that class's tasks), said in a note. Reads only
    ``tuning.json`` files: no TVM."""
    own = board.isa_class
    if untuned or own is None or board.cpu_class:  # boards and class presets are what they say
        return board
    lowering = lowering_of(layout)
    if database_dir:
        candidates = [TuningDatabase(database_dir)]
    else:
        candidates = [TuningDatabase.to_apply(log_dir, get_board(c.preset), model_name)
                      for c in classes_here()]
    for db in candidates:
        if not db.exists():
            continue
        info = db.read_info()
        cls = CLASSES.get(info.cpu_class)
        if info.lowering != lowering or cls is None or cls not in classes_here():
            continue
        if cls is own:
            return board
        warn(f"this CPU ({own.name}) has no {model_name} database of its own; compiling for "
             f"{cls.name} ({cls.preset}: code that runs here) to apply {db.path}")
        return get_board(cls.preset)
    return board
