"""Where tvmc-attend keeps large, rebuildable state, outside the repo: the venv, the emulated
boards' rootfs, the counting plugin, the TVM runtimes bundles carry."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$TVMC_ATTEND_CACHE``, else ``~/.cache/tvmc-attend`` (scripts/setup.sh uses the same)."""
    return Path(os.environ.get("TVMC_ATTEND_CACHE", Path.home() / ".cache" / "tvmc-attend"))
