"""The canonical record every stage reads, and the error raised for bad input."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any


class DataError(ValueError):
    """Bad input data. The message names the file and, where known, the row and column."""

    def __init__(self, message: str, *, path: str | None = None, row: int | None = None, column: str | None = None):
        self.path, self.row, self.column = path, row, column
        where = ", ".join(
            part
            for part in (
                f"file {path}" if path else "",
                f"row {row}" if row is not None else "",
                f"column {column!r}" if column else "",
            )
            if part
        )
        super().__init__(f"{where}: {message}" if where else message)


@dataclass
class Record:
    """One query–product pair, with its human label when it has one."""

    id: str
    query: str
    title: str
    label: str | None = None
    brand: str | None = None
    description: str | None = None
    attributes: dict[str, str] = field(default_factory=dict)
    raw_score: float | None = None
    """The raw judgement behind the label, e.g. the mean of several raters."""
    exposure: float | None = None
    """Query frequency or traffic; used to band queries into head, torso and tail."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Source-specific extras, e.g. `rater_disagreement`, `label_noise`, `split`, `product_id`."""

    def to_dict(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if value not in (None, {}, "")}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Record":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{key: value for key, value in data.items() if key in known})


def has_label(record: Record) -> bool:
    """Whether a record carries a human label (distillation pools mix labelled and unlabelled pairs)."""
    return record.label is not None and bool(str(record.label).strip())


def stable_id(*parts: object) -> str:
    """A short deterministic id for sources that have none."""
    digest = hashlib.sha1("\x1f".join(str(p) for p in parts).encode("utf-8")).hexdigest()
    return digest[:16]
