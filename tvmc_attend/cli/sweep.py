"""`tvmc-attend sweep`: which CNNs compile, through which exporter, for which target."""

from __future__ import annotations

import typer


def sweep_command(
    models: str | None = typer.Option(
        None, "--models", help="Comma-separated model names (timm:<name>, torchvision:<name>, "
        "zoo names); 'torchvision:all' is every torchvision classifier. Default: a model of "
        "every torchvision family and twelve timm mobile backbones."),
    targets: str = typer.Option("host,rpi4", "--targets",
                                help="Comma-separated targets to build each model for."),
    paths: str = typer.Option("torchscript,dynamo,export", "--paths",
                              help="How each model reaches the compiler: TorchScript ONNX "
                                   "exporter, dynamo ONNX exporter, torch.export."),
    json_path: str = typer.Option("import-sweep.json", "--json",
                                  help="Results, written after every build; a rerun with "
                                       "the same file resumes."),
    markdown_path: str | None = typer.Option(None, "--markdown",
                                             help="Also write the table as Markdown."),
) -> None:
    """Export models three ways, compile each for each target (untuned) and verify it; one
    line per build, and a table of where each failed."""
    from tvmc_attend.bench.import_sweep import DEFAULT_MODELS, PATHS, run_sweep
    from tvmc_attend.errors import UserError
    from tvmc_attend.targets import get_board

    names = _split(models) if models else list(DEFAULT_MODELS)
    if "torchvision:all" in names:
        from tvmc_attend.models.hub import hub_names

        names = [n for n in names if n != "torchvision:all"] + hub_names("torchvision")
    chosen_paths = _split(paths)
    unknown = [p for p in chosen_paths if p not in PATHS]
    if unknown:
        raise UserError(f"unknown --paths {', '.join(unknown)}; choose from {', '.join(PATHS)}")
    chosen_targets = _split(targets)
    for target in chosen_targets:
        get_board(target)
    report = run_sweep(names, chosen_targets, json_path, chosen_paths,
                       progress=lambda line: typer.echo(line), markdown_path=markdown_path)
    ok = sum(b.ok for b in report.builds)
    typer.echo(f"{ok} of {len(report.builds)} builds compiled and verified -> {json_path}")


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def register(app: typer.Typer) -> None:
    app.command("sweep")(sweep_command)
