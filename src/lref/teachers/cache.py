"""Teacher answers, cached by content in append-only JSONL files, so a re-run never asks a teacher again.

Layout: a cache root (in a pipeline run ``RUN/teacher_cache``, beside ``stages/``, so no stage reset deletes it;
standalone, ``teacher_cache`` beside the stage's output folder, see `default_cache_root`) holds one folder per
teacher (`teacher_dir`: a readable slug of its name plus a hash of it) with

* ``<task>.jsonl``: one answer per line (Explanation fields plus `key`, see `teacher_key`, a hash of the task, the
  teacher, its text version and the pair's content), so stages and runs with the same teacher share answers;
* ``<task>.skipped.jsonl``: pairs the teacher refused non-retryably (`lref.teachers.base.TeacherRefusal`, e.g. an
  HTTP 400 for a prompt over the context length), with the error: they get no answer and are not asked again
  (delete the file to retry them).

Rows are appended, flushed and fsynced after each chunk, so a ``kill -9`` loses at most the chunk being asked; a
last line cut off by a kill is ignored on reading and cut away before the next append. A line broken elsewhere is a
DataError (the file was edited). `teach` reads the files, asks the teacher only for what is missing, and skips
refused pairs while they stay few (`check_skips`): many refusals are a systemic failure and stop the run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from lref.data.records import DataError, Record
from lref.io import read_jsonl_lines, write_jsonl
from lref.labels import LabelScheme
from lref.prompts.cot import TASKS
from lref.prompts.rules import RuleSet
from lref.teachers.base import TEACHER_PROMPT_VERSION, Explanation, Teacher, TeacherError, TeacherRefusal

logger = logging.getLogger(__name__)

TEACHER_FILE = "teacher_{task}.jsonl"
"""The per-stage cache file of one task's answers in older runs (read by nothing now; `lref teach --out` files
share the format)."""
CACHE_DIR = "teacher_cache"
"""The cache root's folder name: in a pipeline run directory, or beside a standalone stage's output folder."""
ANSWERS_FILE = "{task}.jsonl"
HTTP_CACHE_NAME = "http_responses.sqlite"
"""The openai teacher's response cache (SQLite, keyed by model, messages and sampling) in the cache root."""
MAX_SKIPS = 0.05
"""Default bound on refused pairs (`check_skips`): below 1 a share of the pairs asked (here 5 %) ..."""
MIN_SKIPS_ALLOWED = 5
"""... but never fewer than this many pairs; 1 or more: a number of pairs."""


def default_cache_root(output_dir: str | Path) -> Path:
    """Where a stage writing to `output_dir` keeps its teacher answers: for a pipeline stage
    (``RUN/stages/<stage>/model``) the run's ``RUN/teacher_cache``, which no stage reset deletes; else
    ``teacher_cache`` beside the output folder (``runs/cot`` -> ``runs/teacher_cache``), so re-creating the output
    folder keeps them and sibling stages share them."""
    path = Path(output_dir).absolute()
    if path.name == "model" and path.parent.parent.name == "stages":
        return path.parents[2] / CACHE_DIR
    return path.parent / CACHE_DIR


def teacher_dir(root: str | Path, teacher: str) -> Path:
    """The folder of one teacher's answers under cache root `root`: a filesystem-safe slug of the teacher's name and
    a hash of the full name (two names with the same slug get different folders)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", teacher).strip("._-")[:60] or "teacher"
    return Path(root) / f"{slug}-{hashlib.sha256(teacher.encode()).hexdigest()[:8]}"


def skipped_path(answers_path: str | Path) -> Path:
    """The skip list beside an answers file: ``ee.jsonl`` -> ``ee.skipped.jsonl``."""
    path = Path(answers_path)
    return path.with_name(f"{path.name.removesuffix('.jsonl')}.skipped.jsonl")


def teacher_key(task: str, teacher: str, record: Record, wrong_label: str | None, rules: RuleSet | None) -> str:
    """Cache key of one teacher answer: the task, the teacher and its text version, the pair, its label, the wrong
    decision, the rules."""
    rules_text = rules.describe() if (rules is not None and task == "ra") else None
    payload = [task, teacher, TEACHER_PROMPT_VERSION, record.id, record.query, record.title, record.brand,
               record.description, record.label, wrong_label, rules_text]
    return hashlib.sha256(json.dumps(payload, ensure_ascii=False, default=str).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------------------------------
# Append-only JSONL that survives kill -9


def read_rows(path: str | Path) -> tuple[list[tuple[int, Any]], bool]:
    """The rows of a JSONL file as (line number, parsed JSON or None when unparsable), and whether its last line was
    cut off (no final newline and not parsable: a write killed midway), which is left out. Lines are split on "\\n"
    only (`lref.io.split_jsonl_lines`), so a U+2028 or U+0085 inside a value stays in its line."""
    path = Path(path)
    if not path.is_file():
        return [], False
    lines = read_jsonl_lines(path)
    rows: list[tuple[int, Any]] = []
    for number, line in lines:
        try:
            rows.append((number, json.loads(line)))
        except json.JSONDecodeError:
            rows.append((number, None))
    torn = bool(rows) and rows[-1][1] is None and not path.read_bytes().endswith(b"\n")
    return (rows[:-1] if torn else rows), torn


def append_rows(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    """Append rows to a JSONL file, flushed and fsynced before returning (they survive a kill -9 from then on).
    A last line cut off by an earlier kill is cut away first, so the new rows start on a line of their own."""
    rows = list(rows)
    if not rows:
        return 0
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size:
            handle.seek(size - 1)
            if handle.read(1) != b"\n":  # a kill cut the last line: drop it, or end it when it is whole
                handle.seek(0)
                data = handle.read()
                start = data.rfind(b"\n") + 1
                try:
                    json.loads(data[start:])
                    handle.write(b"\n")
                except ValueError:
                    handle.truncate(start)
        handle.seek(0, os.SEEK_END)
        handle.write(b"".join(json.dumps(row, ensure_ascii=False).encode("utf-8") + b"\n" for row in rows))
        handle.flush()
        os.fsync(handle.fileno())
    return len(rows)


def read_teacher_file(path: str | Path) -> dict[str, Explanation]:
    """The cached answers of a teacher file (JSONL of Explanation fields plus `key`), by key. A last line cut off by
    a killed run is ignored; any other unreadable line is a DataError."""
    cached: dict[str, Explanation] = {}
    rows, _ = read_rows(path)
    for row, item in rows:
        try:
            if item is None:
                raise ValueError("not JSON")
            cached[item["key"]] = Explanation.from_dict(item)
        except (ValueError, KeyError, TypeError) as error:
            raise DataError(f"unreadable teacher cache line ({error}); delete the file to regenerate",
                            path=str(path), row=row) from None
    return cached


def read_skipped(path: str | Path) -> dict[str, dict[str, Any]]:
    """The pairs a teacher refused (a skip list, `skipped_path`), by key: {key, task, id, error}. Unreadable lines
    are ignored (the pair is asked again)."""
    rows, _ = read_rows(path)
    return {item["key"]: item for _, item in rows if isinstance(item, dict) and "key" in item}


def allowed_skips(asked: int, limit: float = MAX_SKIPS) -> int:
    """How many refused pairs of `asked` are tolerated: `limit` pairs when it is 1 or more, else that share of the
    pairs asked, but at least `MIN_SKIPS_ALLOWED`."""
    if limit < 0:
        raise ValueError(f"the skip limit must not be negative, not {limit}")
    return int(limit) if limit >= 1 else max(MIN_SKIPS_ALLOWED, int(limit * asked))


def check_skips(skipped: int, asked: int, limit: float = MAX_SKIPS, *, where: str = "",
                last_error: str | None = None) -> None:
    """TeacherError when more pairs were refused than `allowed_skips` tolerates: a systemic failure (a wrong model
    or prompt, an endpoint refusing everything), not a few bad pairs."""
    allowed = allowed_skips(asked, limit)
    if skipped > allowed:
        raise TeacherError(
            f"the teacher refused {skipped} of {asked} pairs, more than the {allowed} that are skipped "
            f"(teacher_max_skips={limit}); this looks systemic, not a few bad pairs"
            + (f" (last: {last_error})" if last_error else "") + (f"; skip list: {where}" if where else "")
        )


def teach(
    teacher: Teacher,
    task: str,
    records: Sequence[Record],
    scheme: LabelScheme,
    *,
    rules: RuleSet | None = None,
    wrong_labels: Sequence[str] | None = None,
    cache_path: str | Path | None = None,
    chunk_size: int = 32,
    progress: bool = True,
    max_skips: float = MAX_SKIPS,
) -> tuple[list[Explanation], dict[str, Any]]:
    """One teacher explanation per record, in input order, reading and extending the JSONL cache at `cache_path`
    (an answers file, e.g. ``teacher_dir(root, teacher.name) / "ee.jsonl"``; its skip list is `skipped_path`).

    New answers are asked for in chunks of `chunk_size` and appended (fsynced) after each, so a killed run loses at
    most one chunk. A chunk the teacher refuses (TeacherRefusal) is asked pair by pair; a pair refused on its own is
    recorded in the skip list and gets an Explanation with ``label=None`` and ``error="skipped: ..."`` (never asked
    again), unless more pairs were refused than `check_skips` tolerates: then TeacherError, and this call's refusals
    are not recorded (a systemic failure says nothing about the pairs). Returns the explanations and counts:
    requested, cache_hits, generated, failed (no parsable label), skipped (refused, now or before), skipped_file,
    seconds, pairs_per_s (generated pairs per second of teacher time), hit_rate.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}: choose one of {', '.join(TASKS)}")
    if task == "ra" and rules is None:
        raise ValueError("RA needs a rule set")
    if task == "dr" and (wrong_labels is None or len(wrong_labels) != len(records)):
        raise ValueError("DR needs one wrong decision per record")
    wrong = list(wrong_labels) if task == "dr" else [None] * len(records)
    keys = [teacher_key(task, teacher.name, r, w, rules) for r, w in zip(records, wrong)]
    cached = read_teacher_file(cache_path) if cache_path else {}
    skip_file = skipped_path(cache_path) if cache_path else None
    skipped = read_skipped(skip_file) if skip_file else {}
    missing = [i for i, key in enumerate(keys) if key not in cached and key not in skipped]
    hits = sum(key in cached for key in keys)
    refused: dict[str, dict[str, Any]] = {}  # the current chunk's refusals, recorded after the bound check
    recorded: set[str] = set()  # the refusals this call recorded

    def ask(indices: list[int]) -> list[Explanation]:
        batch = [records[i] for i in indices]
        if task == "ee":
            return teacher.explain(batch, scheme)
        if task == "ra":
            return teacher.apply_rules(batch, rules)
        return teacher.reflect(batch, [wrong[i] for i in indices], scheme)

    seconds = 0.0
    with tqdm(total=len(missing), desc=f"teacher {teacher.name} {task}", unit="pair",
              disable=not progress or not missing) as bar:
        for start in range(0, len(missing), chunk_size):
            chunk = missing[start : start + chunk_size]
            started = time.perf_counter()
            answered: list[tuple[int, Explanation]] = []
            try:
                answered = list(zip(chunk, ask(chunk)))
            except TeacherRefusal:
                for i in chunk:  # find the refused pair(s): ask one by one (answers cached below the teacher stay)
                    try:
                        answered += list(zip([i], ask([i])))
                    except TeacherRefusal as error:
                        refused[keys[i]] = {"key": keys[i], "task": task, "id": records[i].id,
                                            "teacher": teacher.name, "error": str(error)[:500]}
            seconds += time.perf_counter() - started
            for i, answer in answered:
                cached[keys[i]] = answer
            if cache_path:
                append_rows(cache_path, ({"key": keys[i], **answer.to_dict()} for i, answer in answered))
            if refused:
                n_skipped = sum(key in skipped or key in refused for key in keys)
                try:
                    check_skips(n_skipped, len(records), max_skips, where=str(skip_file or ""),
                                last_error=list(refused.values())[-1]["error"])
                except TeacherError:
                    if skip_file and recorded:  # a systemic failure says nothing about the pairs: forget them
                        write_jsonl(skip_file, (row for key, row in read_skipped(skip_file).items()
                                                if key not in recorded))
                    raise
                if skip_file:
                    append_rows(skip_file, [row for key, row in refused.items() if key not in skipped])
                recorded.update(refused)
                for row in refused.values():
                    logger.warning("teacher %s refused pair %r (%s): skipped", teacher.name, row["id"], row["error"])
                skipped.update(refused)
                refused = {}
            bar.update(len(chunk))
    out = []
    for key, record in zip(keys, records):
        if key in cached:
            out.append(cached[key])
        else:
            out.append(Explanation(id=record.id, kind=task, analysis="", label=None, teacher=teacher.name,
                                   error=f"skipped: {skipped[key]['error']}"))
    n_skipped = sum(key not in cached for key in keys)
    stats = {
        "requested": len(records),
        "cache_hits": hits,
        "generated": sum(keys[i] in cached for i in missing),
        "failed": sum(not explanation.ok for explanation in out) - n_skipped,
        "skipped": n_skipped,
        "skipped_file": str(skip_file) if skip_file and n_skipped else None,
        "seconds": round(seconds, 3),
        "pairs_per_s": round(len(missing) / seconds, 2) if seconds > 0 else None,
        "hit_rate": round(hits / len(records), 4) if records else None,
    }
    return out, stats


__all__ = [
    "ANSWERS_FILE", "CACHE_DIR", "HTTP_CACHE_NAME", "MAX_SKIPS", "MIN_SKIPS_ALLOWED", "TEACHER_FILE", "allowed_skips",
    "append_rows", "check_skips", "default_cache_root", "read_rows", "read_skipped", "read_teacher_file",
    "skipped_path", "teach", "teacher_dir", "teacher_key",
]
