"""Atomic file writes (output appears whole under its final name, or not at all) and JSON-lines reading."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

MANIFEST_NAME = "lref_manifest.json"
"""The file in a model folder that says what the model is (kind, scheme, how it was trained)."""

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO[Any]]:
    """Write to a temporary file beside `path` and rename it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the mode a plain open() would
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_write(path) as handle:
        json.dump(obj, handle, indent=2, ensure_ascii=False, sort_keys=False)
        handle.write("\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> int:
    count = 0
    with atomic_write(path) as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count


def split_jsonl_lines(text: str) -> list[tuple[int, str]]:
    """(1-based line number, line) of every non-blank line of JSON-lines text, split on "\\n" only.

    `str.splitlines` would also break at U+2028, U+2029, U+0085, \\x0b, \\x0c, \\x1c-\\x1e, which a JSON string may
    hold unescaped (``json.dumps(..., ensure_ascii=False)`` writes them raw), cutting a valid line in two. Blank lines
    count, so the numbers match what an editor shows."""
    return [(number, line) for number, line in enumerate(text.split("\n"), start=1) if line.strip()]


def read_jsonl_lines(path: str | os.PathLike, encoding: str = "utf-8") -> list[tuple[int, str]]:
    """`split_jsonl_lines` of a file's text: (line number, line) of its non-blank lines.

    The one way lref reads JSON lines. The bytes are decoded as they are (no newline translation, so a stray "\\r"
    cannot add lines) and a leading byte-order mark is dropped; a UnicodeDecodeError propagates for the caller to name
    the file."""
    text = Path(path).read_bytes().decode(encoding)
    return split_jsonl_lines(text[1:] if text.startswith("\ufeff") else text)
