"""Generic record files (JSONL, CSV, Parquet), the checks every source shares, and the canonical writer.

Row numbers in errors are 1-based data rows. For CSV and Parquet, row 1 is the first row after the header. For
JSONL, a row is the file's line number (blank lines count, so the number matches what an editor shows).
"""

from __future__ import annotations

import codecs
import io
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from lref.data.records import DataError, Record, stable_id
from lref.io import atomic_write, split_jsonl_lines, write_jsonl
from lref.labels import LabelError, LabelScheme

FIELDS = ("id", "query", "title", "label", "brand", "description", "attributes", "raw_score", "exposure", "meta")
GENERIC_FORMATS = ("jsonl", "csv", "parquet")
_EXTENSIONS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet"}
_SURROGATE = re.compile("[\udc80-\udcff]")  # bytes kept by errors="surrogateescape"


def detect_format(path: str | os.PathLike) -> str:
    """The generic format implied by the file extension (.jsonl/.json, .csv/.tsv, .parquet)."""
    suffix = Path(path).suffix.lower()
    try:
        return _EXTENSIONS[suffix]
    except KeyError:
        raise DataError(
            f"cannot tell the format from the extension {suffix or '(none)'!r}; pass a format "
            f"(jsonl, csv, parquet, homedepot, esci, wands, crowdflower)",
            path=str(path),
        ) from None


# ---------------------------------------------------------------------------------------------------------------
# Shared checks: every reader and adapter builds its records through these, so errors read the same everywhere.


def is_empty(value: Any) -> bool:
    """True for None, NaN and blank strings: the values that count as an empty cell."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def require_columns(present: Iterable[str], required: Iterable[str], *, path: str | os.PathLike) -> None:
    """Raise a DataError naming the first required column that `present` lacks."""
    present = list(present)
    missing = [name for name in required if name not in present]
    if missing:
        raise DataError(
            f"missing column{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))} "
            f"(found: {', '.join(map(repr, present)) or 'none'})",
            path=str(path),
            column=missing[0],
        )


def _text(value: Any) -> str | None:
    if is_empty(value):
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # ids and labels that a reader typed as float, e.g. 4.0 -> "4"
    return str(value).strip()


def parse_number(value: Any, *, path: str | os.PathLike, row: int, column: str) -> float | None:
    """A finite float from a number or numeric string; None for an empty cell; otherwise a DataError."""
    path = str(path)
    if is_empty(value):
        return None
    if isinstance(value, bool):
        raise DataError(f"expected a number, got {value!r}", path=path, row=row, column=column)
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise DataError(f"expected a number, got {value!r}", path=path, row=row, column=column) from None
    if not math.isfinite(number):
        raise DataError(f"expected a finite number, got {value!r}", path=path, row=row, column=column)
    return number


def _mapping(value: Any, *, path: str, row: int, column: str) -> dict[str, Any]:
    """A dict from a dict, a JSON object string, or a Parquet map (list of key/value pairs)."""
    if is_empty(value):
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise DataError(
                f"expected a JSON object, got invalid JSON ({error.msg})", path=path, row=row, column=column
            ) from None
        except (ValueError, RecursionError) as error:
            raise DataError(f"expected a JSON object, got invalid JSON ({error})", path=path, row=row,
                            column=column) from None
    if isinstance(value, list) and all(isinstance(item, tuple) and len(item) == 2 for item in value):
        value = dict(value)
    if not isinstance(value, dict):
        raise DataError(f"expected an object, got {type(value).__name__}", path=path, row=row, column=column)
    return value


def build_record(
    fields: Mapping[str, Any],
    *,
    path: str | os.PathLike,
    row: int,
    scheme: LabelScheme,
    labelled: bool,
    sources: Mapping[str, str] | None = None,
    extra_meta: Mapping[str, Any] | None = None,
) -> Record:
    """Check one row's canonical fields and build its Record.

    `fields` maps canonical field names to raw values. `sources` maps a canonical field to the source column, so
    errors name the column the user sees. When `labelled`, an empty or unknown label is an error; otherwise the
    record has no label. `extra_meta` is merged under the row's own `meta`.
    """
    path = str(path)
    sources = sources or {}

    def column(field: str) -> str:
        return sources.get(field, field)

    for field in ("id", "query", "title", "label", "brand", "description"):
        if isinstance(fields.get(field), str) and "\x00" in fields[field]:
            raise DataError("NUL byte in the text (a binary or damaged file?)", path=path, row=row,
                            column=column(field))
    query = _text(fields.get("query"))
    if not query:
        raise DataError("empty query", path=path, row=row, column=column("query"))
    title = _text(fields.get("title"))
    if not title:
        raise DataError("empty title", path=path, row=row, column=column("title"))
    label = None
    if labelled:
        raw_label = _text(fields.get("label"))
        if raw_label is None:
            raise DataError(
                "empty label (a labelled file needs a label on every row)", path=path, row=row, column=column("label")
            )
        try:
            label = scheme.parse(raw_label)
        except LabelError as error:
            raise DataError(str(error), path=path, row=row, column=column("label")) from None
    attributes = {
        str(key): str(value)
        for key, value in _mapping(fields.get("attributes"), path=path, row=row, column=column("attributes")).items()
        if not is_empty(value)
    }
    meta = {**(extra_meta or {}), **_mapping(fields.get("meta"), path=path, row=row, column=column("meta"))}
    return Record(
        id=_text(fields.get("id")) or stable_id(query, title, row),
        query=query,
        title=title,
        label=label,
        brand=_text(fields.get("brand")),
        description=_text(fields.get("description")),
        attributes=attributes,
        raw_score=parse_number(fields.get("raw_score"), path=path, row=row, column=column("raw_score")),
        exposure=parse_number(fields.get("exposure"), path=path, row=row, column=column("exposure")),
        meta=meta,
    )


class IdChecker:
    """Refuses a second record with an id already seen, naming both rows."""

    def __init__(self, path: str | os.PathLike, column: str = "id"):
        self.path, self.column = str(path), column
        self.first_row: dict[str, int] = {}

    def check(self, record_id: str, row: int) -> None:
        first = self.first_row.setdefault(record_id, row)
        if first != row:
            raise DataError(
                f"duplicate id {record_id!r} (first seen in row {first})", path=self.path, row=row, column=self.column
            )


# ---------------------------------------------------------------------------------------------------------------
# Raw file access.


def _decode_message(error: UnicodeDecodeError, raw: bytes, encoding: str) -> str:
    line = raw.count(b"\n", 0, error.start) + 1
    return (
        f"not valid {encoding}: byte 0x{raw[error.start]:02x} at byte offset {error.start} (line {line}); "
        f"pass encoding= with the file's real encoding (e.g. latin-1)"
    )


def check_encoding(encoding: str, *, path: str | os.PathLike) -> None:
    """Raise a DataError naming `encoding` and the file unless `encoding` is a text encoding Python knows."""
    try:
        codecs.lookup(encoding)
        b"a".decode(encoding)  # raises LookupError for a bytes-to-bytes codec such as base64
    except UnicodeError:
        pass  # a text encoding that cannot decode this one byte (utf-16, utf-32)
    except (LookupError, TypeError):
        raise DataError(
            f"unknown text encoding {encoding!r}; pass encoding= with a codec name such as utf-8, latin-1 or cp1252",
            path=str(path),
        ) from None


def refuse_nul(frame: pd.DataFrame, *, path: str | os.PathLike) -> None:
    """Raise a DataError naming the row and column of the first cell (or column name) holding a NUL byte.

    A NUL is never text: it marks a binary or truncated file, or a UTF-16 file read as UTF-8."""
    hint = "(a binary or damaged file, or a UTF-16 file: pass encoding=utf-16)"
    for name in frame.columns:
        if "\x00" in str(name):
            raise DataError(f"NUL byte in the header {hint}", path=str(path), column=str(name))
    for row, values in enumerate(frame.itertuples(index=False), start=1):
        for name, value in zip(frame.columns, values, strict=True):
            if isinstance(value, str) and "\x00" in value:
                raise DataError(f"NUL byte in the cell {hint}", path=str(path), row=row, column=str(name))


def _decode(raw: bytes, encoding: str) -> str:
    if raw.startswith(codecs.BOM_UTF8):  # a UTF-8 byte-order mark is never part of a column name, whatever the encoding
        raw = raw[len(codecs.BOM_UTF8):]
    text = raw.decode(encoding)
    return text[1:] if text.startswith("\ufeff") else text


def _parse_csv(text: str, *, path: Path, sep: str) -> pd.DataFrame:
    try:
        frame = pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False, na_filter=False)
    except pd.errors.EmptyDataError:
        raise DataError("the file is empty (no header row)", path=str(path)) from None
    except pd.errors.ParserError as error:
        # pandas counts file lines from 1 including the header ("line N"), or records from 0 at the header ("row N");
        # our rows exclude the header.
        line, record = re.search(r"line (\d+)", str(error)), re.search(r"at row (\d+)", str(error))
        row = int(line.group(1)) - 1 if line else int(record.group(1)) if record else None
        where = " (in the header line)" if row == 0 else ""
        raise DataError(f"malformed CSV{where}: {error}", path=str(path), row=row or None) from None
    frame.columns = [str(name).strip() for name in frame.columns]
    return frame


def read_csv_frame(path: str | os.PathLike, *, encoding: str = "utf-8", sep: str | None = None) -> pd.DataFrame:
    """Read a CSV/TSV file with every cell as a string ('' when empty); `sep` defaults by extension.

    A byte that `encoding` cannot decode, or a NUL byte, raises a DataError naming the row and column that hold it;
    an unknown `encoding` raises a DataError naming it and the file.
    """
    path = Path(path)
    sep = sep or ("\t" if path.suffix.lower() == ".tsv" else ",")
    check_encoding(encoding, path=path)
    raw = path.read_bytes()
    try:
        text = _decode(raw, encoding)
    except UnicodeDecodeError as error:
        row, column = _first_undecodable_cell(raw, encoding, path=path, sep=sep)
        raise DataError(_decode_message(error, raw, encoding), path=str(path), row=row, column=column) from None
    frame = _parse_csv(text, path=path, sep=sep)
    if "\x00" in text:
        refuse_nul(frame, path=path)
    return frame


def _first_undecodable_cell(raw: bytes, encoding: str, *, path: Path, sep: str) -> tuple[int | None, str | None]:
    """Row and column of the first cell that `encoding` cannot decode, or (None, None) if that cannot be told."""

    def undecodable(text: str) -> bool:
        if text.isascii():
            return False
        try:
            text.encode("latin-1").decode(encoding)
            return False
        except UnicodeDecodeError:
            return True

    # Latin-1 decodes any bytes and keeps the CSV structure of any ASCII-compatible encoding, one char per byte.
    try:
        frame = _parse_csv(raw.decode("latin-1"), path=path, sep=sep)
    except DataError:
        return None, None
    for name in frame.columns:
        if undecodable(name):
            return None, name
    for row, values in enumerate(frame.itertuples(index=False), start=1):
        for name, value in zip(frame.columns, values, strict=True):
            if undecodable(value):
                return row, name
    return None, None


def read_jsonl_rows(path: str | os.PathLike, *, encoding: str = "utf-8") -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line of a JSON-lines file; a file holding one JSON array also works.

    For an array, the row is the element's 1-based position.
    """
    path = Path(path)
    check_encoding(encoding, path=path)
    raw = path.read_bytes()
    try:
        text = _decode(raw, encoding)
    except UnicodeDecodeError as error:
        row = raw.count(b"\n", 0, error.start) + 1
        line = raw.split(b"\n")[row - 1].decode(encoding, errors="surrogateescape")
        column = None
        try:
            item = json.loads(line)
            if isinstance(item, dict):
                column = next((key for key, value in item.items() if _SURROGATE.search(str(value))), None)
        except json.JSONDecodeError:
            pass
        raise DataError(_decode_message(error, raw, encoding), path=str(path), row=row, column=column) from None
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as error:
            raise DataError(f"invalid JSON: {error.msg} (line {error.lineno})", path=str(path)) from None
        except (ValueError, RecursionError) as error:
            raise DataError(f"invalid JSON: {error}", path=str(path)) from None
        numbered = list(enumerate(items, start=1))
    else:
        numbered = []
        # Split on "\n" only: str.splitlines would also break at U+2028, which JSON strings may hold unescaped.
        for row, line in split_jsonl_lines(text):
            try:
                numbered.append((row, json.loads(line)))
            except json.JSONDecodeError as error:
                raise DataError(
                    f"invalid JSON: {error.msg} (character {error.pos + 1})", path=str(path), row=row
                ) from None
            except (ValueError, RecursionError) as error:  # a 5000-digit integer, thousands of nested brackets
                raise DataError(f"invalid JSON: {error}", path=str(path), row=row) from None
    for row, item in numbered:
        if not isinstance(item, dict):
            raise DataError(f"expected a JSON object, got {type(item).__name__}", path=str(path), row=row)
    return numbered


_TYPE_CHECKS: dict[str, Callable[[pa.DataType], bool]] = {
    "string": lambda t: pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t),
    "integer": pa.types.is_integer,
    "number": lambda t: pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t),
}
_TYPE_CHECKS["id"] = lambda t: _TYPE_CHECKS["string"](t) or pa.types.is_integer(t)
_TYPE_CHECKS["label"] = _TYPE_CHECKS["id"]
_TYPE_CHECKS["object"] = lambda t: _TYPE_CHECKS["string"](t) or pa.types.is_map(t) or pa.types.is_struct(t)


def read_parquet_schema(path: str | os.PathLike) -> pa.Schema:
    """The schema of a Parquet file; a file that is not Parquet raises a DataError."""
    try:
        return pq.read_schema(path)
    except (pa.ArrowInvalid, OSError) as error:
        if isinstance(error, FileNotFoundError):
            raise
        raise DataError(f"not a readable Parquet file ({error})", path=str(path)) from None


def check_parquet_schema(
    path: str | os.PathLike, schema: pa.Schema, expected: Mapping[str, str], *, required: Iterable[str] | None = None
) -> None:
    """Check that the `required` columns (default: all of `expected`) exist and every expected column present has
    the right kind of type: 'string', 'integer', 'number', 'id' (string or integer), 'label' or 'object'."""
    require_columns(schema.names, expected if required is None else required, path=path)
    for name, kind in expected.items():
        if name in schema.names:
            arrow_type = schema.field(name).type
            if not (pa.types.is_null(arrow_type) or _TYPE_CHECKS[kind](arrow_type)):
                raise DataError(f"has type {arrow_type}, expected {kind}", path=str(path), column=name)


def read_parquet_table(path: str | os.PathLike, columns: Iterable[str] | None = None) -> pa.Table:
    """Read (some columns of) a Parquet file; read errors become DataErrors naming the file."""
    try:
        return pq.read_table(path, columns=list(columns) if columns is not None else None)
    except pa.ArrowInvalid as error:
        raise DataError(f"cannot read Parquet data ({error})", path=str(path)) from None


# ---------------------------------------------------------------------------------------------------------------
# Generic formats.

_GENERIC_PARQUET_TYPES = {
    "id": "id",
    "query": "string",
    "title": "string",
    "label": "label",
    "brand": "string",
    "description": "string",
    "attributes": "object",
    "raw_score": "number",
    "exposure": "number",
    "meta": "object",
}


def _resolve_columns(columns: Mapping[str, str] | None, present: list[str], *, path: Path) -> dict[str, str]:
    """canonical field -> source column, for the fields this file has. Columns named explicitly must exist."""
    columns = dict(columns or {})
    unknown = [field for field in columns if field not in FIELDS]
    if unknown:
        raise DataError(f"unknown field {unknown[0]!r} in columns (fields: {', '.join(FIELDS)})", path=str(path))
    require_columns(present, columns.values(), path=path)
    mapping = {field: columns.get(field, field) for field in FIELDS}
    mapping = {field: source for field, source in mapping.items() if source in present}
    missing = [field for field in ("query", "title") if field not in mapping]
    if missing:
        raise DataError(
            f"missing column {missing[0]!r} (file columns: {', '.join(map(repr, present)) or 'none'}); "
            f"map one with --column {missing[0]}=COLUMN",
            path=str(path),
            column=columns.get(missing[0], missing[0]),
        )
    return mapping


def _records_from_rows(
    rows: Iterable[tuple[int, Mapping[str, Any]]], present: list[str], *, path: Path, scheme: LabelScheme, columns
) -> list[Record]:
    mapping = _resolve_columns(columns, present, path=path)
    used = set(mapping.values())
    labelled = "label" in mapping
    ids = IdChecker(path, column=mapping.get("id", "id"))
    records = []
    for row, values in rows:
        fields = {field: values.get(source) for field, source in mapping.items()}
        extra = {key: value for key, value in values.items() if key not in used and not is_empty(value)}
        record = build_record(
            fields, path=path, row=row, scheme=scheme, labelled=labelled, sources=mapping, extra_meta=extra
        )
        ids.check(record.id, row)
        records.append(record)
    return records


def read_generic(
    path: str | os.PathLike,
    format: str,
    *,
    scheme: LabelScheme,
    columns: Mapping[str, str] | None = None,
    encoding: str = "utf-8",
    sep: str | None = None,
) -> list[Record]:
    """Records from a JSONL, CSV or Parquet file with canonical (or `columns`-mapped) field names.

    Columns that map to no field are kept in each record's `meta`. `encoding` and `sep` apply to text formats.
    """
    path = Path(path)
    if format == "csv":
        frame = read_csv_frame(path, encoding=encoding, sep=sep)
        rows = enumerate(frame.to_dict("records"), start=1)
        return _records_from_rows(rows, list(frame.columns), path=path, scheme=scheme, columns=columns)
    if format == "jsonl":
        numbered = read_jsonl_rows(path, encoding=encoding)
        if not numbered:
            return []  # an empty file (e.g. an empty split) has no rows to check
        present = list(dict.fromkeys(key for _, item in numbered for key in item))
        return _records_from_rows(numbered, present, path=path, scheme=scheme, columns=columns)
    if format == "parquet":
        schema = read_parquet_schema(path)
        mapping = _resolve_columns(columns, schema.names, path=path)
        expected = {source: _GENERIC_PARQUET_TYPES[field] for field, source in mapping.items()}
        check_parquet_schema(path, schema, expected)
        rows = enumerate(read_parquet_table(path).to_pylist(), start=1)
        return _records_from_rows(rows, schema.names, path=path, scheme=scheme, columns=columns)
    raise DataError(f"unknown generic format {format!r} (expected one of {', '.join(GENERIC_FORMATS)})", path=str(path))


# ---------------------------------------------------------------------------------------------------------------
# Canonical writer.


def write_records(path: str | os.PathLike, records: Iterable[Record]) -> int:
    """Write records as canonical JSONL, or Parquet when `path` ends in .parquet; atomically. Returns the count.

    The output reads back through `load_records(path)` to equal records. Labelled and unlabelled records cannot
    share a file (a missing label in a labelled file is an error on reading), so mixing them is refused.
    """
    records = list(records)
    labelled = {record.label is not None for record in records}
    if len(labelled) > 1:
        raise DataError(
            "refusing to mix labelled and unlabelled records in one file; write them separately", path=str(path)
        )
    if Path(path).suffix.lower() == ".parquet":
        rows = [
            {
                "id": r.id,
                "query": r.query,
                "title": r.title,
                "label": r.label,
                "brand": r.brand,
                "description": r.description,
                "attributes": json.dumps(r.attributes, ensure_ascii=False) if r.attributes else None,
                "raw_score": r.raw_score,
                "exposure": r.exposure,
                "meta": json.dumps(r.meta, ensure_ascii=False) if r.meta else None,
            }
            for r in records
        ]
        schema = pa.schema(
            [(name, pa.float64() if name in ("raw_score", "exposure") else pa.string()) for name in FIELDS]
        )
        table = pa.Table.from_pylist(rows, schema=schema)
        if labelled != {True}:
            table = table.drop_columns(["label"])  # an unlabelled pool has no label column at all
        with atomic_write(path, mode="wb") as handle:
            pq.write_table(table, handle)
        return len(records)
    return write_jsonl(path, (record.to_dict() for record in records))
