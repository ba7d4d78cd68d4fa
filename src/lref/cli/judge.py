"""`lref judge`: label pairs without gold labels with one model or a committee, flag the doubtful ones, pick a review
budget's worth for a human, and report the cost (`lref.judge`)."""

from __future__ import annotations

import typer

from lref.cli.common import FORMAT_HELP, OPTION_HELP, app, key_values
from lref.config import field_default, field_help
from lref.judge import JudgeConfig


def _help(name: str) -> str:
    return field_help(JudgeConfig, name)


def _default(name: str):
    return field_default(JudgeConfig, name)


@app.command("judge")
def judge_command(
    model: list[str] = typer.Option(..., "--model", "-m", help=_help("models")),
    data: str = typer.Option(..., "--data", "-d", help="The pairs to label (a data file or dataset folder); any "
                             "label column is ignored."),
    out: str = typer.Option(..., "--out", "-o", help=_help("out")),
    output_format: str = typer.Option(_default("output_format"), "--format", "-f", help=_help("output_format")),
    data_format: str = typer.Option("auto", "--data-format", help=f"Format of --data: {FORMAT_HELP}"),
    weight: list[float] | None = typer.Option(None, "--weight", "-w", help=_help("weights")),
    scheme: str | None = typer.Option(_default("scheme"), "--scheme", help=_help("scheme")),
    min_confidence: float = typer.Option(_default("min_confidence"), "--min-confidence", min=0.0, max=1.0,
                                         help=_help("min_confidence")),
    budget: int = typer.Option(_default("budget"), "--budget", min=0, help=_help("budget")),
    review_out: str | None = typer.Option(_default("review_out"), "--review-out", help=_help("review_out")),
    batch_size: int = typer.Option(_default("batch_size"), "--batch-size", min=1, help=_help("batch_size")),
    max_length: int | None = typer.Option(_default("max_length"), "--max-length", min=2, help=_help("max_length")),
    threads: int | None = typer.Option(_default("threads"), "--threads", min=1, help=_help("threads")),
    workers: int = typer.Option(_default("workers"), "--workers", min=1, help=_help("workers")),
    block_size: int = typer.Option(_default("block_size"), "--block-size", min=1, help=_help("block_size")),
    shard: str | None = typer.Option(_default("shard"), "--shard", help=_help("shard")),
    calibrated: bool = typer.Option(_default("calibrated"), "--calibration/--no-calibration",
                                    help=_help("calibrated")),
    checkpoint_pairs: int = typer.Option(_default("checkpoint_pairs"), "--checkpoint-pairs", min=1,
                                         help=_help("checkpoint_pairs")),
    option: list[str] | None = typer.Option(None, "--option", help=OPTION_HELP),
) -> None:
    """Label pairs that have no gold label: the (committee's) calibrated label, its confidence, low_confidence and
    disagreement flags, a review file of the --budget pairs most worth a human look, and the cost.

    Resumes after a kill from OUT.partial; --shard i/N outputs join with `lref merge`."""
    from lref.data import default_scheme
    from lref.judge import committee_specs, judge, read_pool

    try:
        config = JudgeConfig(
            models=model, out=out, output_format=output_format, weights=weight or None, scheme=scheme,
            min_confidence=min_confidence, budget=budget, review_out=review_out, batch_size=batch_size,
            max_length=max_length, threads=threads, workers=workers, block_size=block_size, shard=shard,
            calibrated=calibrated, checkpoint_pairs=checkpoint_pairs,
        )
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    specs = committee_specs(config, default_scheme(data_format))
    for name, spec in zip(model, specs):
        if spec.config.label_bias is not None:
            typer.echo(f"{name}: applying its label calibration (--no-calibration: raw scores)", err=True)
    raw_options = key_values(option, "--option")
    options = {key: None if value.lower() == "none" else value for key, value in raw_options.items()}
    records = read_pool(data, data_format, specs[0].scheme, **options)
    report = judge(config, records, specs=specs)
    for note in report.notes:
        typer.echo(f"note: {note}", err=True)
    typer.echo(
        f"judged {report.pairs} pairs ({report.scheme.name}, {len(model)} model{'s' if len(model) > 1 else ''}"
        + (f", shard {shard} of {len(records)}" if shard else "")
        + f"): {report.low_confidence} low-confidence, {report.disagreements} disagreements; wrote {report.out}",
        err=True,
    )
    if report.review is not None:
        typer.echo(f"review: the {report.reviewed} pairs most worth a look in {report.review}", err=True)
    cost = report.cost
    lines = [f"cost: {cost['pairs']} pairs in {cost['wall_s']:.1f} s"
             + (f" ({cost['pairs_per_s']:.1f} pairs/s, {cost['cpu_s_per_1000_pairs']:.1f} CPU-s per 1,000 pairs)"
                if cost["pairs_per_s"] else "")]
    for entry in cost["models"]:
        line = f"  {entry['model']} ({entry['kind']}): {entry['pairs_scored']} pairs scored in {entry['wall_s']:.1f} s"
        if entry["pairs_per_s"]:
            line += f", {entry['pairs_per_s']:.1f} pairs/s, {entry['cpu_s_per_1000_pairs']:.1f} CPU-s per 1,000"
        if entry["resumed_pairs"]:
            line += f" ({entry['resumed_pairs']} resumed)"
        lines.append(line)
    typer.echo("\n".join(lines) + f"\ncost written to {report.cost_file}", err=True)
