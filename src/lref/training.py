"""What every trained stage (SFT, DPO, cross-encoders) sets up the same way around transformers' Trainer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lref.device import resolve_precision

BF16_HELP = ("bfloat16 mixed precision: None (auto) = on a CPU with native bf16 (AVX512-BF16, AMX; about 2x faster "
             "there), float32 elsewhere, GPUs included (faster there for Gemma-3-270M); True forces it, False float32.")
"""The help text of every trained stage's `bf16` field."""


def training_arguments(config: Any, output_dir: str | Path, use_cpu: bool, **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for `TrainingArguments` (or a TRL subclass) from a stage config's common fields."""
    precision = resolve_precision(config, use_cpu)
    arguments = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=getattr(config, "grad_accum", 1),
        learning_rate=config.learning_rate,
        weight_decay=getattr(config, "weight_decay", 0.0),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        warmup_steps=config.warmup_ratio,  # transformers 5: a value below 1 is a fraction of the steps
        lr_scheduler_type="linear",
        logging_steps=config.logging_steps,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        seed=config.seed,
        use_cpu=use_cpu,
        bf16=precision == "bf16",
        fp16=False,
        dataloader_num_workers=0,
        report_to="none",
        disable_tqdm=not config.progress,
    )
    arguments.update(overrides)
    return arguments


def check_training_fields(config: Any, at_least_one: tuple[str, ...]) -> None:
    """The checks every trained stage's config shares: counts that must be >= 1 and a warm-up fraction in [0, 1)."""
    for name in at_least_one:
        if getattr(config, name) < 1:
            raise ValueError(f"{name} must be at least 1, not {getattr(config, name)}")
    if not 0 <= config.warmup_ratio < 1:
        raise ValueError(f"warmup_ratio must lie in [0, 1), not {config.warmup_ratio}")
