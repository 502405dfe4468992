"""Board presets (target dict, cross compiler, RPC key, threads) as data, and their loader."""

from .board import Board, get_board, list_boards
from .isa import VectorIsa, vector_isa

__all__ = ["Board", "VectorIsa", "get_board", "list_boards", "vector_isa"]
