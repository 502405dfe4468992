"""Shared pytest fixtures. Device fixtures (tracker, emulated board) live in fixtures_device.py."""

from fixtures_device import *  # noqa: F401,F403
