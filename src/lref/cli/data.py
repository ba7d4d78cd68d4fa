"""`lref data inspect | convert | split | synth`: look at, convert, split and generate labelled pairs."""

from __future__ import annotations

import typer

from lref.cli.common import COLUMN_HELP, FORMAT_HELP, OPTION_HELP, SCHEME_HELP, data_app, key_values, read_pairs


@data_app.command("inspect")
def data_inspect(
    path: str = typer.Argument(..., metavar="PATH", help="A data file, or the dataset folder for esci and wands."),
    fmt: str = typer.Option("auto", "--format", "-f", help=FORMAT_HELP),
    scheme: str | None = typer.Option(None, "--scheme", help=SCHEME_HELP),
    column: list[str] | None = typer.Option(None, "--column", help=COLUMN_HELP),
    option: list[str] | None = typer.Option(None, "--option", help=OPTION_HELP),
    json_out: str | None = typer.Option(None, "--json", help="Also write the summary as JSON to this file."),
) -> None:
    """Print pairs, queries, label counts and shares, the majority floor and the rater disagreement rate."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from lref.data import default_scheme, describe_records
    from lref.io import write_json

    records = read_pairs(path, fmt, scheme, column, option)
    summary = describe_records(records, scheme or default_scheme(fmt))
    console = Console()
    mean = summary["mean_pairs_per_query"]
    console.print(f"{path} (scheme {summary['scheme']})")
    console.print(
        f"{summary['pairs']} pairs, {summary['queries']} queries"
        + (f", {mean:.2f} pairs per query" if mean else "")
    )
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("label")
    table.add_column("count", justify="right")
    table.add_column("share", justify="right")
    for label, count in summary["label_counts"].items():
        table.add_row(label, str(count), f"{summary['label_shares'][label]:.3f}")
    if summary["labelled"]:
        console.print(table)
        console.print(f"majority floor: {summary['majority_floor']:.3f} (always {summary['majority_label']})")
    if summary["unlabelled"]:
        console.print(f"unlabelled pairs: {summary['unlabelled']}")
    if summary["rater_disagreement_rate"] is not None:
        console.print(f"rater disagreement rate: {summary['rater_disagreement_rate']:.3f}")
    if summary["label_noise_rate"] is not None:
        console.print(f"label noise rate: {summary['label_noise_rate']:.3f}")
    if json_out:
        write_json(json_out, summary)
        console.print(f"summary written to {json_out}")


@data_app.command("convert")
def data_convert(
    path: str = typer.Argument(..., metavar="PATH", help="A data file, or the dataset folder for esci and wands."),
    out: str = typer.Option(..., "--out", help="Output file: canonical .jsonl (or .parquet)."),
    fmt: str = typer.Option("auto", "--format", "-f", help=FORMAT_HELP),
    scheme: str | None = typer.Option(None, "--scheme", help=SCHEME_HELP),
    column: list[str] | None = typer.Option(None, "--column", help=COLUMN_HELP),
    option: list[str] | None = typer.Option(None, "--option", help=OPTION_HELP),
) -> None:
    """Convert a source to canonical records; nothing is written unless every row is valid."""
    from lref.data import write_records

    count = write_records(out, read_pairs(path, fmt, scheme, column, option))
    typer.echo(f"wrote {count} records to {out}")


@data_app.command("split")
def data_split(
    path: str = typer.Argument(..., metavar="PATH", help="A data file, or the dataset folder for esci and wands."),
    out_dir: str = typer.Option(..., "--out-dir", help="Folder for NAME.jsonl, one file per split."),
    fmt: str = typer.Option("auto", "--format", "-f", help=FORMAT_HELP),
    fractions: str = typer.Option("train=0.8,dev=0.1,test=0.1", "--fractions", help="NAME=FRACTION,... summing to 1."),
    seed: int = typer.Option(0, "--seed", help="Changes which queries land in which split."),
    scheme: str | None = typer.Option(None, "--scheme", help=SCHEME_HELP),
    column: list[str] | None = typer.Option(None, "--column", help=COLUMN_HELP),
    option: list[str] | None = typer.Option(None, "--option", help=OPTION_HELP),
) -> None:
    """Split by query (no query on two sides) and write one canonical JSONL per split."""
    from pathlib import Path

    from rich.console import Console
    from rich.table import Table

    from lref.data import normalise_query, split_by_query, write_records
    from lref.data.splits import check_fractions

    try:
        wanted = check_fractions({k: float(v) for k, v in key_values(fractions.split(","), "--fractions").items()})
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--fractions") from None
    splits = split_by_query(read_pairs(path, fmt, scheme, column, option), wanted, seed=seed)
    table = Table("split", "pairs", "queries", "file")
    for name, records in splits.items():
        target = Path(out_dir) / f"{name}.jsonl"
        write_records(target, records)
        table.add_row(name, str(len(records)), str(len({normalise_query(r.query) for r in records})), str(target))
    Console().print(table)


@data_app.command("synth")
def data_synth(
    out: str = typer.Option(..., "--out", "-o", help="Output file: canonical .jsonl (or .parquet)."),
    pairs: int = typer.Option(20000, "--pairs", min=1, help="Query–product pairs to generate."),
    scheme: str = typer.Option("graded3", "--scheme", help="Label scheme preset: graded3, esci4, crowdflower4, lref5."),
    noise: float = typer.Option(
        0.1, "--noise", min=0.0, max=1.0, help="Label noise rate (true label kept in meta.true_label); 0: clean labels."
    ),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same options always give the same file."),
    queries: int | None = typer.Option(None, "--queries", min=1, help="Distinct queries (default: pairs / 10)."),
    products: int | None = typer.Option(None, "--products", min=1, help="Catalog size (default: max(600, pairs / 8))."),
) -> None:
    """Generate the synthetic home-and-garden catalog with rule-based graded labels (see lref.data.synthetic)."""
    from collections import Counter

    from lref.data import write_records
    from lref.data.synthetic import SyntheticCatalogConfig, generate_catalog
    from lref.labels import LabelError, get_scheme

    config = SyntheticCatalogConfig(
        n_pairs=pairs, n_queries=queries, n_products=products, scheme=scheme, label_noise=noise, seed=seed
    )
    try:
        records = generate_catalog(config)
    except ValueError as error:
        if isinstance(error, LabelError):
            raise
        raise typer.BadParameter(str(error)) from None
    count = write_records(out, records)
    shares = Counter(r.label for r in records)
    typer.echo(
        f"wrote {count} records ({len({r.meta['query_id'] for r in records})} queries, scheme {scheme}) to {out}: "
        + ", ".join(f"{label} {shares[label] / count:.1%}" for label in get_scheme(scheme).labels)
        + f"; noisy labels {sum(r.meta['label_noise'] for r in records) / count:.1%}"
    )
