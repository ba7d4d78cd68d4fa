"""Label corrections from human review: read a corrections file, merge new ones into it, and apply it to records.

A corrections file is JSON lines, one reviewed pair a line, sorted by id::

    {"id": "p17", "old_label": "Exact", "new_label": "Partial", "annotator": "ann@example.com",
     "time": "2026-12-03T15:40:12+00:00"}

``old_label`` is the label the reviewer saw (the gold label, or the judge's when the pair had none; it may be null),
``new_label`` the label they chose; a row whose two labels are equal confirms the label. `lref review import` writes
it from a Label Studio export (`lref.review`); `data.corrections` in a pipeline config and ``--corrections`` on
`lref run`, `lref select` and `lref train sft` apply it.

Applying
    `apply_corrections` sets each corrected record's label to ``new_label`` (and notes the change in
    ``meta["corrected_from"]``) before anything else reads the records. Every id of the file must be among the
    records: an id that is not means the file belongs to other data, or the data lost pairs, and is refused with a
    few of the ids named. A record whose label no longer equals ``old_label`` (the data was relabelled after the
    review) still takes ``new_label``: the reviewer's judgement is the newer one; `CorrectionSummary.stale` counts
    them.

Merging
    `merge_corrections` keeps one row per id: the later ``time`` wins, and on equal times the newer import. So
    importing the same export twice writes the same file.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lref.data.readers import read_jsonl_rows
from lref.data.records import DataError, Record
from lref.io import write_jsonl
from lref.labels import LabelError, LabelScheme

CORRECTED_FROM = "corrected_from"
"""The `Record.meta` key holding a corrected record's label before the correction (None when it had none)."""


@dataclass(frozen=True)
class Correction:
    """One reviewed pair: the label the reviewer saw and the label they chose."""

    id: str
    new_label: str
    old_label: str | None = None
    annotator: str = ""
    time: str = ""
    """When the annotation was made (ISO 8601)."""

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "old_label": self.old_label, "new_label": self.new_label,
                "annotator": self.annotator, "time": self.time}


@dataclass
class CorrectionSummary:
    """What applying a corrections file did, for manifests and fingerprints."""

    path: str
    sha256: str
    count: int
    """Rows in the file."""
    changed: int = 0
    """Records whose label the file changed (confirmations change nothing)."""
    stale: int = 0
    """Records whose label was no longer the correction's old_label."""
    applied_ids: set[str] = field(default_factory=set, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if key != "applied_ids"}


def file_sha256(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def parse_time(value: str, *, path: str | None = None, row: int | None = None) -> datetime:
    """An ISO 8601 time as a datetime (naive times count as UTC)."""
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise DataError(f"not an ISO 8601 time: {value!r}", path=path, row=row, column="time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def read_corrections(path: str | os.PathLike, scheme: LabelScheme | None = None) -> list[Correction]:
    """The rows of a corrections file; bad rows raise a DataError naming the file, line and field, and with `scheme`
    labels outside it are refused (names are matched case-insensitively, as `LabelScheme.parse` does)."""
    path = str(path)
    if not Path(path).is_file():
        raise FileNotFoundError(f"no such corrections file: {path}")
    corrections: list[Correction] = []
    seen: dict[str, int] = {}
    for row, item in read_jsonl_rows(path):
        for key in ("id", "new_label"):
            if not isinstance(item.get(key), str) or not item[key].strip():
                raise DataError("missing, empty or not a string", path=path, row=row, column=key)
        old = item.get("old_label")
        if old is not None and not isinstance(old, str):
            raise DataError("expected a string or null", path=path, row=row, column="old_label")
        for key in ("annotator", "time"):
            if not isinstance(item.get(key, ""), str):
                raise DataError("expected a string", path=path, row=row, column=key)
        if item.get("time"):
            parse_time(item["time"], path=path, row=row)
        new = item["new_label"]
        if scheme is not None:
            try:
                new = scheme.parse(new)
                old = scheme.parse(old) if old else old
            except LabelError as error:
                raise DataError(str(error), path=path, row=row,
                                column="new_label" if new == item["new_label"] else "old_label") from None
        if item["id"] in seen:
            raise DataError(f"id {item['id']!r} also on line {seen[item['id']]}; one correction per id", path=path,
                            row=row, column="id")
        seen[item["id"]] = row
        corrections.append(Correction(id=item["id"], new_label=new, old_label=old,
                                      annotator=item.get("annotator") or "", time=item.get("time") or ""))
    return corrections


def merge_corrections(earlier: Iterable[Correction], later: Iterable[Correction]) -> list[Correction]:
    """One row per id, sorted by id: the later `time` wins; on equal (or missing) times, `later` wins."""
    merged: dict[str, Correction] = {}
    for correction in [*earlier, *later]:
        kept = merged.get(correction.id)
        if kept is None or sort_time(correction) >= sort_time(kept):
            merged[correction.id] = correction
    return [merged[key] for key in sorted(merged)]


def sort_time(correction: Correction) -> datetime:
    return parse_time(correction.time) if correction.time else datetime.min.replace(tzinfo=timezone.utc)


def write_corrections(path: str | os.PathLike, corrections: Iterable[Correction]) -> int:
    """Write corrections sorted by id, atomically; returns the count."""
    return write_jsonl(path, (c.to_dict() for c in sorted(corrections, key=lambda c: c.id)))


def apply_corrections(records: Sequence[Record], corrections: Sequence[Correction], *, path: str = "",
                      sha256: str = "", require_all: bool = True) -> tuple[list[Record], CorrectionSummary]:
    """Copies of `records` with each corrected record's label set to its correction's new_label (module docs).

    With `require_all`, an id of `corrections` that is not among `records` raises a DataError naming `path` and a
    few of the ids; without it, the caller checks `CorrectionSummary.applied_ids` over several record lists
    (`check_all_applied`)."""
    by_id = {c.id: c for c in corrections}
    summary = CorrectionSummary(path=path, sha256=sha256, count=len(by_id))
    out = []
    for record in records:
        correction = by_id.get(record.id)
        if correction is None:
            out.append(record)
            continue
        summary.applied_ids.add(record.id)
        if correction.old_label is not None and record.label is not None and record.label != correction.old_label:
            summary.stale += 1
        if record.label == correction.new_label:
            out.append(record)
            continue
        summary.changed += 1
        out.append(replace(record, label=correction.new_label, meta={**record.meta, CORRECTED_FROM: record.label}))
    if require_all:
        check_all_applied(corrections, summary.applied_ids, path)
    return out, summary


def check_all_applied(corrections: Sequence[Correction], applied_ids: set[str], path: str = "") -> None:
    """Refuse corrections whose ids matched no record, naming up to five of them."""
    missing = sorted({c.id for c in corrections} - applied_ids)
    if missing:
        shown = ", ".join(repr(i) for i in missing[:5])
        raise DataError(f"{len(missing)} corrected ids are not in the data (e.g. {shown}); the corrections belong "
                        "to other data, or those pairs were removed", path=path or None)


def load_and_apply(path: str | os.PathLike, record_lists: Sequence[Sequence[Record]],
                   scheme: LabelScheme | None = None) -> tuple[list[list[Record]], CorrectionSummary]:
    """`read_corrections` then `apply_corrections` to each of `record_lists` (e.g. the training and the evaluation
    pairs); every id of the file must be in one of them."""
    corrections = read_corrections(path, scheme)
    summary = CorrectionSummary(path=str(path), sha256=file_sha256(path), count=len(corrections))
    out = []
    for records in record_lists:
        corrected, applied = apply_corrections(records, corrections, require_all=False)
        summary.changed += applied.changed
        summary.stale += applied.stale
        summary.applied_ids |= applied.applied_ids
        out.append(corrected)
    check_all_applied(corrections, summary.applied_ids, str(path))
    return out, summary


__all__ = ["CORRECTED_FROM", "Correction", "CorrectionSummary", "apply_corrections", "check_all_applied",
           "file_sha256", "load_and_apply", "merge_corrections", "parse_time", "read_corrections",
           "write_corrections"]
