"""Board presets (target dict, cross compiler, RPC key, threads) as data, and their loader."""

from .board import Board, get_board, list_boards

__all__ = ["Board", "get_board", "list_boards"]
