"""The layout the README promises: every package folder is installed, and imports flow one way
through the stages (model -> import -> graph rewrites -> schedules -> tuning -> build -> bundle;
bench, explore and cli on top), with no cycles, not even through imports inside functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import tomllib
from helpers import REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]


def package_folders() -> dict[str, Path]:
    """Every folder with an ``__init__.py`` under a package-dir root, by its package name."""
    found = {}
    for root_package, folder in PYPROJECT["package-dir"].items():
        root = REPO / folder
        for init in root.rglob("__init__.py"):
            relative = init.parent.relative_to(root).parts
            found[".".join((root_package, *relative))] = init.parent
    return found


def test_every_package_folder_is_installed() -> None:
    """A folder with an ``__init__.py`` that pyproject.toml does not list would be missing
    from the installed package (and only an editable install would hide it)."""
    listed = set(PYPROJECT["packages"])
    missing = sorted(set(package_folders()) - listed)
    assert not missing, f"add to [tool.setuptools] packages in pyproject.toml: {missing}"


def test_every_listed_package_exists() -> None:
    for package in PYPROJECT["packages"]:
        root = max((p for p in PYPROJECT["package-dir"] if package.startswith(p)), key=len)
        folder = REPO / PYPROJECT["package-dir"][root] / Path(*package[len(root):].split(".")[1:])
        assert folder.is_dir(), f"{package} is listed in pyproject.toml but {folder} is missing"


def modules() -> dict[str, Path]:
    """Every module of the installed packages, by its dotted name."""
    found = {}
    for package, folder in package_folders().items():
        for path in folder.glob("*.py"):
            found[package if path.name == "__init__.py" else f"{package}.{path.stem}"] = path
    return found


MODULES = modules()


def imports_of(name: str) -> set[str]:
    """The project modules ``name`` imports, anywhere in its body (lazy imports included)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            # ``from package import module`` imports the module; anything else, the base.
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                       for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            # Importing a module runs its packages' __init__ first: edges too, except to the
            # importer's own packages (imported before it anyway).
            while target:
                if not (name + ".").startswith(target + "."):
                    found.add(target)
                target = target.rpartition(".")[0]
    return {target for target in found if target in MODULES}


GRAPH = {name: imports_of(name) for name in MODULES}

# What each stage may not import: the stages after it, and the tools built on the compiler.
LATER = ("tvmc_attend.bench", "tvmc_attend.explore", "tvmc_attend.api", "tvmc_attend.cli")
FORBIDDEN = {
    "tvmc_attend.models": ("tvmc_attend.compiler", "tvmc_attend.relay_ops",
                           "tvmc_attend.schedules", "tvmc_attend.device", *LATER),
    "tvmc_attend.targets": ("tvmc_attend.compiler", "tvmc_attend.device", *LATER),
    "tvmc_attend.device": ("tvmc_attend.compiler", "tvmc_attend.relay_ops",
                           "tvmc_attend.schedules", *LATER),
    "tvmc_attend.relay_ops": ("tvmc_attend.schedules", "tvmc_attend.compiler", *LATER),
    "tvmc_attend.schedules": ("tvmc_attend.compiler", *LATER),
    "tvmc_attend.compiler": LATER,
    "tvmc_attend.bench": ("tvmc_attend.explore", "tvmc_attend.api", "tvmc_attend.cli"),
    "tvmc_attend.explore": ("tvmc_attend.api", "tvmc_attend.cli"),
    "tvmc_attend.api": ("tvmc_attend.cli",),
}


@pytest.mark.parametrize("stage", FORBIDDEN)
def test_a_stage_imports_no_later_stage(stage: str) -> None:
    wrong = sorted(f"{name} imports {target}" for name, targets in GRAPH.items()
                   if name == stage or name.startswith(stage + ".")
                   for target in targets if target.startswith(FORBIDDEN[stage]))
    assert not wrong, wrong


def test_no_import_cycles() -> None:
    """Tarjan's strongly connected components of the module graph: each must be one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(name: str) -> None:
        index[name] = low[name] = len(index)
        stack.append(name)
        for target in GRAPH[name]:
            if target not in index:
                visit(target)
                low[name] = min(low[name], low[target])
            elif target in stack:
                low[name] = min(low[name], index[target])
        if low[name] == index[name]:
            component = []
            while not component or component[-1] != name:
                component.append(stack.pop())
            if len(component) > 1:
                cycles.append(sorted(component))

    for name in GRAPH:
        if name not in index:
            visit(name)
    assert not cycles, cycles
