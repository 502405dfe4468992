"""`tvmc-attend models`: list the model zoo with parameter counts and MACs."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table


def models_command(
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """List the zoo (AttendNeXt at two widths, the DC-AC block, timm peers): params and MACs."""
    from tvmc_attend.models import create_model, list_models, model_stats

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


def register(app: typer.Typer) -> None:
    app.command("models")(models_command)
