"""Prediction files: one JSON line per pair with `id`, `label`, `probs` (label -> probability) and `topk`."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from lref.data.records import DataError
from lref.io import write_jsonl
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


def write_predictions(path: str | Path, predictions: Iterable[Prediction]) -> int:
    return write_jsonl(path, (p.to_dict() for p in predictions))


def read_predictions(path: str | Path, scheme: LabelScheme | None = None) -> list[Prediction]:
    """Read a prediction file, checking every label against `scheme` when given."""
    path = Path(path)
    predictions = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise DataError(f"not valid UTF-8 ({error.reason} at byte {error.start})", path=str(path)) from None
    for row, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"invalid JSON: {error.msg}", path=str(path), row=row) from None
        if not isinstance(item, dict):
            raise DataError("expected a JSON object", path=str(path), row=row)
        for key in ("id", "label"):
            if key not in item or item[key] in (None, ""):
                raise DataError("missing or empty field", path=str(path), row=row, column=key)
        probs = item.get("probs") or {}
        topk = item.get("topk") or []
        if scheme is not None:
            try:
                label = scheme.parse(item["label"])
                probs = {scheme.parse(k): float(v) for k, v in probs.items()}
                topk = [scheme.parse(t) for t in topk]
            except LabelError as error:
                raise DataError(str(error), path=str(path), row=row, column="label") from None
            except (TypeError, ValueError, AttributeError):
                raise DataError("probs must map labels to numbers", path=str(path), row=row, column="probs") from None
        else:
            label = str(item["label"])
        predictions.append(Prediction(str(item["id"]), label, probs, topk))
    return predictions
