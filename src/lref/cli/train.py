"""`lref train sft | dpo`: fine-tune an LLM on the direct prompt, or de-bias it with DPO."""

from __future__ import annotations

import typer

from lref.cli.common import FORMAT_HELP, MATCH_HINTS_HELP, OPTION_HELP, SCHEME_HELP, read_pairs, train_app
from lref.cli.review import CORRECTIONS_HELP, corrected
from lref.config import field_help


def _sft_help(name: str) -> str:
    from lref.stages.sft import SFTStageConfig

    return field_help(SFTStageConfig, name)


@train_app.command("sft")
def train_sft_command(
    model: str = typer.Option("gemma-3-270m", "--model", "-m", help=_sft_help("model")),
    train: str = typer.Option(..., "--train", help="Labelled training pairs (a data file, or a dataset folder)."),
    eval_path: str | None = typer.Option(None, "--eval", help="Labelled pairs for the evaluation loss."),
    fmt: str = typer.Option("auto", "--format", "-f", help=FORMAT_HELP),
    scheme: str | None = typer.Option(None, "--scheme", help=SCHEME_HELP),
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
    match_hints: bool = typer.Option(False, "--match-hints", help=MATCH_HINTS_HELP),
    option: list[str] | None = typer.Option(None, "--option", help=OPTION_HELP),
    corrections: str | None = typer.Option(None, "--corrections", help=CORRECTIONS_HELP),
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
    train_records = read_pairs(train, fmt, scheme_name, None, option, match_hints)
    eval_records = read_pairs(eval_path, fmt, scheme_name, None, option, match_hints) if eval_path else None
    train_records, *rest = corrected(corrections, [train_records, *([eval_records] if eval_records else [])],
                                     scheme_name)
    eval_records = rest[0] if rest else None
    folder = train_sft(config, train_records, eval_records)
    typer.echo(str(folder))


def _dpo_help(name: str) -> str:
    from lref.stages.dpo import DPOStageConfig

    return field_help(DPOStageConfig, name)


@train_app.command("dpo")
def train_dpo_command(
    model: str = typer.Option(..., "--model", "-m", help=_dpo_help("model")),
    pool: str = typer.Option(..., "--pool", help="Labelled pairs to mine preference pairs from (file or folder)."),
    fmt: str = typer.Option("auto", "--format", "-f", help=FORMAT_HELP),
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
    option: list[str] | None = typer.Option(None, "--option", help=OPTION_HELP),
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
    records = read_pairs(pool, fmt, label_scheme.name, None, option)
    result = train_dpo(config, records)
    if str(result) == model:
        typer.echo(f"DPO skipped (too few preference pairs, see {out}/lref_manifest.json); model unchanged:", err=True)
    typer.echo(str(result))
