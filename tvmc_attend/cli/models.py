"""`tvmc-attend models`: list the model zoo with parameter counts and MACs."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table


def models_command(
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
    show_all: bool = typer.Option(
        False, "--all", help="List every accepted name instead: the zoo, then each timm and "
        "torchvision classifier as timm:<name> / torchvision:<name> (random weights or "
        "--checkpoint; nothing is downloaded)."),
) -> None:
    """List the zoo (AttendNeXt at two widths, the DC-AC block, timm peers): params and MACs."""
    from tvmc_attend.models import create_model, list_models, model_stats

    if show_all:
        _print_all_names(as_json)
        return

    rows = []
    for spec in list_models():
        stats = model_stats(create_model(spec.name), spec.default_input_shape)
        rows.append({"name": spec.name, "family": spec.family, "description": spec.description,
                     "input_shape": list(spec.default_input_shape), "params": stats.params,
                     "macs": stats.macs})
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title="Model zoo")
    for col in ("name", "family", "input", "params (M)", "MACs (G)", "description"):
        table.add_column(col, justify="right" if col[0] in "pM" else "left")
    for r in rows:
        table.add_row(r["name"], r["family"], "x".join(map(str, r["input_shape"])),
                      f"{r['params'] / 1e6:.2f}", f"{r['macs'] / 1e9:.3f}", r["description"])
    Console().print(table)


def _print_all_names(as_json: bool) -> None:
    """Every name ``--model`` accepts (besides model files), one per line."""
    from tvmc_attend.models import list_models
    from tvmc_attend.models.hub import HUBS, hub_names

    names = {"zoo": [spec.name for spec in list_models()]}
    names.update({hub: hub_names(hub) for hub in HUBS})
    if as_json:
        print(json.dumps(names, indent=2))
        return
    for group, listed in names.items():
        print(f"# {group}: {len(listed)} models")
        print("\n".join(listed))


def register(app: typer.Typer) -> None:
    app.command("models")(models_command)
