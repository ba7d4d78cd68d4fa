"""A BERT-class cross-encoder over the scheme's labels: (query, product text) -> K logits.

The fast selector backbone for large pools (stage 1) and the base of the deployable student. Training is
`transformers.Trainer` on `AutoModelForSequenceClassification(num_labels=len(scheme))`; the folder written holds the
model, its tokenizer and `lref_manifest.json` (scheme, base model, data hash, config, metrics).

The loss is pluggable: `train_cross_encoder(..., loss_fn=...)` takes any `loss_fn(logits, batch) -> scalar`, and each
example may carry a target distribution (`targets=`, N x K), which the collator stacks into `batch["targets"]`. The
default loss, `label_loss`, is the (optionally class-weighted) cross-entropy on the hard labels and ignores targets.

    >>> from lref.models.cross_encoder import CrossEncoderConfig
    >>> CrossEncoderConfig(output_dir="runs/ce").model
    'minilm-l6'
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from lref.data.records import DataError, Record
from lref.device import prepare_device, use_bf16
from lref.labels import LabelScheme, get_scheme
from lref.models.scorer import ScorerConfig, ScoreResult, for_model, scheme_for_model
from lref.prompts import match_hint_manifest, product_fields, with_match_hints
from lref.training import BF16_HELP, check_training_fields, training_arguments

logger = logging.getLogger(__name__)

KIND = "cross-encoder"
LossFn = Callable[[Any, dict[str, Any]], Any]
"""loss_fn(logits N x K, batch) -> scalar tensor; the batch holds labels, weights and, when given, targets."""


@dataclass
class CrossEncoderConfig:
    """Settings of cross-encoder training. Every field's help text can feed a command line (`lref.config.field_help`)."""

    model: str = field(
        default="minilm-l6", metadata={"help": "Base encoder: a zoo name (minilm-l6, mpnet-base) or an HF folder."}
    )
    scheme: str = field(default="graded3", metadata={"help": "Label scheme (preset name) the records are labelled in."})
    output_dir: str = field(
        default="runs/cross-encoder",
        metadata={"help": "Folder for the model, tokenizer and manifest; checkpoints go to its checkpoints/."},
    )
    learning_rate: float = field(default=5e-5, metadata={"help": "Peak learning rate (linear decay)."})
    epochs: float = field(default=1.0, metadata={"help": "Training epochs; ignored when max_steps > 0."})
    max_steps: int = field(default=-1, metadata={"help": "Stop after this many optimizer steps (-1: run the epochs)."})
    batch_size: int = field(default=16, metadata={"help": "Pairs per optimizer step."})
    max_length: int = field(default=128, metadata={"help": "Most tokens per (query, product) pair; the product is cut."})
    warmup_ratio: float = field(default=0.1, metadata={"help": "Fraction of the steps spent warming up the rate."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay."})
    class_balance: str = field(
        default="none",
        metadata={"help": "Per-example loss weights by label frequency: 'none', 'sqrt' or 'inverse' (as in SFT)."},
    )
    soft_labels: bool = field(
        default=False,
        metadata={"help": "Train toward the raters' mean where a record carries one (raw_score), shared between the "
                  "two grades that bracket it, as in SFT; records without a raw score keep their label."},
    )
    save_steps: int = field(default=200, metadata={"help": "Write a resumable checkpoint every this many steps."})
    save_total_limit: int = field(default=1, metadata={"help": "Checkpoints kept on disk (the newest ones)."})
    resume: bool = field(
        default=False, metadata={"help": "Continue from the last checkpoint in output_dir instead of starting anew."}
    )
    seed: int = field(default=0, metadata={"help": "Seed for the classifier head, shuffling and dropout."})
    threads: int | None = field(default=None, metadata={"help": "CPU threads for torch (default: torch's choice)."})
    use_cpu: bool | None = field(
        default=None, metadata={"help": "Train on the CPU (default: CPU unless a CUDA device is available)."}
    )
    bf16: bool | None = field(default=None, metadata={"help": BF16_HELP})
    logging_steps: int = field(default=20, metadata={"help": "Log the training loss every this many steps."})
    progress: bool = field(default=True, metadata={"help": "Show progress bars."})

    def __post_init__(self) -> None:
        from lref.labels import CLASS_BALANCE

        if self.class_balance not in CLASS_BALANCE:
            raise ValueError(f"class_balance must be one of {', '.join(CLASS_BALANCE)}, not {self.class_balance!r}")
        check_training_fields(self, ("batch_size", "save_steps", "logging_steps", "max_length"))


def pair_texts(record: Record) -> tuple[str, str]:
    """The two segments the encoder reads: the query, and the product text the LLM prompt shows."""
    return record.query, product_fields(record)


def has_label(record: Record) -> bool:
    return record.label is not None and bool(str(record.label).strip())


def label_loss(logits, batch: dict[str, Any]):
    """Cross-entropy on the hard labels, weighted per example when the batch has `weights` (mean over the batch)."""
    return _weighted_mean(logits, batch["labels"], batch)


def rating_loss(logits, batch: dict[str, Any]):
    """Cross-entropy on the raters' spread (`targets`: each pair's `rating_target`, one-hot without a raw score),
    weighted as `label_loss`."""
    return _weighted_mean(logits, batch["targets"], batch)


def _weighted_mean(logits, targets, batch: dict[str, Any]):
    import torch.nn.functional as F

    loss = F.cross_entropy(logits.float(), targets, reduction="none")
    weights = batch.get("weights")
    if weights is not None:
        loss = loss * weights.to(loss.dtype)
    return loss.mean()


class EncoderCollator:
    """Pads the token fields with the tokenizer and stacks `labels`, `weights` and (when present) `targets`."""

    TOKEN_KEYS = ("input_ids", "attention_mask", "token_type_ids")

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, batch: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        tokens = [{k: example[k] for k in self.TOKEN_KEYS if k in example} for example in batch]
        out = dict(self.tokenizer.pad(tokens, return_tensors="pt"))
        out["labels"] = torch.tensor([example["labels"] for example in batch], dtype=torch.long)
        out["weights"] = torch.tensor([float(example.get("weight", 1.0)) for example in batch])
        if all("targets" in example for example in batch):
            out["targets"] = torch.tensor([example["targets"] for example in batch], dtype=torch.float32)
        return out


def _make_trainer_class():
    from transformers import Trainer

    class CrossEncoderTrainer(Trainer):
        """`Trainer` whose loss is `loss_fn(logits, batch)` (default: `label_loss`)."""

        def __init__(self, *args, loss_fn: LossFn = label_loss, **kwargs):
            super().__init__(*args, **kwargs)
            self.loss_fn = loss_fn

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            model_inputs = {k: inputs[k] for k in EncoderCollator.TOKEN_KEYS if k in inputs}
            outputs = model(**model_inputs)
            loss = self.loss_fn(outputs.logits, inputs)
            return (loss, outputs) if return_outputs else loss

    return CrossEncoderTrainer


def _rating_targets(records: Sequence[Record], scheme: LabelScheme) -> np.ndarray:
    """N x K soft targets (scheme order): each record's `rating_target`, or its label one-hot without a raw score."""
    from lref.stages.sft import rating_target

    targets = np.zeros((len(records), len(scheme)), dtype=np.float32)
    for row, record in enumerate(records):
        for label, weight in (rating_target(record, scheme) or {record.label: 1.0}).items():
            targets[row, scheme.index(label)] = weight
    return targets


def _tokenize(tokenizer, records: Sequence[Record], scheme: LabelScheme, max_length: int):
    queries, products = zip(*(pair_texts(r) for r in records)) if records else ((), ())
    encoded = tokenizer(list(queries), list(products), truncation="only_second", max_length=max_length)
    keys = [k for k in EncoderCollator.TOKEN_KEYS if k in encoded]
    return [{k: encoded[k][i] for k in keys} for i in range(len(records))]


def train_cross_encoder(
    config: CrossEncoderConfig,
    records: Sequence[Record],
    eval_records: Sequence[Record] | None = None,
    *,
    targets: np.ndarray | None = None,
    loss_fn: LossFn = label_loss,
    callbacks: list | None = None,
) -> Path:
    """Fine-tune `config.model` as a K-way classifier on labelled records and return the model folder.

    `targets` (N x K, scheme order, optional) rides along in every batch as `batch["targets"]` for a `loss_fn` that
    uses it; the default loss does not. With `targets`, records without a label are allowed (distillation): their
    `labels` entry is `IGNORE_LABEL` (-100), which `label_loss` and `soft_label_loss` leave out of the cross-entropy.
    """
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        TrainingArguments,
        set_seed,
    )

    from lref.data.validation import validate_records
    from lref.fingerprint import data_hash, library_versions
    from lref.io import write_json
    from lref.labels import class_weights
    from lref.models.distill_loss import IGNORE_LABEL
    from lref.models.loading import MANIFEST_NAME
    from lref.models.zoo import resolve_model, stored_model_reference
    from lref.stages.sft import (
        CHECKPOINT_DIR,
        RUN_FILE,
        _ExampleDataset,
        last_checkpoint,
        trainer_state_step,
    )

    scheme = get_scheme(config.scheme)
    if config.soft_labels and (targets is not None or loss_fn is not label_loss):
        raise ValueError("soft_labels sets the targets and the loss itself; give neither with it")
    if targets is not None and records:  # a soft target teaches a pair that has no human label
        records = list(records)
        labelled = [i for i, r in enumerate(records) if has_label(r)]
        for i, record in zip(labelled, validate_records([records[i] for i in labelled], scheme) if labelled else []):
            records[i] = record
    else:
        records = validate_records(records, scheme, "training")
    eval_records = validate_records(eval_records, scheme, "evaluation") if eval_records else None
    if config.soft_labels:
        targets, loss_fn = _rating_targets(records, scheme), rating_loss
    if targets is not None:
        targets = np.asarray(targets, dtype=np.float32)
        if targets.shape != (len(records), len(scheme)):
            raise ValueError(f"targets must be {len(records)} x {len(scheme)}, got {targets.shape}")
    output_dir = Path(config.output_dir)
    checkpoint = last_checkpoint(output_dir)
    if checkpoint is not None and not config.resume:
        raise FileExistsError(
            f"{output_dir} already holds checkpoints of a run ({checkpoint.name}); resume it or choose another folder"
        )
    run_file = output_dir / CHECKPOINT_DIR / RUN_FILE
    train_hash = data_hash(records) + ("+soft-labels" if config.soft_labels else "")
    if checkpoint is not None:
        previous = json.loads(run_file.read_text()) if run_file.is_file() else {}
        if previous.get("data_hash", train_hash) != train_hash:
            raise DataError(f"cannot resume {output_dir}: its checkpoints were trained on other data")
    else:
        write_json(run_file, {"data_hash": train_hash, "n_train": len(records), "config": asdict(config)})

    use_cpu = prepare_device(config)
    set_seed(config.seed)
    folder = resolve_model(config.model)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForSequenceClassification.from_pretrained(
        str(folder),
        num_labels=len(scheme),
        id2label=dict(enumerate(scheme.labels)),
        label2id={label: i for i, label in enumerate(scheme.labels)},
        dtype=torch.float32,
    )

    human_labels = [r.label for r in records if has_label(r)]
    weights = class_weights(human_labels, scheme, config.class_balance)
    examples = _tokenize(tokenizer, records, scheme, config.max_length)
    for i, (example, record) in enumerate(zip(examples, records)):
        example["labels"] = scheme.index(record.label) if has_label(record) else IGNORE_LABEL
        example["weight"] = weights[record.label] if has_label(record) else 1.0
        if targets is not None:
            example["targets"] = targets[i].tolist()
    eval_examples = None
    if eval_records:
        eval_examples = _tokenize(tokenizer, eval_records, scheme, config.max_length)
        eval_targets = _rating_targets(eval_records, scheme) if config.soft_labels else None
        for i, (example, record) in enumerate(zip(eval_examples, eval_records)):
            example["labels"] = scheme.index(record.label)
            if eval_targets is not None:
                example["targets"] = eval_targets[i].tolist()

    args = TrainingArguments(
        **training_arguments(
            config,
            output_dir / CHECKPOINT_DIR,
            use_cpu,
            eval_strategy="no",
            prediction_loss_only=True,
            label_names=["labels"],
            remove_unused_columns=False,
        )
    )
    trainer = _make_trainer_class()(
        model=model,
        args=args,
        train_dataset=_ExampleDataset(examples),
        eval_dataset=_ExampleDataset(eval_examples) if eval_examples else None,
        data_collator=EncoderCollator(tokenizer),
        processing_class=tokenizer,
        callbacks=callbacks,
        loss_fn=loss_fn,
    )
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint is not None else None)
    wall = time.perf_counter() - started
    resumed_from = trainer_state_step(checkpoint) if checkpoint is not None else 0
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    metrics: dict[str, Any] = {
        "final_loss": losses[-1] if losses else result.training_loss,
        "mean_loss": result.training_loss,
        "steps": result.global_step,
        "resumed_from_step": resumed_from,
        "wall_time_s": round(wall, 2),
    }
    if eval_examples:
        metrics["eval_loss"] = trainer.evaluate()["eval_loss"]

    model.save_pretrained(str(output_dir))
    tokenizer.save_pretrained(str(output_dir))
    write_json(
        output_dir / MANIFEST_NAME,
        {
            "kind": KIND,
            "stage": "cross-encoder",
            "base_model": stored_model_reference(config.model),
            "scheme": {"name": scheme.name, "labels": list(scheme.labels)},
            "data_hash": train_hash,
            "n_train": len(records),
            "n_unlabelled": len(records) - len(human_labels),
            **match_hint_manifest(records),
            "label_counts": dict(Counter(human_labels)),
            "class_weights": weights,
            "config": asdict(config),
            "train_metrics": metrics,
            "versions": library_versions(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
    )
    logger.info("cross-encoder written to %s (%d steps)", output_dir, result.global_step)
    return output_dir


def load_cross_encoder(name_or_path: str | Path):
    """Return (model, tokenizer, manifest) of a trained cross-encoder folder."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from lref.models.loading import read_manifest
    from lref.models.zoo import resolve_model

    folder = resolve_model(name_or_path)
    model = AutoModelForSequenceClassification.from_pretrained(str(folder), dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model.eval()
    return model, tokenizer, read_manifest(folder)


def score_pairs(
    records: Sequence[Record],
    scheme: LabelScheme,
    tokenizer,
    config: ScorerConfig,
    forward: Callable[[dict[str, Any]], np.ndarray],
) -> ScoreResult:
    """Tokenise the pairs, batch them longest first and gather `forward(batch) -> logits (B x K)` in input order.

    Every encoder backend (PyTorch, ONNX) scores through this, so they all read exactly the same tokens; `batch` holds
    the padded token tensors (torch) under `EncoderCollator.TOKEN_KEYS`."""
    import sys

    from tqdm.auto import tqdm

    ids = [r.id for r in records]
    logits = np.zeros((len(records), len(scheme)), dtype=np.float32)
    if not records:
        return ScoreResult(ids, scheme.labels, logits, config.top_k, config.label_bias)
    examples = _tokenize(tokenizer, with_match_hints(records) if config.match_hints else records, scheme,
                         config.max_length or 512)
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i]["input_ids"]))
    collate = EncoderCollator(tokenizer)
    size = config.batch_size
    with tqdm(total=len(order), unit="pair", file=sys.stderr, disable=not config.progress, desc="scoring") as bar:
        for start in range(0, len(order), size):
            batch_index = order[start : start + size]
            logits[batch_index] = forward(collate([{**examples[i], "labels": 0} for i in batch_index]))
            bar.update(len(batch_index))
    return ScoreResult(ids, scheme.labels, logits, config.top_k, config.label_bias)


class CrossEncoderScorer:
    """Scores pairs with a trained cross-encoder; the same `ScoreResult` as `LabelScorer` (logits in scheme order).

    Uses `ScorerConfig`'s batch_size, top_k, max_length, progress, num_threads and bf16 (`fast` does not apply)."""

    def __init__(self, model, tokenizer, scheme: LabelScheme | str, config: ScorerConfig | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.scheme = get_scheme(scheme)
        self.config = config or ScorerConfig(max_length=128)
        if model.config.num_labels != len(self.scheme):
            raise ValueError(
                f"the model has {model.config.num_labels} outputs, scheme {self.scheme.name!r} has {len(self.scheme)}"
            )

    @classmethod
    def from_pretrained(cls, folder: str | Path, scheme: str | None = None, config: ScorerConfig | None = None):
        model, tokenizer, manifest = load_cross_encoder(folder)
        config = for_model(config or ScorerConfig(max_length=128), manifest)
        return cls(model, tokenizer, scheme_for_model(manifest, scheme), config)

    def score(self, records: Sequence[Record]) -> ScoreResult:
        import torch

        if self.config.num_threads is not None:
            torch.set_num_threads(self.config.num_threads)
        was_training = self.model.training
        self.model.eval()
        device = self.model.device.type
        bf16 = use_bf16(self.config.bf16, use_cpu=device == "cpu")
        try:
            with torch.inference_mode(), torch.autocast(device, torch.bfloat16, enabled=bf16):
                return score_pairs(records, self.scheme, self.tokenizer, self.config, self._logits)
        finally:
            if was_training:
                self.model.train()

    def _logits(self, batch: dict[str, Any]) -> np.ndarray:
        inputs = {k: batch[k].to(self.model.device) for k in EncoderCollator.TOKEN_KEYS if k in batch}
        return self.model(**inputs).logits.float().cpu().numpy()

    def predict(self, records: Sequence[Record]):
        return self.score(records).predictions()


__all__ = [
    "CrossEncoderConfig",
    "CrossEncoderScorer",
    "EncoderCollator",
    "LossFn",
    "label_loss",
    "load_cross_encoder",
    "pair_texts",
    "rating_loss",
    "score_pairs",
    "train_cross_encoder",
]
