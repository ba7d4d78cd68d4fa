"""Cross-encoder training: fine-tune a BERT-class encoder as a K-way classifier over the scheme's labels.

Training is `transformers.Trainer` on `AutoModelForSequenceClassification(num_labels=len(scheme))`; the folder
written holds the model, its tokenizer and `lref_manifest.json` (scheme, base model, data hash, config, metrics),
loadable with `lref.models.cross_encoder.CrossEncoderScorer.from_pretrained`.

The loss is pluggable: `train_cross_encoder(..., loss_fn=...)` takes any `loss_fn(logits, batch) -> scalar`, and each
example may carry a target distribution (`targets=`, N x K), which the collator stacks into `batch["targets"]`. The
default loss, `label_loss`, is the (optionally class-weighted) cross-entropy on the hard labels and ignores targets.

    >>> CrossEncoderConfig(output_dir="runs/ce").model
    'minilm-l6'
"""

from __future__ import annotations

import functools
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from lref.baselines.lexical import LexicalConfig
from lref.data.records import Record, has_label
from lref.data.validation import validate_records
from lref.device import prepare_device
from lref.fingerprint import data_hash, library_versions
from lref.io import MANIFEST_NAME, write_json
from lref.labels import CLASS_BALANCE, LabelScheme, class_weights, get_scheme
from lref.models.cross_encoder import KIND, EncoderCollator, tokenize_pairs
from lref.models.hybrid import FEATURE_INPUT, MatchFeatures, hybrid_model_class
from lref.models.zoo import resolve_model, stored_model_reference
from lref.prompts import match_hint_manifest
from lref.training.examples import ExampleDataset, rating_target
from lref.training.losses import IGNORE_LABEL, label_loss, rating_loss
from lref.training.run_guard import RunGuard
from lref.training.settings import TrainingSettings, check_training_fields, training_arguments, with_default

logger = logging.getLogger(__name__)

LossFn = Callable[[Any, dict[str, Any]], Any]
"""loss_fn(logits N x K, batch) -> scalar tensor; the batch holds labels, weights and, when given, targets."""


@dataclass
class CrossEncoderConfig(TrainingSettings):
    """Settings of cross-encoder training. Each field's help text can feed a command line (`lref.config.field_help`)."""

    FINGERPRINT_ADDED_FIELDS: ClassVar[tuple[str, ...]] = ("grad_accum", "lexical_features", "feature_learning_rate",
                                                           "encoder_layers", "lexical_prior")
    """Training settings this config gained with the shared `TrainingSettings` (`lref.fingerprint.ADDED_FIELDS`)."""

    model: str = field(
        default="minilm-l6", metadata={"help": "Base encoder: a zoo name (minilm-l6, mpnet-base) or an HF folder."}
    )
    scheme: str = field(default="graded3", metadata={"help": "Label scheme (preset name) the records are labelled in."})
    output_dir: str = field(
        default="runs/cross-encoder",
        metadata={"help": "Folder for the model, tokenizer and manifest; checkpoints go to its checkpoints/."},
    )
    class_balance: str = field(
        default="none",
        metadata={"help": "Per-example loss weights by label frequency: 'none', 'sqrt' or 'inverse' (as in SFT)."},
    )
    soft_labels: bool = field(
        default=False,
        metadata={"help": "Train toward the raters' mean where a record carries one (raw_score), shared between the "
                  "two grades that bracket it, as in SFT; records without a raw score keep their label."},
    )
    lexical_features: bool = field(
        default=False,
        metadata={"help": "Train a hybrid: the encoder's label logits plus a small network over the lexical baseline's "
                  "match features (lref.models.hybrid), in one model that exports to one ONNX graph."},
    )
    feature_learning_rate: float = field(
        default=1e-3,
        metadata={"help": "Peak learning rate of the hybrid's feature head (trained from scratch, so higher than the "
                  "encoder's); no effect without lexical_features."},
    )
    lexical_prior: bool = field(
        default=False,
        metadata={"help": "Hybrid students only: add the lexical baseline's log-probabilities to the logits "
                  "(lref.models.hybrid), so training starts from its judgement and the encoder learns what to change. "
                  "The training pairs' prior is out of fold (5 query-disjoint folds of the labelled pairs); the saved "
                  "lexical model, fitted on all of them, scores new pairs."},
    )
    encoder_layers: int | None = field(
        default=None,
        metadata={"help": "Keep only the encoder's first N transformer layers: a smaller, faster model whose cost per "
                  "pair falls with N (DistilBERT-style layer dropping); None keeps them all."},
    )
    # training settings whose default or meaning differs here
    learning_rate: float = with_default("learning_rate", 5e-5)
    batch_size: int = with_default("batch_size", 16, help="Pairs per optimizer step.")
    max_length: int = with_default(
        "max_length", 128, help="Most tokens per (query, product) pair; the longer side is cut."
    )
    warmup_ratio: float = with_default("warmup_ratio", 0.1)
    weight_decay: float = with_default("weight_decay", 0.01)
    save_steps: int = with_default("save_steps", 200)
    save_total_limit: int = with_default("save_total_limit", 1)
    seed: int = with_default("seed", 0, help="Seed for the classifier head, shuffling and dropout.")
    logging_steps: int = with_default("logging_steps", 20)

    def __post_init__(self) -> None:
        if self.class_balance not in CLASS_BALANCE:
            raise ValueError(f"class_balance must be one of {', '.join(CLASS_BALANCE)}, not {self.class_balance!r}")
        check_training_fields(self, ("batch_size", "grad_accum", "save_steps", "logging_steps", "max_length"))
        if self.feature_learning_rate <= 0:
            raise ValueError(f"feature_learning_rate must be > 0, not {self.feature_learning_rate}")
        check_encoder_layers(self.encoder_layers)
        check_lexical_prior(self.lexical_prior, self.lexical_features)


def check_lexical_prior(lexical_prior: bool, lexical_features: bool) -> None:
    """A lexical prior joins a hybrid student's features, so it needs them."""
    if lexical_prior and not lexical_features:
        raise ValueError("lexical_prior: true needs lexical_features: true (the prior is part of the hybrid "
                         "student); set both, or drop lexical_prior")


def check_encoder_layers(layers: int | None) -> None:
    """`encoder_layers` is None (all layers) or a positive count."""
    if layers is not None and (isinstance(layers, bool) or not isinstance(layers, int) or layers < 1):
        raise ValueError(f"encoder_layers must be a whole number >= 1 or None (all layers), not {layers!r}")


def encoder_depth(folder: Path, layers: int | None) -> dict[str, int]:
    """The `from_pretrained` keyword that keeps the first `layers` transformer layers of the encoder in `folder`
    (none for all of them); more layers than the encoder has is refused, naming both counts."""
    if layers is None:
        return {}
    from transformers import AutoConfig

    available = getattr(AutoConfig.from_pretrained(str(folder)), "num_hidden_layers", None)
    if available is None:
        raise ValueError(f"encoder_layers is set, but the encoder in {folder} does not say how many layers it has "
                         "(no num_hidden_layers in its config); leave encoder_layers unset")
    if layers > available:
        raise ValueError(f"encoder_layers is {layers}, but the encoder in {folder} has only {available} layers; "
                         f"use 1 to {available}, or leave it unset for all")
    return {"num_hidden_layers": layers}


@functools.cache
def cross_encoder_trainer_class():
    """`CrossEncoderTrainer`: transformers' `Trainer` with a pluggable `loss_fn` (built on first use)."""
    from transformers import Trainer

    class CrossEncoderTrainer(Trainer):
        """`Trainer` whose loss is `loss_fn(logits, batch)` (default: `label_loss`); a hybrid model's feature head
        gets its own learning rate (`feature_learning_rate`)."""

        def __init__(self, *args, loss_fn: LossFn = label_loss, feature_learning_rate: float | None = None, **kwargs):
            super().__init__(*args, **kwargs)
            self.loss_fn = loss_fn
            self.feature_learning_rate = feature_learning_rate

        def create_optimizer(self, model=None):
            optimizer = super().create_optimizer(model)
            head = getattr(self.model, "feature_head", None)
            if head is None or self.feature_learning_rate is None or getattr(optimizer, "lref_feature_group", False):
                return optimizer
            head_params = {id(p) for p in head.parameters()}
            moved = [p for group in optimizer.param_groups for p in group["params"] if id(p) in head_params]
            for group in optimizer.param_groups:
                group["params"] = [p for p in group["params"] if id(p) not in head_params]
            optimizer.add_param_group({"params": moved, "lr": self.feature_learning_rate, "weight_decay": 0.0})
            optimizer.lref_feature_group = True
            return optimizer

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            keys = (*EncoderCollator.TOKEN_KEYS, FEATURE_INPUT)
            model_inputs = {k: inputs[k] for k in keys if k in inputs}
            outputs = model(**model_inputs)
            loss = self.loss_fn(outputs.logits, inputs)
            return (loss, outputs) if return_outputs else loss

    return CrossEncoderTrainer


def rating_targets(records: Sequence[Record], scheme: LabelScheme) -> np.ndarray:
    """N x K soft targets (scheme order): each record's `rating_target`, or its label one-hot without a raw score."""
    targets = np.zeros((len(records), len(scheme)), dtype=np.float32)
    for row, record in enumerate(records):
        for label, weight in (rating_target(record, scheme) or {record.label: 1.0}).items():
            targets[row, scheme.index(label)] = weight
    return targets


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
        targets, loss_fn = rating_targets(records, scheme), rating_loss
    if targets is not None:
        targets = np.asarray(targets, dtype=np.float32)
        if targets.shape != (len(records), len(scheme)):
            raise ValueError(f"targets must be {len(records)} x {len(scheme)}, got {targets.shape}")
    output_dir = Path(config.output_dir)
    guard = RunGuard(output_dir, config.resume)
    train_hash = data_hash(records) + ("+soft-labels" if config.soft_labels else "")
    guard.begin({"data_hash": train_hash}, n_train=len(records), config=asdict(config))

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
        **encoder_depth(folder, config.encoder_layers),
    )

    match_features = feature_rows = None
    if config.lexical_features:
        match_features = MatchFeatures()
        prior = LexicalConfig(scheme=scheme.name) if config.lexical_prior else None
        feature_rows = match_features.fit_transform(records, prior)
        model = hybrid_model_class()(model, len(match_features.names), match_features=match_features,
                                     n_prior=match_features.n_prior)
    human_labels = [r.label for r in records if has_label(r)]
    weights = class_weights(human_labels, scheme, config.class_balance)
    examples = tokenize_pairs(tokenizer, records, scheme, config.max_length)
    if feature_rows is not None:
        for example, row in zip(examples, feature_rows):
            example[FEATURE_INPUT] = row
    for i, (example, record) in enumerate(zip(examples, records)):
        example["labels"] = scheme.index(record.label) if has_label(record) else IGNORE_LABEL
        example["weight"] = weights[record.label] if has_label(record) else 1.0
        if targets is not None:
            example["targets"] = targets[i].tolist()
    eval_examples = None
    if eval_records:
        eval_examples = tokenize_pairs(tokenizer, eval_records, scheme, config.max_length)
        if match_features is not None:
            for example, row in zip(eval_examples, match_features.transform(eval_records)):
                example[FEATURE_INPUT] = row
        eval_targets = rating_targets(eval_records, scheme) if config.soft_labels else None
        for i, (example, record) in enumerate(zip(eval_examples, eval_records)):
            example["labels"] = scheme.index(record.label)
            if eval_targets is not None:
                example["targets"] = eval_targets[i].tolist()

    args = TrainingArguments(
        **training_arguments(
            config,
            guard.checkpoint_dir,
            use_cpu,
            eval_strategy="no",
            prediction_loss_only=True,
            label_names=["labels"],
            remove_unused_columns=False,
        )
    )
    trainer = cross_encoder_trainer_class()(
        model=model,
        args=args,
        train_dataset=ExampleDataset(examples),
        eval_dataset=ExampleDataset(eval_examples) if eval_examples else None,
        data_collator=EncoderCollator(tokenizer),
        processing_class=tokenizer,
        callbacks=callbacks,
        loss_fn=loss_fn,
        feature_learning_rate=config.feature_learning_rate if match_features is not None else None,
    )
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=guard.resume_from)
    wall = time.perf_counter() - started
    resumed_from = guard.resumed_step
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

    guard.save(model, tokenizer)
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
            "hybrid": ({"features": list(match_features.names), "lexical_prior": match_features.n_prior > 0}
                       if match_features is not None else None),
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


__all__ = ["CrossEncoderConfig", "LossFn", "check_encoder_layers", "check_lexical_prior", "cross_encoder_trainer_class",
           "encoder_depth", "rating_targets", "train_cross_encoder"]
