"""`lref predict | merge | calibrate | eval`: score pairs with a model, join shard outputs, fit a model's label
calibration, compare predictions with gold labels."""

from __future__ import annotations

import os

import typer

from lref.cli.common import FORMAT_HELP, OPTION_HELP, SCHEME_HELP, app, read_pairs
from lref.config import field_help


@app.command("predict")
def predict(
    model: str = typer.Option(..., "--model", "-m", help="Zoo name, HF folder or lref adapter folder."),
    data: str = typer.Option(..., "--data", "-d", help="Pairs to score (a data file, or a dataset folder)."),
    out: str = typer.Option(..., "--out", "-o", help="Prediction file (.jsonl): id, label, probs, topk per pair."),
    fmt: str = typer.Option("auto", "--format", "-f", help=FORMAT_HELP),
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
    option: list[str] | None = typer.Option(None, "--option", help=OPTION_HELP),
    calibrated: bool = typer.Option(
        True, "--calibration/--no-calibration",
        help="Apply the model folder's label-prior calibration (calibration.json) when it has one.",
    ),
) -> None:
    """Score every pair with a causal LM: label probabilities and the top-k labels (the paper's beam).

    A trained cross-encoder, ONNX export or lexical model folder is scored by its own kind of scorer."""
    import dataclasses
    import time
    from functools import partial

    from lref.calibration import calibration_path
    from lref.data import default_scheme
    from lref.models.factory import build_scorer, scorer_spec
    from lref.models.scorer import ScorerConfig
    from lref.models.vllm_backend import BackendUnavailable, resolve_backend
    from lref.predictions import write_predictions
    from lref.sharding import (
        score_blocks,
        score_in_parallel,
        select_shard,
        shard_info_path,
        write_shard_info,
    )

    config = ScorerConfig(batch_size=batch_size, top_k=top_k, max_length=max_length, fast=not naive, progress=False,
                          num_threads=threads)
    spec = scorer_spec(model, scheme=scheme, default_scheme=default_scheme(fmt), config=config, calibrated=calibrated)
    label_scheme = spec.scheme
    if spec.config.label_bias is not None:
        typer.echo(f"applying the label calibration in {calibration_path(spec.folder)} (--no-calibration: raw "
                   "scores)", err=True)
    records = read_pairs(data, fmt, label_scheme.name, None, option)
    try:
        selected = select_shard(records, shard, block_size)
        engine = resolve_backend(backend)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--shard" if shard else "--backend") from None
    except BackendUnavailable as error:
        raise typer.BadParameter(str(error), param_hint="--backend") from None
    start = time.perf_counter()
    if engine == "vllm" and spec.kind == "llm":
        if workers > 1:
            raise typer.BadParameter(
                "vLLM uses the whole GPU; run one process per GPU with --shard instead", param_hint="--workers"
            )
        shown = dataclasses.replace(spec, config=dataclasses.replace(spec.config, progress=True))
        result = score_blocks(build_scorer(shown, backend="vllm"), selected, block_size, progress=True)
    else:
        result = score_in_parallel(partial(build_scorer, spec), selected, workers=workers, block_size=block_size,
                                   threads=threads, progress=True)
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
    fmt: str = typer.Option("auto", "--format", "-f", help=FORMAT_HELP),
    scheme: str | None = typer.Option(
        None, "--scheme", help="Label scheme preset; default: the one in the model's manifest, else the format's own."
    ),
    objective: str = typer.Option("weighted_f1", "--objective", help=_calibration_help("objective")),
    limit: float = typer.Option(3.0, "--limit", help=_calibration_help("limit")),
    step: float = typer.Option(0.1, "--step", help=_calibration_help("step")),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Pairs per forward pass."),
    option: list[str] | None = typer.Option(None, "--option", help=OPTION_HELP),
) -> None:
    """Fit a per-label logit bias on held-out labelled pairs; `lref predict` and `lref serve student` then apply it."""
    from lref.calibration import CalibrationConfig, calibration_path
    from lref.data import default_scheme
    from lref.models.calibrate import calibrate
    from lref.models.loading import read_manifest
    from lref.models.scorer import scheme_for_model

    try:
        config = CalibrationConfig(objective=objective, limit=limit, step=step)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    if not os.path.isdir(model):
        raise typer.BadParameter(f"{model} is not a folder (calibrate a model you trained)", param_hint="MODEL_DIR")
    label_scheme = scheme_for_model(read_manifest(model), scheme, default=default_scheme(fmt))
    records = read_pairs(data, fmt, label_scheme.name, None, option)
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
    fmt: str = typer.Option("auto", "--format", "-f", help=FORMAT_HELP),
    scheme: str | None = typer.Option(None, "--scheme", help=SCHEME_HELP),
    out: str | None = typer.Option(None, "--out", "-o", help="Also write the metrics as JSON to this file."),
    bootstrap: int = typer.Option(1000, "--bootstrap", min=0, help="Query-level bootstrap resamples for 95% CIs."),
    seed: int = typer.Option(0, "--seed", help="Bootstrap seed."),
    allow_missing: bool = typer.Option(
        False, "--allow-missing", help="Evaluate the ids both files share instead of failing on unmatched ids."
    ),
    option: list[str] | None = typer.Option(None, "--option", help=OPTION_HELP),
    baseline: str | None = typer.Option(
        None, "--baseline", "-b",
        help="A second prediction file for the same pairs: also print --pred's margin over it, with a paired "
        "query-level 95% CI (in --out as `paired`).",
    ),
) -> None:
    """Compare predictions with gold labels: accuracy beside the majority floor, F1s, confusion, agreement with the
    raters (Cohen's κ, quadratic-weighted κ, Spearman's ρ, NDCG@5/10, Krippendorff's α, agreed/disagreed pairs),
    query-level CIs."""
    from rich.console import Console

    from lref.data import default_scheme
    from lref.io import write_json
    from lref.labels import get_scheme
    from lref.metrics import evaluate, format_report, paired_difference
    from lref.predictions import read_predictions

    label_scheme = get_scheme(scheme) if scheme else default_scheme(fmt)
    records = read_pairs(gold, fmt, label_scheme.name, None, option)
    predictions = read_predictions(pred, label_scheme)
    result = evaluate(records, predictions, label_scheme, bootstrap=bootstrap, seed=seed, allow_missing=allow_missing)
    if baseline:
        if allow_missing or bootstrap < 1:
            raise typer.BadParameter("needs every pair predicted and --bootstrap of at least 1",
                                     param_hint="--baseline")
        paired = paired_difference(records, predictions, read_predictions(baseline, label_scheme), label_scheme,
                                   bootstrap=bootstrap, seed=seed)
        result["paired"] = {"baseline": baseline, **paired}
    Console().print(format_report(result, label_scheme))
    if baseline:
        parts = [f"{name} {100 * paired[name]:+.1f} pts [paired 95% CI {100 * paired['ci95'][name][0]:+.1f}, "
                 f"{100 * paired['ci95'][name][1]:+.1f}]"
                 for name in ("weighted_f1", "macro_f1", "accuracy", "over_estimate_share")]
        parts += [f"{name} {paired[name]:+.3f} [paired 95% CI {paired['ci95'][name][0]:+.3f}, "
                  f"{paired['ci95'][name][1]:+.3f}]"
                  for name in ("cohen_kappa", "quadratic_weighted_kappa") if name in paired["ci95"]]
        typer.echo(f"margin over {baseline}: " + "; ".join(parts))
    if out:
        write_json(out, result)
        typer.echo(f"metrics written to {out}")
