"""Predictions: `ScoreResult` (what every scorer returns: label logits and probabilities of N pairs) and prediction
files, one JSON line per pair with `id`, `label`, `probs` (label -> probability) and `topk`."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lref.data.records import DataError
from lref.io import read_jsonl_lines, write_jsonl
from lref.labels import LabelError, LabelScheme


@dataclass
class Prediction:
    id: str
    label: str
    probs: dict[str, float] = field(default_factory=dict)
    """Probability of every label of the scheme; empty when the predictor gives only a label."""
    topk: list[str] = field(default_factory=list)
    """Labels in decreasing probability: the paper's beam over label outputs."""

    def to_dict(self) -> dict:
        return {"id": self.id, "label": self.label, "probs": self.probs, "topk": self.topk}


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (each row sums to 1)."""
    z = logits.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


@dataclass
class ScoreResult:
    """Scores of N pairs over the K labels of a scheme, in input order and scheme order."""

    ids: list[str]
    labels: tuple[str, ...]
    logits: np.ndarray
    """N x K float32: raw logits of the labels' first tokens (after the model's final logit soft-capping)."""
    top_k: int = 3
    bias: Sequence[float] | None = None
    """Added to every row of `logits` on construction (a label-prior calibration); `logits` then hold the sum."""
    probs: np.ndarray = field(init=False)
    """N x K float64: softmax over the label logits only (each row sums to 1)."""

    def __post_init__(self) -> None:
        self.logits = np.asarray(self.logits, dtype=np.float32).reshape(len(self.ids), len(self.labels))
        if self.bias is not None:
            if len(self.bias) != len(self.labels):
                raise ValueError(f"{len(self.bias)} bias values for {len(self.labels)} labels")
            self.logits = self.logits + np.asarray(self.bias, dtype=np.float32)
            self.bias = None  # applied once; re-wrapping these logits must not shift them again
        self.probs = softmax(self.logits)
        self.top_k = max(1, min(self.top_k, len(self.labels)))

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def topk_indices(self) -> np.ndarray:
        """N x k label indices in decreasing probability (ties: scheme order)."""
        order = np.argsort(-self.probs, axis=1, kind="stable")
        return order[:, : self.top_k]

    @property
    def predicted(self) -> list[str]:
        """The top-1 label of every pair."""
        return [self.labels[i] for i in self.probs.argmax(axis=1)]

    def topk_labels(self) -> list[list[str]]:
        return [[self.labels[j] for j in row] for row in self.topk_indices]

    def predictions(self) -> list[Prediction]:
        topk = self.topk_indices
        return [
            Prediction(
                id=pid,
                label=self.labels[int(row[0])],
                probs={label: float(p) for label, p in zip(self.labels, probs)},
                topk=[self.labels[int(j)] for j in row],
            )
            for pid, probs, row in zip(self.ids, self.probs, topk)
        ]


def write_predictions(path: str | Path, predictions: Iterable[Prediction]) -> int:
    return write_jsonl(path, (p.to_dict() for p in predictions))


def read_predictions(path: str | Path, scheme: LabelScheme | None = None) -> list[Prediction]:
    """Read a prediction file, checking every label against `scheme` when given.

    Lines are split on "\\n" only (`lref.io.read_jsonl_lines`). Bad input raises a DataError naming the file, the
    line (as `row`) and the field: invalid JSON, a missing id or label, probs that are not a map of labels to finite
    numbers (NaN and infinities are refused), topk that is not a list of labels."""
    path = Path(path)
    predictions = []
    try:
        lines = read_jsonl_lines(path)
    except UnicodeDecodeError as error:
        row = error.object.count(b"\n", 0, error.start) + 1
        raise DataError(f"not valid UTF-8 ({error.reason} at byte {error.start}, line {row})", path=str(path),
                        row=row) from None
    for row, line in lines:
        try:
            item = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"invalid JSON: {error.msg}", path=str(path), row=row) from None
        except (ValueError, RecursionError) as error:  # a 5000-digit integer, thousands of nested brackets
            raise DataError(f"invalid JSON: {error}", path=str(path), row=row) from None
        if not isinstance(item, dict):
            raise DataError("expected a JSON object", path=str(path), row=row)
        for key in ("id", "label"):
            if key not in item or item[key] in (None, ""):
                raise DataError("missing or empty field", path=str(path), row=row, column=key)
            if isinstance(item[key], (dict, list, bool)):
                raise DataError(f"expected a string, got {json.dumps(item[key])[:40]}", path=str(path), row=row,
                                column=key)
        probs = item.get("probs") or {}
        topk = item.get("topk") or []
        if not isinstance(probs, dict):
            raise DataError("probs must map labels to numbers", path=str(path), row=row, column="probs")
        for name, value in probs.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise DataError(f"probs must map labels to numbers; {name!r} has {json.dumps(value)[:40]}",
                                path=str(path), row=row, column="probs")
            if not math.isfinite(value):
                raise DataError(f"probability of {name!r} is {value}; probabilities must be finite numbers",
                                path=str(path), row=row, column="probs")
        if not isinstance(topk, list) or not all(isinstance(t, str) for t in topk):
            raise DataError("topk must be a list of labels", path=str(path), row=row, column="topk")
        if scheme is not None:
            column = "label"
            try:
                label = scheme.parse(item["label"])
                column = "probs"
                probs = {scheme.parse(k): float(v) for k, v in probs.items()}
                column = "topk"
                topk = [scheme.parse(t) for t in topk]
            except LabelError as error:
                raise DataError(str(error), path=str(path), row=row, column=column) from None
        else:
            label = str(item["label"])
            probs = {str(k): float(v) for k, v in probs.items()}
        predictions.append(Prediction(str(item["id"]), label, probs, topk))
    return predictions
