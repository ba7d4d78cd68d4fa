"""Selector backbones: one small interface over the two model kinds a stage can train and score with.

    backbone.fit(records, out_dir, seed) -> model folder    (reused when it already holds a finished model of the
                                                             same data and settings; resumed from a checkpoint)
    backbone.score(model_folder, records) -> ScoreResult    (probabilities over the scheme's labels, top-k)

* `LLMBackbone`: LoRA SFT (`lref.stages.sft.train_sft`) and the label scorer (`LabelScorer`), as in the paper.
* `EncoderBackbone`: a cross-encoder (`lref.models.cross_encoder`), much faster on large pools.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from lref.data.records import Record
from lref.models.scorer import ScorerConfig, ScoreResult


class SelectorBackbone(Protocol):
    name: str

    def fit(self, records: Sequence[Record], out_dir: Path, seed: int) -> Path: ...

    def score(self, model_dir: Path, records: Sequence[Record]) -> ScoreResult: ...

    def settings(self) -> dict[str, Any]:
        """What determines a trained model besides its data (compared before reusing a folder)."""
        ...


def _finished(out_dir: Path, records: Sequence[Record], settings: dict[str, Any]) -> bool:
    """Whether `out_dir` holds a finished model trained on `records` with `settings` (its manifest says so)."""
    from lref.fingerprint import data_hash
    from lref.models.loading import read_manifest

    manifest = read_manifest(out_dir) if out_dir.is_dir() else None
    return bool(manifest) and manifest.get("data_hash") == data_hash(records) and manifest.get(
        "selector_settings"
    ) == settings


def _prepare_folder(out_dir: Path, records: Sequence[Record], settings: dict[str, Any]) -> bool:
    """Clear a folder left by another dataset or other settings; True when its checkpoints can be resumed."""
    import json

    from lref.fingerprint import data_hash
    from lref.stages.sft import CHECKPOINT_DIR, RUN_FILE

    run_file = out_dir / CHECKPOINT_DIR / RUN_FILE
    if not out_dir.exists():
        return False
    same = False
    if run_file.is_file():
        run = json.loads(run_file.read_text())
        same = run.get("data_hash") == data_hash(records) and run.get("selector_settings") == settings
    if not same:
        shutil.rmtree(out_dir)
    return same


def _drop_checkpoints(out_dir: Path) -> None:
    """A finished selector needs no resumable checkpoints (for an encoder they hold the optimizer state too)."""
    from lref.stages.sft import CHECKPOINT_DIR

    for checkpoint in (out_dir / CHECKPOINT_DIR).glob("checkpoint-*"):
        shutil.rmtree(checkpoint, ignore_errors=True)


def _mark(out_dir: Path, settings: dict[str, Any]) -> None:
    """Record the selector settings in the manifest and the run file, so a re-run can recognise the folder."""
    import json

    from lref.io import write_json
    from lref.models.loading import MANIFEST_NAME
    from lref.stages.sft import CHECKPOINT_DIR, RUN_FILE

    for path in (out_dir / MANIFEST_NAME, out_dir / CHECKPOINT_DIR / RUN_FILE):
        if path.is_file():
            data = json.loads(path.read_text())
            data["selector_settings"] = settings
            write_json(path, data)


class _RunFileMarker:
    """A TrainerCallback that stamps the selector settings into the run file at the start of training."""

    def __init__(self, out_dir: Path, settings: dict[str, Any]):
        from transformers import TrainerCallback

        outer = self

        class Callback(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                _mark(outer.out_dir, outer.settings)

        self.out_dir, self.settings, self.callback = out_dir, settings, Callback()


_RUN_ONLY_FIELDS = ("output_dir", "resume", "progress", "threads", "logging_steps", "save_steps", "save_total_limit")
"""Config fields that do not change the trained model, so they are left out of the settings a folder is matched on."""


def _settings(config: Any, name: str) -> dict[str, Any]:
    settings = {key: value for key, value in asdict(config).items() if key not in _RUN_ONLY_FIELDS}
    return {"backbone": name, **settings}


def _fit(train: Callable[..., Path], config: Any, name: str, records: Sequence[Record], out_dir: Path, seed: int) -> Path:
    """Train with `train(config, records, callbacks=...)` into `out_dir`, reusing or resuming what is there."""
    out_dir = Path(out_dir)
    settings = {**_settings(config, name), "seed": seed}
    if _finished(out_dir, records, settings):
        return out_dir
    resume = _prepare_folder(out_dir, records, settings)
    marker = _RunFileMarker(out_dir, settings)
    folder = train(replace(config, output_dir=str(out_dir), seed=seed, resume=resume), records, callbacks=[marker.callback])
    _mark(folder, settings)
    _drop_checkpoints(folder)
    return folder


@dataclass
class LLMBackbone:
    """LoRA SFT of a causal LM, scored through `LabelScorer` (one forward pass per pair)."""

    sft: Any  # lref.stages.sft.SFTStageConfig; output_dir and seed are set per model
    scorer: ScorerConfig
    name: str = "llm"

    def settings(self) -> dict[str, Any]:
        return _settings(self.sft, self.name)

    def fit(self, records: Sequence[Record], out_dir: Path, seed: int) -> Path:
        from lref.stages.sft import train_sft

        return _fit(train_sft, self.sft, self.name, records, out_dir, seed)

    def score(self, model_dir: Path, records: Sequence[Record]) -> ScoreResult:
        from lref.models.loading import load_causal_lm
        from lref.models.scorer import LabelScorer

        model, tokenizer, _ = load_causal_lm(model_dir, device="auto")
        return LabelScorer(model, tokenizer, self.sft.scheme, self.scorer).score(records)


@dataclass
class EncoderBackbone:
    """A cross-encoder classifier over the scheme's labels (`train_cross_encoder` + `CrossEncoderScorer`)."""

    encoder: Any  # lref.models.cross_encoder.CrossEncoderConfig; output_dir and seed are set per model
    scorer: ScorerConfig
    name: str = "encoder"

    def settings(self) -> dict[str, Any]:
        return _settings(self.encoder, self.name)

    def fit(self, records: Sequence[Record], out_dir: Path, seed: int) -> Path:
        from lref.models.cross_encoder import train_cross_encoder

        return _fit(train_cross_encoder, self.encoder, self.name, records, out_dir, seed)

    def score(self, model_dir: Path, records: Sequence[Record]) -> ScoreResult:
        from lref.models.cross_encoder import CrossEncoderScorer

        return CrossEncoderScorer.from_pretrained(model_dir, self.encoder.scheme, self.scorer).score(records)


__all__ = ["EncoderBackbone", "LLMBackbone", "SelectorBackbone"]
