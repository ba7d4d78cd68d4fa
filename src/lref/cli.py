"""`lref <verb>`: a thin command line over the library. Each command parses options and calls one entry point."""

from __future__ import annotations

import os

# No model or dataset hub is reachable; never try one.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import click
import typer

app = typer.Typer(help="LLM relevance judges for e-commerce search (LREF).", no_args_is_help=True, add_completion=False)
data_app = typer.Typer(help="Inspect, convert and split labelled data.", no_args_is_help=True)
models_app = typer.Typer(help="The model zoo: list and prepare real weights.", no_args_is_help=True)
train_app = typer.Typer(help="Train models.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(models_app, name="models")
app.add_typer(train_app, name="train")


def main() -> None:
    from lref.data.records import DataError
    from lref.labels import LabelError

    try:
        app(standalone_mode=False)
    except (DataError, LabelError, FileNotFoundError) as error:
        typer.secho(f"error: {error}", err=True, fg=typer.colors.RED)
        raise SystemExit(2) from None
    except typer.Exit as done:
        raise SystemExit(done.exit_code) from None
    except click.exceptions.Abort:
        raise SystemExit(130) from None
    except click.ClickException as error:
        error.show()
        raise SystemExit(error.exit_code) from None


if __name__ == "__main__":
    main()
