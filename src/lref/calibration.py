"""Label-prior calibration: one additive bias per label on the scorer's label logits, fitted on labelled pairs that
no training stage saw.

Every stage of the chain (and every fine-tuned baseline) can learn a label prior that is not the traffic's: a stage
trained on a hard, Exact-heavy selection grades too high, DPO against over-grading overshoots toward the lower grades.
The ranking under that prior is often sound. Adding ``bias[label]`` to each label's logit before the softmax
multiplies its probability by ``exp(bias)``, which moves the decision thresholds and leaves the order of pairs within
a label untouched. The first label's bias stays 0 (only differences matter).

The bias is fitted by coordinate ascent on a grid (``step`` apart, within ``±limit`` per label), maximising
weighted-F1 (or macro-F1, or accuracy) on the calibration pairs, keeping a move only when it strictly improves the
objective, so a model that needs no shift keeps bias 0. Every label moves, the first one included, and the first
label's value is subtracted at the end: raising one label against all the others is then a single move, which a
search with the first label pinned could not find when two other labels sit close together (an untuned model that
answers Partial, with Irrelevant just below it and Exact further down).

It is stored beside the model as ``calibration.json`` (`lref.models.calibrate.calibrate` scores a model folder and
writes it) and applied by the scorers `lref.models.factory.make_scorer` builds for a model folder (``lref predict``,
``lref serve student``) unless switched off (``--no-calibration``). This module is numpy only: the fit and the file.

    lref calibrate runs/homedepot/stages/dpo/model --data held_out.csv --format homedepot
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from lref.data.records import Record
from lref.labels import LabelError, LabelScheme, get_scheme

CALIBRATION_FILE = "calibration.json"
FIT_VERSION = 2
"""Bumped when the fit changes, so the pipeline re-evaluates its systems."""
OBJECTIVES = ("weighted_f1", "macro_f1", "accuracy")


@dataclass
class CalibrationConfig:
    """How the per-label bias is fitted."""

    objective: str = field(
        default="weighted_f1",
        metadata={"help": f"What the bias maximises on the calibration pairs: {', '.join(OBJECTIVES)}."},
    )
    limit: float = field(
        default=3.0, metadata={"help": "Largest absolute bias tried per label (in logits), before the first label's "
                               "is subtracted."})
    step: float = field(default=0.1, metadata={"help": "Grid step of the bias search."})
    rounds: int = field(default=10, metadata={"help": "Most passes of coordinate ascent over the labels."})
    min_pairs: int = field(
        default=50, metadata={"help": "Fewest labelled calibration pairs accepted; fewer would fit noise."}
    )

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, not {self.objective!r}")
        if self.limit <= 0 or self.step <= 0 or self.step > self.limit:
            raise ValueError(f"need 0 < step <= limit, got step {self.step} and limit {self.limit}")
        if self.rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {self.rounds}")
        if self.min_pairs < 1:
            raise ValueError(f"min_pairs must be >= 1, got {self.min_pairs}")


def _objective(name: str, gold: np.ndarray, predicted: np.ndarray) -> float:
    from sklearn.metrics import (  # here: serving reads calibrations without scikit-learn
        accuracy_score,
        f1_score,
    )

    if name == "accuracy":
        return float(accuracy_score(gold, predicted))
    return float(f1_score(gold, predicted, average=name.removesuffix("_f1"), zero_division=0))


def fit_label_bias(logits: np.ndarray, gold: Sequence[int], config: CalibrationConfig | None = None) -> np.ndarray:
    """The bias vector (K, first entry 0) that maximises `config.objective` of argmax(logits + bias) against `gold`
    (label indices); coordinate ascent over a grid, every label free, keeping only strict improvements."""
    config = config or CalibrationConfig()
    logits = np.asarray(logits, dtype=np.float64)
    gold = np.asarray(gold, dtype=np.int64)
    if logits.ndim != 2 or len(logits) != len(gold):
        raise ValueError(f"need N x K logits and N gold labels, got {logits.shape} and {len(gold)}")
    if len(gold) < config.min_pairs:
        raise ValueError(f"{len(gold)} calibration pairs, fewer than min_pairs={config.min_pairs}")
    grid = np.round(np.arange(-config.limit, config.limit + config.step / 2, config.step), 6)
    bias = np.zeros(logits.shape[1])
    best = _objective(config.objective, gold, logits.argmax(1))
    for _ in range(config.rounds):
        moved = False
        for label in range(logits.shape[1]):
            for value in grid:
                trial = bias.copy()
                trial[label] = value
                score = _objective(config.objective, gold, (logits + trial).argmax(1))
                if score > best + 1e-12:
                    best, bias, moved = score, trial, True
        if not moved:
            break
    return bias - bias[0]


def calibration_path(folder: str | Path) -> Path:
    return Path(folder) / CALIBRATION_FILE


def label_bias_for(folder: str | Path, scheme: LabelScheme | str) -> tuple[float, ...] | None:
    """The stored bias of a model folder in `scheme`'s label order, or None when the folder has no calibration.
    LabelError when the stored labels are not the scheme's."""
    return read_label_bias(calibration_path(folder), scheme)


def read_label_bias(path: str | Path, scheme: LabelScheme | str) -> tuple[float, ...] | None:
    """The bias of calibration file `path` in `scheme`'s label order, or None when there is no such file; LabelError
    when it is not a calibration of the scheme's labels or holds a value that is not a finite number."""
    path = Path(path)
    if not path.is_file():
        return None
    scheme = get_scheme(scheme)
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))["bias"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise LabelError(f"{path}: not a calibration file ({error})") from None
    if not isinstance(stored, dict):
        raise LabelError(f"{path}: not a calibration file ('bias' is not an object)")
    if set(stored) != set(scheme.labels):
        raise LabelError(f"{path}: calibrated labels {sorted(stored)} are not scheme {scheme.name!r}'s "
                         f"{list(scheme.labels)}")
    for label in scheme.labels:  # json reads NaN and Infinity: refuse them here, not as a 500 on every request
        value = stored[label]
        if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value):
            raise LabelError(f"{path}: bias['{label}'] is {value!r}, not a finite number")
    return tuple(float(stored[label]) for label in scheme.labels)


def calibrate_scores(logits: np.ndarray, records: Sequence[Record], scheme: LabelScheme | str,
                     config: CalibrationConfig | None = None) -> dict[str, Any]:
    """Fit the bias on already-scored pairs (`logits` in `records`' order) and return the calibration document:
    the bias per label, the objective before and after, and the pairs' label counts."""
    config = config or CalibrationConfig()
    scheme = get_scheme(scheme)
    unlabelled = [r.id for r in records if r.label is None]
    if unlabelled:
        raise ValueError(f"{len(unlabelled)} calibration pairs have no label (e.g. {unlabelled[0]!r})")
    gold = np.array([scheme.index(r.label) for r in records])
    logits = np.asarray(logits, dtype=np.float64)
    bias = fit_label_bias(logits, gold, config)
    counts = np.bincount(gold, minlength=len(scheme))
    return {
        "scheme": scheme.name,
        "bias": {label: round(float(b), 6) for label, b in zip(scheme.labels, bias)},
        "objective": config.objective,
        "before": round(_objective(config.objective, gold, logits.argmax(1)), 6),
        "after": round(_objective(config.objective, gold, (logits + bias).argmax(1)), 6),
        "pairs": len(records),
        "label_counts": {label: int(c) for label, c in zip(scheme.labels, counts)},
        "config": {"limit": config.limit, "step": config.step, "rounds": config.rounds},
        "fit_version": FIT_VERSION,
        "fitted": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


__all__ = ["CALIBRATION_FILE", "FIT_VERSION", "CalibrationConfig", "OBJECTIVES", "calibrate_scores",
           "calibration_path", "fit_label_bias", "label_bias_for",
           "read_label_bias"]
