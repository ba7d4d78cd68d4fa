"""Evaluation of a pipeline system: score the held-out split raw, fit and apply the system's label calibration when
the run holds out calibration pairs, write predictions and metrics."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from lref.calibration import calibrate_scores, calibration_path, read_label_bias
from lref.collapse import check_collapse
from lref.io import write_json
from lref.metrics import evaluate
from lref.models.factory import make_scorer
from lref.models.scorer import ScorerConfig
from lref.pipeline.config import EvalSettings
from lref.pipeline.data import RunData
from lref.predictions import ScoreResult, write_predictions

ENCODER_MAX_LENGTH = 512
"""Most tokens a BERT-class encoder reads (its position embeddings)."""
CALIBRATION_KEYS = ("accuracy", "macro_f1", "weighted_f1", "over_estimate_share")
"""The uncalibrated figures kept beside a calibrated evaluation."""


def scorer_config(kind: str, settings: EvalSettings) -> ScorerConfig:
    """How a system of `kind` is scored under the run's `eval` settings (raw: the calibration is applied here)."""
    config = ScorerConfig(batch_size=settings.batch_size, max_length=settings.max_length, progress=settings.progress,
                          num_threads=settings.threads)
    if kind == "encoder":
        return dataclasses.replace(config, max_length=min(settings.max_length, ENCODER_MAX_LENGTH))
    return config


def system_calibration_path(system: str, ref: str, out_dir: Path) -> Path:
    """Where a system's calibration lives: in its model folder when the run made that folder (so `lref predict` on
    it applies it), else `calibration_<system>.json` in the stage folder (never inside a shared zoo model)."""
    folder = Path(ref).resolve()
    if folder.is_dir() and folder.is_relative_to(out_dir.resolve()):
        return calibration_path(folder)
    return out_dir / f"calibration_{system}.json"


def score_calibrated(system: str, kind: str, ref: str, records: list, scheme: str, settings: EvalSettings,
                     out_dir: Path) -> ScoreResult:
    """Score `records` (labels not needed) with a finished system, applying the calibration its evaluation stored
    (`system_calibration_path`), exactly as its held-out predictions were made; raw scores when it stored none."""
    scorer = make_scorer(ref, kind=kind, scheme=scheme, config=scorer_config(kind, settings), calibrated=False)
    result = scorer.score(records)
    bias = read_label_bias(system_calibration_path(system, ref, out_dir), scheme)
    if bias is not None:
        result = ScoreResult(result.ids, result.labels, result.logits, result.top_k, list(bias))
    return result


def evaluate_system(system: str, kind: str, ref: str, data: RunData, settings: EvalSettings, out_dir: Path,
                    seed: int = 0, calibration: Any = None) -> dict[str, Any]:
    """Score the held-out split, write `predictions_<system>.jsonl` and `metrics_<system>.json`, return metrics.

    With a CalibrationConfig and `data.calibration` pairs, the system's label bias is first fitted on those pairs and
    stored (`system_calibration_path`); the metrics are then those of the calibrated scores, and
    `metrics["calibration"]` holds the bias and the uncalibrated headline figures. `metrics["collapse"]` is
    `lref.collapse.check_collapse` on the calibration pairs (calibrated), else on the held-out pairs."""
    scorer = make_scorer(ref, kind=kind, scheme=data.scheme, config=scorer_config(kind, settings), calibrated=False)
    started = time.perf_counter()
    result = scorer.score(data.eval)
    seconds = time.perf_counter() - started
    stored = system_calibration_path(system, ref, out_dir)
    document = None
    if calibration is not None and data.calibration:
        raw_calibration = scorer.score(data.calibration)
        document = calibrate_scores(raw_calibration.logits, data.calibration, data.scheme, calibration)
        write_json(stored, document)
        calibrated = ScoreResult(raw_calibration.ids, raw_calibration.labels, raw_calibration.logits,
                                 raw_calibration.top_k, list(document["bias"].values()))
        check = check_collapse([r.label for r in data.calibration], calibrated.predicted, data.scheme)
        check["checked_on"] = "calibration"
        raw = evaluate(data.eval, result.predictions(), data.scheme, bootstrap=0)
        document = {**document, "path": str(stored), "uncalibrated": {k: raw[k] for k in CALIBRATION_KEYS}}
        result = ScoreResult(result.ids, result.labels, result.logits, result.top_k, list(document["bias"].values()))
    else:
        stored.unlink(missing_ok=True)  # a calibration from an earlier evaluation must not outlive it
    predictions = result.predictions()
    if document is None:
        check = check_collapse([r.label for r in data.eval], [p.label for p in predictions], data.scheme)
        check["checked_on"] = "held-out"
    write_predictions(out_dir / f"predictions_{system}.jsonl", predictions)
    metrics = evaluate(data.eval, predictions, data.scheme, bootstrap=settings.bootstrap, seed=seed)
    metrics.update(system=system, kind=kind, model=ref, eval_seconds=round(seconds, 3),
                   pairs_per_s=round(len(data.eval) / seconds, 2) if seconds > 0 else None)
    if document is not None:
        metrics["calibration"] = document
    metrics["collapse"] = check
    write_json(out_dir / f"metrics_{system}.json", metrics)
    return metrics


__all__ = ["CALIBRATION_KEYS", "evaluate_system", "score_calibrated", "scorer_config", "system_calibration_path"]
