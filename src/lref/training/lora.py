"""The LoRA completion loop: fine-tune a causal LM with LoRA on prompt -> completion examples.

`train_sft_examples` takes `TextExample`s (a prompt and the completion to write, e.g. a chain of thought ending in
the answer cue and the label) and trains them on `transformers.Trainer` with one override, `compute_loss`
(`CompletionTrainer`, whose loss is `lref.training.losses.completion_loss`: LM head at label positions only, shared
instruction prefix). TRL's `SFTTrainer` is not used: its fused LM head projects every position off Triton devices.
`train_direct_sft` builds the direct examples (direct prompt -> label) of labelled records and calls it; the SFT
stage, the selector backbones and the CoT stages all train through here.

    >>> LoraTrainingConfig(output_dir="runs/sft").lora_r
    16
"""

from __future__ import annotations

import functools
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lref.data.records import DataError, Record
from lref.data.validation import validate_records
from lref.device import prepare_device
from lref.fingerprint import data_hash, library_versions
from lref.io import MANIFEST_NAME, write_json
from lref.labels import CLASS_BALANCE, class_weights, get_scheme
from lref.models.loading import load_causal_lm, read_manifest
from lref.models.zoo import stored_model_reference
from lref.prompts import PROMPT_VERSION, label_token_ids, match_hint_manifest, records_for_model
from lref.training.examples import (
    PadCollator,
    TextExample,
    build_example_dataset,
    direct_example,
    examples_hash,
    prefix_grouped_order,
)
from lref.training.losses import completion_loss, forward_replaced
from lref.training.run_guard import RunGuard
from lref.training.settings import (
    LoraSettings,
    TrainingSettings,
    check_training_fields,
    idle_warmup,
    training_arguments,
    with_default,
)

logger = logging.getLogger(__name__)


@dataclass
class LoraTrainingConfig(LoraSettings, TrainingSettings):
    """What the LoRA completion loop needs: the training and LoRA settings, the model, the labels and the loss."""

    model: str = field(
        default="gemma-3-270m",
        metadata={"help": "Base model: a zoo name, an HF folder, or an lref adapter folder (merged before training)."},
    )
    scheme: str = field(default="graded3", metadata={"help": "Label scheme (preset name) the records are labelled in."})
    output_dir: str = field(
        default="runs/sft",
        metadata={"help": "Folder for the final adapter, tokenizer and manifest; checkpoints go to its checkpoints/."},
    )
    eval_steps: int = field(
        default=0, metadata={"help": "Evaluate every this many steps when eval records are given (0: only at the end)."}
    )
    class_balance: str = field(
        default="none",
        metadata={
            "help": "Per-example loss weights by label frequency: 'none', 'sqrt' (square root of inverse frequency) "
            "or 'inverse' (inverse frequency); weights average 1 over the training set."
        },
    )
    soft_labels: bool = field(
        default=False,
        metadata={
            "help": "Train toward the raters' mean where a record carries one (raw_score, on the scheme's ratings): "
            "the label's first token is shared between the two grades that bracket it, by closeness (graded3: 2.67 "
            "is 0.67 Exact, 0.33 Partial). Records without a raw score keep their label."
        },
    )
    logits_at_labels_only: bool = field(
        default=True,
        metadata={"help": "Apply the LM head only where a completion token is predicted (same loss, much faster)."},
    )
    seed: int = with_default("seed", 0, help="Seed for LoRA initialisation, shuffling and dropout.")
    share_prefix: bool = field(
        default=True,
        metadata={
            "help": "Run the instruction prefix once per batch (with gradients) and share its KV cache across the "
            "batch's pairs; same loss and gradients, less compute. Batches whose prefixes differ take the ordinary "
            "path."
        },
    )

    def __post_init__(self) -> None:
        if self.class_balance not in CLASS_BALANCE:
            raise ValueError(f"class_balance must be one of {', '.join(CLASS_BALANCE)}, not {self.class_balance!r}")
        check_training_fields(self, ("lora_r", "batch_size", "grad_accum", "save_steps", "logging_steps", "max_length"))


@functools.cache
def completion_trainer_class():
    """`CompletionTrainer`: transformers' `Trainer` with `completion_loss` (built on first use: transformers is
    imported only then)."""
    from transformers import Trainer

    class CompletionTrainer(Trainer):
        """`Trainer` whose loss is `completion_loss` (weighted, LM head only at label positions if asked)."""

        # The loss is divided by the token count of the whole accumulated batch (`num_items_in_batch`), or by the
        # local count times the accumulation steps, so Trainer must not divide it again.
        loss_is_scaled_for_ga = True

        def __init__(self, *args, logits_at_labels_only: bool = True, share_prefix: bool = True, **kwargs):
            super().__init__(*args, **kwargs)
            self.logits_at_labels_only = logits_at_labels_only
            self.share_prefix = share_prefix

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            import torch

            inner = self.accelerator.unwrap_model(model)
            num_items = num_items_in_batch
            if num_items is None:
                local = int((inputs["labels"][:, 1:] != -100).sum())
                steps = self.current_gradient_accumulation_steps if inner.training else 1
                num_items = max(local, 1) * steps

            def loss_forward(**batch):
                # The replaced forward bypasses accelerate's autocast wrapper, so mixed precision is applied here.
                with torch.autocast(inputs["input_ids"].device.type, torch.bfloat16, enabled=self.args.bf16):
                    return completion_loss(
                        inner,
                        batch,
                        logits_at_labels_only=self.logits_at_labels_only,
                        share_prefix=self.share_prefix,
                        num_items=num_items,
                    )

            # DDP, FSDP and DeepSpeed sync gradients (or gather sharded weights) only around their own forward
            # call, so the whole loss (prefix pass included) runs as the model's forward for this one call.
            with forward_replaced(inner, loss_forward):
                loss, _ = model(**inputs)
            if num_items_in_batch is not None and self.args.average_tokens_across_devices and self.args.world_size > 1:
                # `num_items_in_batch` counts every process's tokens while DDP averages the gradients over processes.
                loss = loss * self.accelerator.num_processes
            return (loss, {"loss": loss}) if return_outputs else loss

    return CompletionTrainer


def train_direct_sft(
    config: LoraTrainingConfig,
    train_records: Sequence[Record],
    eval_records: Sequence[Record] | None = None,
    *,
    callbacks: list | None = None,
    stage: str = "sft",
) -> Path:
    """Fine-tune `config.model` with LoRA on labelled records (direct prompt -> label) and return the adapter folder.

    The folder holds the PEFT adapter, the tokenizer and `lref_manifest.json`; `lref.models.loading.load_causal_lm`
    loads it back (base model plus adapter). `callbacks` are extra `transformers.TrainerCallback`s.
    """
    scheme = get_scheme(config.scheme)
    # continuing an adapter trained with match hints: the records read as they did for it
    start = read_manifest(config.model) if Path(config.model).is_dir() else None
    train_records = records_for_model(validate_records(train_records, scheme, "training"), start)
    eval_records = records_for_model(validate_records(eval_records, scheme, "evaluation"), start) if eval_records \
        else None
    soft = config.soft_labels
    return train_sft_examples(
        config,
        [direct_example(r, scheme, soft) for r in train_records],
        [direct_example(r, scheme, soft) for r in eval_records] if eval_records else None,
        callbacks=callbacks,
        train_hash=data_hash(train_records) + ("+soft-labels" if soft else ""),
        stage=stage,
        manifest_extra=match_hint_manifest(train_records),
    )


def train_sft_examples(
    config: LoraTrainingConfig,
    train_examples: Sequence[TextExample],
    eval_examples: Sequence[TextExample] | None = None,
    *,
    callbacks: list | None = None,
    train_hash: str | None = None,
    stage: str = "sft",
    manifest_extra: dict[str, Any] | None = None,
    group_by_prefix: bool = False,
) -> Path:
    """Fine-tune `config.model` with LoRA on prompt -> completion examples and return the adapter folder.

    The loss covers each completion and its EOS. Batches whose rows share one instruction prefix take the
    shared-prefix path; mixed batches (e.g. direct and CoT examples) the plain forward. `group_by_prefix` orders the
    examples so that every full batch holds one prefix (`prefix_grouped_order`, fixed for all epochs) instead of
    shuffling them. `train_hash` identifies the training data for resuming (default: `examples_hash`); `stage` and
    `manifest_extra` go into the manifest.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import TrainingArguments, set_seed

    scheme = get_scheme(config.scheme)
    if not train_examples:
        raise DataError("no training examples: SFT needs at least one")
    for example in [*train_examples, *(eval_examples or [])]:
        if example.label not in scheme.labels:
            raise DataError(f"example {example.id!r}: label {example.label!r} is not a label of scheme {scheme.name!r}")
    output_dir = Path(config.output_dir)
    guard = RunGuard(output_dir, config.resume)
    train_hash = train_hash or examples_hash(train_examples)
    guard.begin({"data_hash": train_hash}, n_train=len(train_examples), config=asdict(config))

    use_cpu = prepare_device(config)

    set_seed(config.seed)
    model, tokenizer, _ = load_causal_lm(config.model, merge_adapter=True, dtype=torch.float32)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    first_token_ids = dict(zip(scheme.labels, label_token_ids(tokenizer, scheme)))  # fails when two labels share one
    model.config.use_cache = False
    model = get_peft_model(
        model,
        LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=config.target_modules,
            task_type="CAUSAL_LM",
        ),
    )

    if group_by_prefix:
        order = prefix_grouped_order(train_examples, config.batch_size, config.seed)
        train_examples = [train_examples[i] for i in order]
    weights = class_weights([e.label for e in train_examples], scheme, config.class_balance)
    train_dataset = build_example_dataset(tokenizer, train_examples, config.max_length, weights, first_token_ids)
    eval_dataset = (build_example_dataset(tokenizer, eval_examples, config.max_length, None, first_token_ids)
                    if eval_examples else None)

    evaluate_during = eval_dataset is not None and config.eval_steps > 0
    args = TrainingArguments(
        **training_arguments(
            config,
            guard.checkpoint_dir,
            use_cpu,
            eval_strategy="steps" if evaluate_during else "no",
            eval_steps=config.eval_steps if evaluate_during else None,
            prediction_loss_only=True,
            label_names=["labels"],
            remove_unused_columns=False,
            train_sampling_strategy="sequential" if group_by_prefix else "random",
        )
    )
    trainer = completion_trainer_class()(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=PadCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
        callbacks=callbacks,
        logits_at_labels_only=config.logits_at_labels_only,
        share_prefix=config.share_prefix,
    )

    idle = idle_warmup(args, len(train_dataset))
    if idle:
        logger.warning("%s: %s", stage, idle)
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=guard.resume_from)
    wall = time.perf_counter() - started
    resumed_from = guard.resumed_step
    steps_run = result.global_step - resumed_from
    train_losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    metrics: dict[str, Any] = {
        "final_loss": train_losses[-1] if train_losses else result.training_loss,
        "mean_loss": result.training_loss,
        "steps": result.global_step,
        "resumed_from_step": resumed_from,
        "steps_this_run": steps_run,
        "epochs": trainer.state.epoch,
        "wall_time_s": round(wall, 2),
        "s_per_step": round(wall / steps_run, 4) if steps_run > 0 else None,
        **({"idle_warmup": idle} if idle else {}),
    }
    if eval_dataset is not None:
        metrics["eval_loss"] = trainer.evaluate()["eval_loss"]

    # Under `accelerate launch`, every process reaches this point; only the first writes, the others wait for it.
    if not trainer.is_world_process_zero():
        trainer.accelerator.wait_for_everyone()
        return output_dir
    guard.save(model, tokenizer)
    manifest = {
        "kind": "lora-adapter",
        "stage": stage,
        "base_model": stored_model_reference(config.model),
        "scheme": {"name": scheme.name, "labels": list(scheme.labels)},
        "prompt_version": PROMPT_VERSION,
        "data_hash": train_hash,
        "n_train": len(train_examples),
        "n_eval": len(eval_examples) if eval_examples else 0,
        "label_counts": dict(Counter(e.label for e in train_examples)),
        "class_weights": weights,
        "config": asdict(config),
        "train_metrics": metrics,
        "precision": "bf16" if args.bf16 else "fp32",
        "versions": library_versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **(manifest_extra or {}),
    }
    write_json(output_dir / MANIFEST_NAME, manifest)
    logger.info("%s adapter written to %s (%d steps, final loss %.4f)", stage, output_dir, result.global_step,
                metrics["final_loss"])
    trainer.accelerator.wait_for_everyone()
    return output_dir


__all__ = ["LoraTrainingConfig", "completion_trainer_class", "train_direct_sft", "train_sft_examples"]
