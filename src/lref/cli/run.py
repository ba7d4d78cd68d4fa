"""`lref run | report | demo`: the whole pipeline from a YAML config, its HTML report, and the embedded demo."""

from __future__ import annotations

import typer

from lref.cli.common import app
from lref.config import field_help


@app.command("run")
def run_command(
    config: str = typer.Argument(..., metavar="CONFIG.yaml", help="Pipeline config (see docs/pipeline.md)."),
    from_stage: str | None = typer.Option(None, "--from", help="Re-run this stage and every later one afresh."),
    only: list[str] | None = typer.Option(
        None, "--only", help="Run only these stages (repeatable or comma-separated)."
    ),
    run_dir: str | None = typer.Option(None, "--run-dir", help="Run directory (default: the config's run_dir)."),
    corrections: str | None = typer.Option(
        None, "--corrections", help="Label corrections (`lref review import`); replaces the config's data.corrections."
    ),
) -> None:
    """Run baselines and the LREF chain from one YAML config into a resumable run directory."""
    from pathlib import Path

    from lref.pipeline import ConfigError, load_config, run_pipeline

    stages = [name.strip() for item in only or [] for name in item.split(",") if name.strip()]
    try:
        loaded = load_config(config)
        if corrections:
            if not Path(corrections).is_file():
                raise ConfigError(f"--corrections: no such file: {corrections}")
            loaded.data.corrections = str(Path(corrections).resolve())
        results = run_pipeline(loaded, run_dir=run_dir, from_stage=from_stage, only=stages or None, echo=typer.echo)
    except ConfigError as error:
        typer.secho(f"error: {error}", err=True, fg=typer.colors.RED)
        raise SystemExit(2) from None
    for system in results["systems"]:
        if "metrics" in system:
            m = system["metrics"]
            typer.echo(f"{system['name']:>10}: acc {m['accuracy']:.3f}, macro-F1 {m['macro_f1']:.3f}, "
                       f"weighted-F1 {m['weighted_f1']:.3f}, over-estimates {m['over_estimate_share']:.3f}")
    typer.echo(f"results in {results['run_dir']}/results.json; `lref report {results['run_dir']}` draws them")


@app.command("report")
def report_command(
    run_dir: str = typer.Argument(..., metavar="RUN_DIR", help="A run directory written by `lref run`."),
    out: str | None = typer.Option(None, "--out", help="HTML file (default: RUN_DIR/report/report.html)."),
) -> None:
    """Write one self-contained HTML report (and its PNG figures) of a run directory."""
    from lref.report import write_report

    typer.echo(f"report written to {write_report(run_dir, out)}")


def _demo_help(name: str) -> str:
    from lref.demo import DemoConfig

    return field_help(DemoConfig, name)


@app.command("demo")
def demo(
    out_dir: str = typer.Option("runs/demo", "--out-dir", help=_demo_help("out_dir")),
    config: str | None = typer.Option(None, "--config", help=_demo_help("config")),
    fresh: bool = typer.Option(False, "--fresh", help=_demo_help("fresh")),
) -> None:
    """The embedded default job: every baseline and the LREF chain on the synthetic catalog, real weights."""
    from lref.demo import DemoConfig, run_demo

    run_demo(DemoConfig(out_dir=out_dir, config=config, fresh=fresh))
