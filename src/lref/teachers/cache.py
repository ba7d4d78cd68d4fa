"""Teacher answers cached per task in JSONL (``teacher_<task>.jsonl``), so a re-run never asks a teacher again.

Each answer is stored under `teacher_key`: the task, the teacher and its text version, the pair, its label, the
wrong decision (DR) and the rules (RA). `teach` reads the file, asks the teacher only for what is missing, and
rewrites the file (atomically) after each chunk.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from lref.data.records import DataError, Record
from lref.io import write_jsonl
from lref.labels import LabelScheme
from lref.prompts.cot import TASKS
from lref.prompts.rules import RuleSet
from lref.teachers.base import TEACHER_PROMPT_VERSION, Explanation, Teacher

TEACHER_FILE = "teacher_{task}.jsonl"
"""The cache file of one task's teacher answers, in a stage's output folder."""


def teacher_key(task: str, teacher: str, record: Record, wrong_label: str | None, rules: RuleSet | None) -> str:
    """Cache key of one teacher answer: the task, the teacher and its text version, the pair, its label, the wrong
    decision, the rules."""
    rules_text = rules.describe() if (rules is not None and task == "ra") else None
    payload = [task, teacher, TEACHER_PROMPT_VERSION, record.id, record.query, record.title, record.brand,
               record.description, record.label, wrong_label, rules_text]
    return hashlib.sha256(json.dumps(payload, ensure_ascii=False, default=str).encode()).hexdigest()


def read_teacher_file(path: str | Path) -> dict[str, Explanation]:
    """The cached answers of a teacher file (JSONL of Explanation fields plus `key`), by key."""
    path = Path(path)
    cached: dict[str, Explanation] = {}
    if not path.is_file():
        return cached
    for row, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            cached[item["key"]] = Explanation.from_dict(item)
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise DataError(f"unreadable teacher cache line ({error}); delete the file to regenerate",
                            path=str(path), row=row) from None
    return cached


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
) -> tuple[list[Explanation], dict[str, Any]]:
    """One teacher explanation per record, in input order, reading and extending the JSONL cache at `cache_path`.

    New answers are asked for in chunks of `chunk_size`; the cache file is rewritten (atomically) after each, so an
    interrupted run loses at most one chunk. Returns the explanations and counts: requested, cache_hits, generated,
    failed (no parsable label), seconds, pairs_per_s (generated pairs per second of teacher time), hit_rate.
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
    missing = [i for i, key in enumerate(keys) if key not in cached]
    hits = len(records) - len(missing)
    seconds = 0.0
    with tqdm(total=len(missing), desc=f"teacher {teacher.name} {task}", unit="pair",
              disable=not progress or not missing) as bar:
        for start in range(0, len(missing), chunk_size):
            chunk = missing[start : start + chunk_size]
            batch = [records[i] for i in chunk]
            started = time.perf_counter()
            if task == "ee":
                answers = teacher.explain(batch, scheme)
            elif task == "ra":
                answers = teacher.apply_rules(batch, rules)
            else:
                answers = teacher.reflect(batch, [wrong[i] for i in chunk], scheme)
            seconds += time.perf_counter() - started
            for i, answer in zip(chunk, answers):
                cached[keys[i]] = answer
            if cache_path:
                write_jsonl(cache_path, ({"key": key, **value.to_dict()} for key, value in cached.items()))
            bar.update(len(chunk))
    out = [cached[key] for key in keys]
    stats = {
        "requested": len(records),
        "cache_hits": hits,
        "generated": len(missing),
        "failed": sum(not explanation.ok for explanation in out),
        "seconds": round(seconds, 3),
        "pairs_per_s": round(len(missing) / seconds, 2) if seconds > 0 else None,
        "hit_rate": round(hits / len(records), 4) if records else None,
    }
    return out, stats


__all__ = ["TEACHER_FILE", "read_teacher_file", "teach", "teacher_key"]
