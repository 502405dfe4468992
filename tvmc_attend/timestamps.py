"""The one timestamp format of everything we write: UTC, ISO 8601, to the second."""

from __future__ import annotations

import datetime


def utc_timestamp() -> str:
    """Now, e.g. ``2026-12-01T09:30:00+00:00``."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
