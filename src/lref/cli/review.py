"""`lref review export | import`: pairs to a Label Studio project folder, and Label Studio's export back to label
corrections (docs/review.md)."""

from __future__ import annotations

import typer

from lref.cli.common import FORMAT_HELP, app
from lref.config import field_help

review_app = typer.Typer(help="Human review in Label Studio: export pairs, import corrections.", no_args_is_help=True)
app.add_typer(review_app, name="review")


def _export_help(name: str) -> str:
    from lref.review import ReviewExportConfig

    return field_help(ReviewExportConfig, name)


@review_app.command("export")
def export_command(
    out: str = typer.Option(..., "--out", "-o", help=_export_help("out_dir")),
    source: str | None = typer.Option(None, "--source", help=_export_help("source")),
    kind: str = typer.Option("auto", "--kind", help=_export_help("kind")),
    data: str | None = typer.Option(None, "--data", help=_export_help("data")),
    pred: str | None = typer.Option(None, "--pred", help=_export_help("pred")),
    gold: str | None = typer.Option(None, "--gold", help=_export_help("gold")),
    fmt: str = typer.Option("auto", "--format", "-f", help=FORMAT_HELP),
    scheme: str | None = typer.Option(None, "--scheme", help=_export_help("scheme")),
) -> None:
    """Write a Label Studio project folder: label_config.xml and tasks.json (with the model's label pre-annotated)."""
    from lref.review import ReviewExportConfig, export_review

    try:
        config = ReviewExportConfig(out_dir=out, source=source, kind=kind, data=data, pred=pred, gold=gold,
                                    format=fmt, scheme=scheme)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    result = export_review(config)
    typer.echo(f"{result.tasks} {result.kind} pairs to review ({result.scheme}) in {result.out_dir}: create a Label "
               f"Studio project with label_config.xml and import tasks.json (docs/review.md)")


@review_app.command("import")
def import_command(
    export: str = typer.Argument(..., metavar="EXPORT.json", help="Label Studio's JSON export of the project."),
    out: str = typer.Option(..., "--out", "-o", help="Corrections file (JSON lines); merged into when it exists."),
    source: str | None = typer.Option(
        None, "--source", help="The folder `lref review export` wrote: the export's pair ids must be among its tasks."
    ),
    scheme: str | None = typer.Option(None, "--scheme", help="Label scheme (default: the tasks' data.scheme)."),
) -> None:
    """Read Label Studio's JSON export and write label corrections (id, old_label, new_label, annotator, time)."""
    from lref.review import import_review

    result = import_review(export, out, source=source, scheme=scheme)
    skipped = f"; {len(result.skipped)} tasks without an annotation skipped" if result.skipped else ""
    typer.echo(f"{result.imported} reviewed pairs ({result.changed} labels changed){skipped}; {result.total} "
               f"corrections in {result.out}")


CORRECTIONS_HELP = ("Label corrections (`lref review import`): replace these pairs' gold labels before anything reads "
                    "them; an id not in the data is an error.")


def corrected(path: str | None, record_lists: list, scheme: str) -> list:
    """`record_lists` with the corrections of `path` applied (unchanged without a path); says what changed."""
    if not path:
        return record_lists
    from lref.data.corrections import load_and_apply
    from lref.labels import get_scheme

    lists, summary = load_and_apply(path, record_lists, get_scheme(scheme))
    stale = f", {summary.stale} of them relabelled since the review" if summary.stale else ""
    typer.echo(f"corrections: {summary.count} reviewed pairs from {path} (sha256 {summary.sha256[:12]}), "
               f"{summary.changed} labels changed{stale}")
    return lists
