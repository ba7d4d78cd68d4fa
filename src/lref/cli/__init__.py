"""`lref <verb>`: a thin command line over the library. Each command parses options and calls one entry point.

One module per verb group: `data` (lref data ...), `models` (lref models ..., export), `scoring` (predict, merge,
calibrate, eval), `train` (lref train sft | dpo), `stages` (select, cot, cot-predict, teach, distill), `serve`
(lref serve llm | student) and `run` (run, report, demo). Each registers its commands on the apps of `common`.
"""

from __future__ import annotations

import os

# No model or dataset hub is reachable; never try one. Set before any verb module can load transformers.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import click
import typer

import lref.cli.judge  # noqa: F401  (registers `lref judge`)
import lref.cli.review  # noqa: F401  (registers `lref review`)
from lref.cli import data, models, run, scoring, serve, stages, train  # noqa: F401  (importing registers the commands)
from lref.cli.common import app

COMMAND_ORDER = ("predict", "merge", "calibrate", "eval", "judge", "select", "distill", "export", "cot", "cot-predict",
                 "teach", "run", "report", "demo")
"""The order `lref --help` lists the top-level commands in (the groups data, models, train and serve follow)."""
app.registered_commands.sort(key=lambda command: COMMAND_ORDER.index(command.name))


def main() -> None:
    from lref.data.records import DataError
    from lref.labels import LabelError
    from lref.models.zoo import ZooError
    from lref.prompts import VerbalizationError

    try:
        app(standalone_mode=False)
    except (DataError, LabelError, ZooError, VerbalizationError, FileNotFoundError, FileExistsError) as error:
        typer.secho(f"error: {error}", err=True, fg=typer.colors.RED)
        raise SystemExit(2) from None
    except typer.Exit as done:
        raise SystemExit(done.exit_code) from None
    except (typer.Abort, click.exceptions.Abort):
        raise SystemExit(130) from None
    except (typer.TyperException, click.ClickException) as error:
        # typer 0.29 vendors its own click, so its usage errors are not click.ClickException.
        if hasattr(error, "show"):
            error.show()
        else:
            typer.secho(f"error: {error}", err=True, fg=typer.colors.RED)
        raise SystemExit(error.exit_code) from None


__all__ = ["app", "main"]
