"""`lref models list | prepare` (the zoo) and `lref export` (a trained cross-encoder to ONNX)."""

from __future__ import annotations

import typer

from lref.cli.common import app, models_app
from lref.config import field_help


@models_app.command("list")
def models_list(as_json: bool = typer.Option(False, "--json", help="Print the rows as JSON.")) -> None:
    """List the named models: packages, whether installed and prepared, and where they are cached."""
    import json

    from lref.models.zoo import list_models

    rows = list_models()
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(title="lref model zoo", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for column in ("name", "kind", "params", "installed", "prepared", "packages"):
        table.add_column(column, no_wrap=column != "packages", overflow="fold")
    for row in rows:
        table.add_row(
            row["name"] + (" *" if row["default"] else ""),
            row["kind"],
            f"{row['params'] / 1e6:.1f} M",
            "yes" if row["installed"] else "[red]no[/red]",
            "yes" if row["prepared"] else "no",
            row["packages_summary"],
        )
    Console().print(table)
    typer.echo("* default LLM / encoder")
    for row in rows:
        if row["prepared"]:
            typer.echo(f"{row['name']}: {row['path']}")
    for row in rows:
        if not row["installed"]:
            typer.echo(f"to install {row['name']}: {row['install']}")


@models_app.command("prepare")
def models_prepare(
    names: list[str] = typer.Argument(..., help="Zoo names, e.g. gemma-3-270m minilm-l6."),
    force: bool = typer.Option(False, "--force", help="Rebuild even if already prepared."),
) -> None:
    """Assemble, verify and convert named models into the cache; print each folder."""
    from lref.models.zoo import prepare

    for name in names:
        typer.echo(str(prepare(name, force=force)))



def _export_help(name: str) -> str:
    from lref.models.onnx import ExportConfig

    return field_help(ExportConfig, name)


@app.command("export")
def export_command(
    model: str = typer.Argument(..., metavar="MODEL_DIR", help=_export_help("model")),
    out: str = typer.Option(..., "--output-dir", "-o", help=_export_help("output_dir")),
    quantize: bool = typer.Option(True, "--quantize/--no-quantize", help=_export_help("quantize")),
    opset: int = typer.Option(17, "--opset", help=_export_help("opset")),
    max_length: int | None = typer.Option(None, "--max-length", min=2, help=_export_help("max_length")),
) -> None:
    """Export a trained cross-encoder (e.g. a distilled student) to ONNX, fp32 and int8; prints the folder."""
    from lref.models.onnx import ExportConfig, export_student

    try:
        config = ExportConfig(model=model, output_dir=out, quantize=quantize, opset=opset, max_length=max_length)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    typer.echo(str(export_student(config)))
