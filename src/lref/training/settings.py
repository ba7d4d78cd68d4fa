"""What every trainer (LoRA SFT, CoT stages, DPO, cross-encoders, the distilled student) sets up the same way.

`TrainingSettings` holds the optimisation and run settings and `LoraSettings` the adapter's; a trainer's config
inherits them (as TRL's `DPOConfig` extends `TrainingArguments`), so YAML keys and help texts stay the same
everywhere. A config that wants another default redeclares only the default with `with_default`, keeping the help
text:

    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class StudentSettings(TrainingSettings):
    ...     learning_rate: float = with_default("learning_rate", 5e-5)
    >>> StudentSettings().learning_rate, StudentSettings().epochs
    (5e-05, 1.0)
    >>> from lref.fingerprint import neutral_names
    >>> neutral_names(StudentSettings)
    ('resume', 'threads', 'logging_steps', 'progress')
"""

from __future__ import annotations

from dataclasses import MISSING, Field, dataclass, field, fields
from pathlib import Path
from typing import Any

from lref.device import resolve_precision
from lref.fingerprint import neutral_field

BF16_HELP = ("bfloat16 mixed precision: None (auto) = on a CPU with native bf16 (AVX512-BF16, AMX; about 2x faster "
             "there), float32 elsewhere, GPUs included (faster there for Gemma-3-270M); True forces it, False float32.")
"""The help text of every trained stage's `bf16` field."""


@dataclass
class TrainingSettings:
    """Optimisation and run settings shared by every trainer (`training_arguments` turns them into Trainer's)."""

    learning_rate: float = field(default=2e-4, metadata={"help": "Peak learning rate (linear decay)."})
    epochs: float = field(default=1.0, metadata={"help": "Training epochs; ignored when max_steps > 0."})
    max_steps: int = field(default=-1, metadata={"help": "Stop after this many optimizer steps (-1: run the epochs)."})
    batch_size: int = field(default=8, metadata={"help": "Examples per forward pass (training and evaluation)."})
    grad_accum: int = field(default=1, metadata={"help": "Forward passes accumulated per optimizer step."})
    max_length: int = field(
        default=512,
        metadata={
            "help": "Longest example in tokens. Longer pairs lose the middle of their product text; the instruction, "
            "the answer cue and the label are always kept."
        },
    )
    warmup_ratio: float = field(default=0.05, metadata={"help": "Fraction of the steps spent warming up the rate."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    save_steps: int = field(default=100, metadata={"help": "Write a resumable checkpoint every this many steps."})
    save_total_limit: int = field(default=2, metadata={"help": "Checkpoints kept on disk (the newest ones)."})
    seed: int = field(default=0, metadata={"help": "Seed for initialisation, shuffling and dropout."})
    resume: bool = neutral_field(
        False, "Continue from the last checkpoint in output_dir instead of starting anew."
    )
    threads: int | None = neutral_field(None, "CPU threads for torch (default: torch's choice).")
    use_cpu: bool | None = field(
        default=None, metadata={"help": "Train on the CPU (default: CPU unless a CUDA device is available)."}
    )
    bf16: bool | None = field(default=None, metadata={"help": BF16_HELP})
    logging_steps: int = neutral_field(10, "Log the training loss every this many steps.")
    progress: bool = neutral_field(True, "Show progress bars.")


@dataclass
class LoraSettings:
    """The LoRA adapter a LoRA trainer puts on its base model."""

    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA branch."})
    target_modules: str | list[str] = field(
        default="all-linear",
        metadata={
            "help": "Modules that get LoRA: 'all-linear' (every linear layer but the LM head; beat attention-only "
            "in the design probes) or a list of module names such as ['q_proj', 'v_proj']."
        },
    )


def _settings_field(name: str) -> Field:
    for settings_cls in (TrainingSettings, LoraSettings):
        for candidate in fields(settings_cls):
            if candidate.name == name:
                return candidate
    raise KeyError(f"no training or LoRA setting named {name!r}")


def with_default(name: str, default: Any = MISSING, *, help: str | None = None, default_factory: Any = MISSING) -> Any:
    """The field `name` of `TrainingSettings` or `LoraSettings` redeclared with another default, keeping its help
    text (or `help`, when given) and its output-neutral flag."""
    metadata = dict(_settings_field(name).metadata)
    if help is not None:
        metadata["help"] = help
    return field(default=default, default_factory=default_factory, metadata=metadata)


def settings_values(config: Any, *settings_classes: type) -> dict[str, Any]:
    """The values of `config`'s fields declared by `settings_classes` (default: `TrainingSettings` and
    `LoraSettings`, the ones `config` has), to build another trainer's config from them."""
    classes = settings_classes or tuple(cls for cls in (TrainingSettings, LoraSettings) if isinstance(config, cls))
    return {f.name: getattr(config, f.name) for cls in classes for f in fields(cls)}


def idle_warmup(args: Any, n_examples: int) -> str | None:
    """Why a run of `n_examples` under `TrainingArguments` `args` would not move the weights, or None. The linear
    warmup starts at learning rate 0, so a run whose every optimizer step is a warmup step changes nothing (e.g. one
    step of 8 examples with any warmup_ratio above 0)."""
    import math

    per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps
    epoch_steps = math.ceil(n_examples / per_step)
    total = args.max_steps if args.max_steps > 0 else math.ceil(epoch_steps * args.num_train_epochs)
    warmup = args.get_warmup_steps(total)
    if total < 1 or warmup < total:
        return None
    return (f"all {total} optimizer step(s) are warmup steps, where the learning rate climbs from 0, so the model does "
            f"not change: give it more examples or epochs, or warmup_ratio 0")


def training_arguments(config: Any, output_dir: str | Path, use_cpu: bool, **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for `TrainingArguments` (or a TRL subclass) from a config's `TrainingSettings`."""
    precision = resolve_precision(config, use_cpu)
    arguments = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
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
    if isinstance(getattr(config, "target_modules", None), tuple):
        config.target_modules = list(config.target_modules)


__all__ = ["BF16_HELP", "LoraSettings", "TrainingSettings", "check_training_fields", "idle_warmup", "settings_values",
           "training_arguments", "with_default"]
