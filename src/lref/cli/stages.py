"""The LREF stages one at a time: `lref select` (data selection), `lref cot` (Multi-CoT tuning), `lref cot-predict`,
`lref teach` (teacher explanations) and `lref distill` (an LLM into a small cross-encoder)."""

from __future__ import annotations

import typer

from lref.cli.common import FORMAT_HELP, MATCH_HINTS_HELP, OPTION_HELP, SCHEME_HELP, app, read_pairs
from lref.cli.review import CORRECTIONS_HELP, corrected
from lref.config import field_help


def _select_help(name: str) -> str:
    from lref.stages.select import SelectConfig

    return field_help(SelectConfig, name)


@app.command("select")
def select_command(
    pool: str = typer.Option(
        ..., "--pool", help="The labelled pool to select from (a data file, or a dataset folder)."
    ),
    out_dir: str = typer.Option(..., "--out-dir", "-o", help=_select_help("output_dir")),
    fmt: str = typer.Option("auto", "--format", "-f", help=FORMAT_HELP),
    scheme: str | None = typer.Option(None, "--scheme", help=SCHEME_HELP),
    backbone: str = typer.Option("llm", "--backbone", help=_select_help("backbone")),
    model: str | None = typer.Option(None, "--model", "-m", help=_select_help("model")),
    im_sample: int = typer.Option(2000, "--im-sample", min=1, help=_select_help("im_sample")),
    ci_sample: int = typer.Option(2000, "--ci-sample", min=1, help=_select_help("ci_sample")),
    ms_sample: int = typer.Option(2000, "--ms-sample", min=1, help=_select_help("ms_sample")),
    ci_oversample: bool = typer.Option(True, "--ci-oversample/--no-ci-oversample", help=_select_help("ci_oversample")),
    confusion_source: str = typer.Option("im_confusion", "--confusion-source", help=_select_help("confusion_source")),
    confusion_slice: int = typer.Option(1000, "--confusion-slice", min=1, help=_select_help("confusion_slice")),
    ms_rule: str = typer.Option("differs", "--ms-rule", help=_select_help("ms_rule")),
    ms_method: str = typer.Option("supervisor", "--ms-method", help=_select_help("ms_method")),
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
    match_hints: bool = typer.Option(False, "--match-hints", help=MATCH_HINTS_HELP),
    option: list[str] | None = typer.Option(None, "--option", help=OPTION_HELP),
    corrections: str | None = typer.Option(None, "--corrections", help=CORRECTIONS_HELP),
) -> None:
    """Stage 1: keep the pairs that are learnable (CI), not easy (IM) and not likely mislabelled (MS)."""
    from rich.console import Console

    from lref.data import default_scheme
    from lref.stages.select import (
        FLAGGED_NAME,
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
            ms_method=ms_method,
            label_floor=label_floor, min_fraction=min_fraction, folds=folds, ensemble_rest=ensemble_rest,
            head_share=head_share, torso_share=torso_share, epochs=epochs, max_steps=max_steps, learning_rate=lr,
            batch_size=batch_size, max_length=max_length, score_batch_size=score_batch_size, seed=seed,
            threads=threads,
        )
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    [records] = corrected(corrections, [read_pairs(pool, fmt, scheme_name, None, option, match_hints)], scheme_name)
    teacher = None
    if confusion_source == "teacher" and ms_method == "supervisor":  # the offline rules teacher; others via Python
        from lref.teachers.rules import RulesTeacher

        teacher = RulesTeacher().fit(records).confusable
    result = select(config, records, teacher=teacher)
    console = Console()
    console.print(funnel_table(result.report))
    console.print(f"selected pairs: {result.output_dir / SELECTED_NAME}; report: {result.output_dir / REPORT_NAME}; "
                  f"pairs flagged as likely mislabelled ({len(result.flagged)}): {result.output_dir / FLAGGED_NAME}")


def _distill_help(name: str) -> str:
    from lref.stages.distill import DistillConfig

    return field_help(DistillConfig, name)


@app.command("distill")
def distill_command(
    teacher: str = typer.Option("", "--teacher", "-t", help=_distill_help("teacher")),
    teacher_labels: str = typer.Option("", "--teacher-labels", help=_distill_help("teacher_labels")),
    train: str | None = typer.Option(None, "--train", help="Labelled training pairs (a data file or dataset folder)."),
    unlabeled: str | None = typer.Option(None, "--unlabeled", help="Pairs without human labels (labels ignored)."),
    out: str = typer.Option(..., "--output-dir", "-o", help=_distill_help("output_dir")),
    fmt: str = typer.Option("auto", "--format", "-f", help=FORMAT_HELP),
    scheme: str | None = typer.Option(
        None, "--scheme", help="Label scheme preset; default: the one in the teacher's manifest, else the format's own."
    ),
    student: str = typer.Option("minilm-l6", "--student", "-s", help=_distill_help("student")),
    temperature: float = typer.Option(2.0, "--temperature", help=_distill_help("temperature")),
    ce_weight: float = typer.Option(0.5, "--ce-weight", help=_distill_help("ce_weight")),
    lexical_features: bool = typer.Option(False, "--lexical-features", help=_distill_help("lexical_features")),
    lexical_prior: bool = typer.Option(False, "--lexical-prior", help=_distill_help("lexical_prior")),
    feature_learning_rate: float = typer.Option(
        1e-3, "--feature-lr", min=0.0, help=_distill_help("feature_learning_rate")
    ),
    encoder_layers: int | None = typer.Option(
        None, "--encoder-layers", min=1, help=_distill_help("encoder_layers")
    ),
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
    option: list[str] | None = typer.Option(None, "--option", help=OPTION_HELP),
) -> None:
    """Distil an LLM teacher into a small cross-encoder student; prints the student folder."""
    from lref.data import default_scheme
    from lref.models.loading import read_manifest
    from lref.models.scorer import scheme_for_model
    from lref.models.zoo import resolve_model
    from lref.stages.distill import DistillConfig, distill

    if train is None and unlabeled is None:
        raise typer.BadParameter("give --train, --unlabeled or both", param_hint="--train")
    if not teacher and not teacher_labels:
        raise typer.BadParameter("give the teacher model (--teacher) or its labels of the pool (--teacher-labels)",
                                 param_hint="--teacher")
    manifest = read_manifest(resolve_model(teacher)) if teacher else None
    label_scheme = scheme_for_model(manifest, scheme, default=default_scheme(fmt))
    try:
        config = DistillConfig(
            teacher=teacher, teacher_labels=teacher_labels, student=student, scheme=label_scheme.name,
            output_dir=out, temperature=temperature, lexical_features=lexical_features, lexical_prior=lexical_prior,
            feature_learning_rate=feature_learning_rate, encoder_layers=encoder_layers, ce_weight=ce_weight,
            teacher_calibration=teacher_calibration,
            candidates_per_query=candidates_per_query,
            epochs=epochs, max_steps=max_steps, learning_rate=lr, batch_size=batch_size, max_length=max_length,
            teacher_batch_size=teacher_batch_size, teacher_max_length=teacher_max_length, save_steps=save_steps,
            seed=seed, threads=threads, resume=resume,
        )
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    records = read_pairs(train, fmt, label_scheme.name, None, option) if train else []
    extra = read_pairs(unlabeled, fmt, label_scheme.name, None, option) if unlabeled else None
    typer.echo(str(distill(config, records, extra)))



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
    fmt: str = typer.Option("auto", "--format", "-f", help=FORMAT_HELP),
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
    option: list[str] | None = typer.Option(None, "--option", help=OPTION_HELP),
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
    records = read_pairs(train, fmt, label_scheme.name, None, option)
    pool = read_pairs(direct_pool, fmt, label_scheme.name, None, option) if direct_pool else None
    for task, folder in train_cot(config, records, direct_pool=pool).items():
        typer.echo(f"{task}\t{folder}")


@app.command("cot-predict")
def cot_predict_command(
    model: str = typer.Option(..., "--model", "-m", help="A CoT-tuned model: an lref adapter folder (or any LM)."),
    data: str = typer.Option(..., "--data", "-d", help="Pairs to judge (a data file, or a dataset folder)."),
    out: str = typer.Option(..., "--out", "-o", help="Prediction file (.jsonl): id, label, probs, topk per pair."),
    fmt: str = typer.Option("auto", "--format", "-f", help=FORMAT_HELP),
    scheme: str | None = typer.Option(
        None, "--scheme", help="Label scheme preset; default: the one in the model's manifest, else the format's own."
    ),
    task: str = typer.Option("ee", "--task", help="Prompt to reason with: ee (expert analysis) or ra (rules)."),
    rules: str | None = typer.Option(None, "--rules", help="Rules for --task ra; default: the model's RA rules."),
    max_new_tokens: int = typer.Option(160, "--max-new-tokens", min=1, help="Most tokens generated per pair."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Pairs generated together."),
    texts: str | None = typer.Option(
        None, "--cot-texts", help="Also write the generated reasoning (.jsonl: id, text)."
    ),
    threads: int | None = typer.Option(None, "--threads", min=1, help="torch threads (default: torch's own)."),
    option: list[str] | None = typer.Option(None, "--option", help=OPTION_HELP),
) -> None:
    """CoT inference: generate the reasoning, parse the label; the direct scorer's label where none parses."""
    from lref.data import default_scheme
    from lref.io import write_jsonl
    from lref.models.generation import generate_predictions
    from lref.models.loading import read_manifest
    from lref.models.scorer import scheme_for_model
    from lref.models.zoo import resolve_model
    from lref.predictions import write_predictions

    if threads:
        import torch

        torch.set_num_threads(threads)
    folder = resolve_model(model)
    label_scheme = scheme_for_model(read_manifest(folder), scheme, default=default_scheme(fmt))
    records = read_pairs(data, fmt, label_scheme.name, None, option)
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
    fmt: str = typer.Option("auto", "--format", "-f", help=FORMAT_HELP),
    scheme: str | None = typer.Option(None, "--scheme", help=SCHEME_HELP),
    option: list[str] | None = typer.Option(None, "--option", help=OPTION_HELP),
) -> None:
    """Explain labelled pairs with a teacher (EE, RA or DR) into JSONL, one Explanation per pair."""
    from pathlib import Path

    from lref.data import default_scheme
    from lref.io import write_jsonl
    from lref.labels import get_scheme
    from lref.prompts.cot import TASKS
    from lref.prompts.rules import load_rule_set
    from lref.sharding import select_shard, write_shard_info
    from lref.teachers.cache import teach, teacher_key
    from lref.teachers.decisions import wrong_decisions
    from lref.teachers.registry import TEACHERS, make_teacher

    if task not in TASKS:
        raise typer.BadParameter(f"choose one of {', '.join(TASKS)}", param_hint="--task")
    if teacher not in TEACHERS:
        raise typer.BadParameter(f"unknown teacher {teacher!r}: choose one of {', '.join(TEACHERS)}",
                                 param_hint="--teacher")
    label_scheme = get_scheme(scheme) if scheme else default_scheme(fmt)
    rule_set = load_rule_set(rules, label_scheme) if task == "ra" else None
    records = read_pairs(data, fmt, label_scheme.name, None, option)
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
        wrong = wrong_decisions(selected, label_scheme, over_estimate_share, seed, plan_records=records)
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
