"""Checks every trainer runs on its labelled records before it starts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from lref.data.records import DataError, Record
from lref.labels import LabelError, LabelScheme


def validate_records(records: Sequence[Record], scheme: LabelScheme, what: str = "training") -> list[Record]:
    """Check that every record has a label of `scheme`; return them with canonical label names."""
    if not records:
        raise DataError(f"no {what} records: SFT needs at least one labelled pair")
    checked = []
    for record in records:
        if record.label is None or str(record.label).strip() == "":
            raise DataError(f"{what} record {record.id!r} has no label; SFT needs labelled records")
        try:
            label = scheme.parse(record.label)
        except LabelError as error:
            raise DataError(f"{what} record {record.id!r}: {error}") from None
        if label != record.label:
            record = replace(record, label=label)
        checked.append(record)
    return checked


__all__ = ["validate_records"]
