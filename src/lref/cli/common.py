"""What every verb module of the command line shares: the typer apps, the common option help texts and reading pairs."""

from __future__ import annotations

import typer

app = typer.Typer(help="LLM relevance judges for e-commerce search (LREF).", no_args_is_help=True, add_completion=False)
data_app = typer.Typer(help="Inspect, convert and split labelled data.", no_args_is_help=True)
models_app = typer.Typer(help="The model zoo: list and prepare real weights.", no_args_is_help=True)
train_app = typer.Typer(help="Train models.", no_args_is_help=True)
serve_app = typer.Typer(help="Serve models over HTTP.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(models_app, name="models")
app.add_typer(train_app, name="train")
app.add_typer(serve_app, name="serve")


FORMAT_HELP = "auto (by extension), jsonl, csv, parquet, homedepot, esci, wands or crowdflower."
SCHEME_HELP = "Label scheme preset (graded3, esci4, crowdflower4, lref5); default: the format's own."
COLUMN_HELP = "FIELD=SOURCE_COLUMN for generic files, e.g. query=search_term (repeatable)."
OPTION_HELP = "KEY=VALUE reader option, e.g. locale=us, split=train, encoding=latin-1; 'none' = None (repeatable)."
MATCH_HINTS_HELP = (
    "Add a line naming the query words found, close or missing in the product text to every pair "
    "(lref.data.hints.match_hint); the trained models record it and add it themselves when scoring."
)


def key_values(items: list[str] | None, option: str) -> dict[str, str]:
    """Parse repeated KEY=VALUE options."""
    parsed = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint=option)
        parsed[key.strip()] = value.strip()
    return parsed


def read_pairs(path: str, fmt: str, scheme: str | None, column: list[str] | None, option: list[str] | None,
               match_hints: bool = False):
    """The records of a data file (or dataset folder) as the options describe them, with match hints when asked."""
    from lref.data import load_records
    from lref.prompts import with_match_hints

    raw_options = key_values(option, "--option")
    options = {key: None if value.lower() == "none" else value for key, value in raw_options.items()}
    records = load_records(path, fmt, scheme=scheme, columns=key_values(column, "--column") or None, **options)
    return with_match_hints(records) if match_hints else records


__all__ = ["COLUMN_HELP", "FORMAT_HELP", "MATCH_HINTS_HELP", "OPTION_HELP", "SCHEME_HELP", "app", "data_app",
           "key_values", "models_app", "read_pairs", "serve_app", "train_app"]
