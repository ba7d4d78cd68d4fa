"""Calibrate a trained model folder: score held-out labelled pairs raw, fit the label bias (`lref.calibration`) and
write ``calibration.json`` beside the model, where `lref.models.factory.make_scorer` finds it.

    lref calibrate runs/homedepot/stages/dpo/model --data held_out.csv --format homedepot
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lref.calibration import CalibrationConfig, calibrate_scores, calibration_path
from lref.data.records import Record
from lref.io import write_json
from lref.labels import LabelScheme
from lref.models.factory import make_scorer, model_kind
from lref.models.scorer import ScorerConfig

MAX_LENGTH = 512
"""Most tokens per pair when scoring the calibration pairs (as the pipeline's evaluation does)."""


def calibrate(config: CalibrationConfig, model: str | Path, records: Sequence[Record], *,
              scheme: LabelScheme | str | None = None, batch_size: int = 16, progress: bool = True) -> dict[str, Any]:
    """Score labelled `records` (pairs no training saw) with a trained model folder, raw, fit its label bias and
    write `model/calibration.json` (atomically); returns the calibration document.

    `model` is an LLM adapter or model folder, a cross-encoder (bert, student), an ONNX export or a lexical model
    folder."""
    folder = Path(model)
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder {folder} does not exist (calibrate a folder you trained: a zoo model is "
                                "shared, so its calibration would not be yours)")
    if not records:
        raise ValueError("no calibration pairs")
    kind = model_kind(folder)
    scorer = make_scorer(folder, kind=kind, scheme=scheme, calibrated=False,
                         config=ScorerConfig(batch_size=batch_size, max_length=MAX_LENGTH, progress=progress))
    result = scorer.score(records)
    document = calibrate_scores(result.logits, records, scorer.scheme, config)
    write_json(calibration_path(folder), {**document, "model_kind": kind})
    return document


__all__ = ["calibrate"]
