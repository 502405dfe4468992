"""Saved AttendNeXt designs (`explore`'s front members): one JSON file each, a model by name.

`tvmc-attend explore` writes ``<out>/explore-<hash>.json`` (``save_design``) for every member of
the Pareto front. The registry asks ``register_saved(name)`` about names it does not know, so
``tvmc-attend compile --model explore-<hash>`` (and tune, benchmark, compare) builds the saved
design like any zoo model. Files are looked up in ``$TVMC_ATTEND_EXPLORED`` (directories
separated by ``os.pathsep``) or else in ``./explored``, the default ``--out`` of `explore` (the
same working-directory convention as ``./tuning_logs``).
"""

from __future__ import annotations

import json
import os
from typing import Any

from tvmc_attend.errors import UserError
from tvmc_attend.files import write_json_atomic
from tvmc_attend.models.design import NAME_PREFIX, Design, build_model
from tvmc_attend.models.registry import register_model, register_resolver

FORMAT = "tvmc-attend-explored/1"
ENV_DIRS = "TVMC_ATTEND_EXPLORED"
DEFAULT_DIR = "explored"


def search_dirs() -> list[str]:
    """Where saved designs are looked up, in order."""
    env = os.environ.get(ENV_DIRS)
    return [d for d in env.split(os.pathsep) if d] if env else [DEFAULT_DIR]


def save_design(out_dir: str, design: Design, measured: dict[str, Any]) -> str:
    """Write ``design`` (and what was measured about it) as ``<out_dir>/<name>.json``."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{design.name}.json")
    data = {"format": FORMAT, "name": design.name, "design": design.as_dict(),
            "measured": measured}
    write_json_atomic(path, data)
    return path


def load_design(path: str) -> Design:
    """Read a saved design; a file that is not one is a UserError."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read saved design {path} ({err})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise UserError(f"{path} is not a saved `tvmc-attend explore` design ({FORMAT})")
    design = Design.from_dict(data.get("design") or {})
    if design.name != data.get("name"):
        raise UserError(f"{path}: design was edited (its name would be {design.name}); "
                        "rename the file and its name field to match")
    return design


def find_saved(name: str) -> str | None:
    """The file of a saved design called ``name``, if any search directory has one."""
    if not name.startswith(NAME_PREFIX) or os.sep in name:
        return None
    for directory in search_dirs():
        path = os.path.join(directory, f"{name}.json")
        if os.path.isfile(path):
            return path
    return None


@register_resolver
def register_saved(name: str) -> bool:
    """Register the saved design ``name`` in the model registry; False when there is none."""
    path = find_saved(name)
    if path is None:
        return False
    design = load_design(path)

    def factory(num_classes: int = 1000) -> Any:
        return build_model(design, num_classes)

    register_model(description=f"explored AttendNeXt design ({os.path.abspath(path)})",
                   family="attendnext", name=name, listed=False)(factory)
    return True
