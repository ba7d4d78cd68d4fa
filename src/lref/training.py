"""What every trained stage (SFT, DPO, cross-encoders) sets up the same way around transformers' Trainer."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def prepare_device(config: Any) -> bool:
    """Apply `config.threads` and return whether to train on the CPU (default: unless CUDA is available).

    Refuses bf16 on the CPU: TRL defaults to bf16, which silently degrades CPU training.
    """
    import torch

    if getattr(config, "threads", None):
        torch.set_num_threads(config.threads)
    use_cpu = config.use_cpu if config.use_cpu is not None else not torch.cuda.is_available()
    if getattr(config, "bf16", False) and use_cpu:
        raise ValueError("bf16 mixed precision is only supported on a GPU here; train on the CPU in float32")
    return use_cpu


def resolve_precision(config: Any, use_cpu: bool) -> str:
    """Training precision, "bf16" (mixed) or "fp32", from a stage config's `bf16` field: True/False force it;
    None (auto) picks bf16 on a CUDA GPU that supports it and fp32 elsewhere: on the CPU, and on older GPUs, where
    fp16 would be the only option and overflows in Gemma."""
    import torch

    choice = getattr(config, "bf16", False)
    if choice is not None:
        return "bf16" if choice else "fp32"
    if use_cpu or not torch.cuda.is_available():
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp32"


def is_main_process() -> bool:
    """True on the process that writes shared outputs: rank 0 under `accelerate launch` / torchrun, else always."""
    import os

    return int(os.environ.get("RANK", "0")) == 0


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
