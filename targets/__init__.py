"""Board presets (target dict, cross compiler, RPC key, threads) as data, and their loader."""

from .board import Board, CacheLevel, CoreModel, get_board, list_boards
from .isa import VectorIsa, vector_isa

__all__ = ["Board", "CacheLevel", "CoreModel", "VectorIsa", "get_board", "list_boards",
           "vector_isa"]
