"""Selector backbones: one small interface over the two model kinds the selection stage trains and scores with.

    backbone.fit(records, out_dir, seed) -> model folder    (reused when it already holds a finished model of the
                                                             same data and settings; resumed from a checkpoint)
    backbone.score(model_folder, records) -> ScoreResult    (probabilities over the scheme's labels, top-k)

* `LLMBackbone`: LoRA SFT on the direct prompt (`lref.training.lora.train_direct_sft`) and the label scorer
  (`LabelScorer`), as in the paper.
* `EncoderBackbone`: a cross-encoder (`lref.training.cross_encoder`), much faster on large pools.
* `LexicalBackbone`: the lexical baseline (`lref.baselines.lexical`: match features + gradient boosting), trained in
  seconds on a CPU.

A model folder is matched on its data hash and its settings (`backbone_settings`: the trainer config without the
output-neutral fields, the folder and the checkpoint cadence), through the run guard's run file while it trains and
its manifest once it is finished.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from lref.baselines.lexical import LexicalConfig, LexicalModel
from lref.data.records import Record
from lref.fingerprint import data_hash, settings_of
from lref.io import MANIFEST_NAME, write_json
from lref.models.cross_encoder import CrossEncoderScorer
from lref.models.loading import load_causal_lm, read_manifest
from lref.models.scorer import LabelScorer, ScorerConfig, ScoreResult
from lref.training.cross_encoder import CrossEncoderConfig, train_cross_encoder
from lref.training.lora import LoraTrainingConfig, train_direct_sft
from lref.training.run_guard import checkpoint_folder, run_file, run_matches, update_run_file


class SelectorBackbone(Protocol):
    name: str

    def fit(self, records: Sequence[Record], out_dir: Path, seed: int) -> Path: ...

    def score(self, model_dir: Path, records: Sequence[Record]) -> ScoreResult: ...

    def settings(self) -> dict[str, Any]:
        """What determines a trained model besides its data (compared before reusing a folder)."""
        ...


RUN_ONLY = ("output_dir", "save_steps", "save_total_limit")
"""Trainer settings that do not change the trained model besides the output-neutral ones (`lref.fingerprint`)."""


def backbone_settings(config: Any, name: str) -> dict[str, Any]:
    """The settings a selector model folder is matched on: the backbone's name and its trainer config's settings."""
    return {"backbone": name, **settings_of(config, RUN_ONLY)}


def finished_model(out_dir: Path, records: Sequence[Record], settings: dict[str, Any]) -> bool:
    """Whether `out_dir` holds a finished model trained on `records` with `settings` (its manifest says so)."""
    manifest = read_manifest(out_dir) if out_dir.is_dir() else None
    return bool(manifest) and manifest.get("data_hash") == data_hash(records) and manifest.get(
        "selector_settings"
    ) == settings


def prepare_folder(out_dir: Path, records: Sequence[Record], settings: dict[str, Any]) -> bool:
    """Clear a folder left by another dataset or other settings; True when its checkpoints can be resumed."""
    if not out_dir.exists():
        return False
    same = run_matches(out_dir, {"data_hash": data_hash(records), "selector_settings": settings})
    if not same:
        shutil.rmtree(out_dir)
    return same


def drop_checkpoints(out_dir: Path) -> None:
    """A finished selector needs no resumable checkpoints (for an encoder they hold the optimizer state too)."""
    for checkpoint in checkpoint_folder(out_dir).glob("checkpoint-*"):
        shutil.rmtree(checkpoint, ignore_errors=True)


def mark_manifest(out_dir: Path, settings: dict[str, Any]) -> None:
    """Record the selector settings in the manifest and the run file, so a re-run can recognise the folder."""
    for path in (out_dir / MANIFEST_NAME, run_file(out_dir)):
        if path.is_file():
            write_json(path, {**json.loads(path.read_text()), "selector_settings": settings})


def run_file_marker(out_dir: Path, settings: dict[str, Any]):
    """A TrainerCallback that stamps the selector settings into the run file at the start of training."""
    from transformers import TrainerCallback

    class RunFileMarker(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            update_run_file(out_dir, selector_settings=settings)

    return RunFileMarker()


def fit_backbone(train: Callable[..., Path], config: Any, name: str, records: Sequence[Record], out_dir: Path,
                 seed: int) -> Path:
    """Train with `train(config, records, callbacks=...)` into `out_dir`, reusing or resuming what is there."""
    out_dir = Path(out_dir)
    settings = {**backbone_settings(config, name), "seed": seed}
    if finished_model(out_dir, records, settings):
        return out_dir
    resume = prepare_folder(out_dir, records, settings)
    folder = train(replace(config, output_dir=str(out_dir), seed=seed, resume=resume), records,
                   callbacks=[run_file_marker(out_dir, settings)])
    mark_manifest(folder, settings)
    drop_checkpoints(folder)
    return folder


@dataclass
class LLMBackbone:
    """LoRA SFT of a causal LM, scored through `LabelScorer` (one forward pass per pair)."""

    sft: LoraTrainingConfig  # output_dir and seed are set per model
    scorer: ScorerConfig
    name: str = "llm"

    def settings(self) -> dict[str, Any]:
        return backbone_settings(self.sft, self.name)

    def fit(self, records: Sequence[Record], out_dir: Path, seed: int) -> Path:
        return fit_backbone(train_direct_sft, self.sft, self.name, records, out_dir, seed)

    def score(self, model_dir: Path, records: Sequence[Record]) -> ScoreResult:
        model, tokenizer, _ = load_causal_lm(model_dir, device="auto")
        return LabelScorer(model, tokenizer, self.sft.scheme, self.scorer).score(records)


@dataclass
class EncoderBackbone:
    """A cross-encoder classifier over the scheme's labels (`train_cross_encoder` + `CrossEncoderScorer`)."""

    encoder: CrossEncoderConfig  # output_dir and seed are set per model
    scorer: ScorerConfig
    name: str = "encoder"

    def settings(self) -> dict[str, Any]:
        return backbone_settings(self.encoder, self.name)

    def fit(self, records: Sequence[Record], out_dir: Path, seed: int) -> Path:
        return fit_backbone(train_cross_encoder, self.encoder, self.name, records, out_dir, seed)

    def score(self, model_dir: Path, records: Sequence[Record]) -> ScoreResult:
        return CrossEncoderScorer.from_pretrained(model_dir, self.encoder.scheme, self.scorer).score(records)


@dataclass
class LexicalBackbone:
    """The lexical baseline's features and classifier (`LexicalModel`): no GPU, seconds per selector."""

    lexical: LexicalConfig  # seed is set per model
    name: str = "lexical"

    def settings(self) -> dict[str, Any]:
        return backbone_settings(self.lexical, self.name)

    def fit(self, records: Sequence[Record], out_dir: Path, seed: int) -> Path:
        out_dir = Path(out_dir)
        settings = {**self.settings(), "seed": seed}
        if finished_model(out_dir, records, settings):
            return out_dir
        if out_dir.exists():
            shutil.rmtree(out_dir)
        LexicalModel(replace(self.lexical, seed=seed)).fit(records).save(out_dir)
        mark_manifest(out_dir, settings)
        return out_dir

    def score(self, model_dir: Path, records: Sequence[Record]) -> ScoreResult:
        return LexicalModel.load(model_dir).score(records)


__all__ = ["EncoderBackbone", "LLMBackbone", "LexicalBackbone", "SelectorBackbone", "backbone_settings", "fit_backbone"]
