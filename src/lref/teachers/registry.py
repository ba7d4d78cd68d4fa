"""Teachers by name: what the `teacher` setting of `lref cot`, `lref train dpo --mode cot` and `lref teach` names."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lref.data.records import Record
from lref.teachers.base import Teacher
from lref.teachers.rules import RulesTeacher

TEACHERS = ("rules", "openai", "local")
"""Teacher names: `rules` (offline, deterministic), `openai` (an OpenAI-compatible endpoint), `local` (an HF model)."""
DEFAULT_TEACHER_URL = "http://127.0.0.1:8000/v1"


def check_teacher(name: str, model: str | None = None, *, needs_model: bool = True) -> None:
    """Refuse (ValueError) an unknown teacher name, or, when it will be used (`needs_model`), the openai teacher
    without a model name."""
    if name not in TEACHERS:
        raise ValueError(f"unknown teacher {name!r}: choose one of {', '.join(TEACHERS)}")
    if needs_model and name == "openai" and not model:
        raise ValueError("the openai teacher needs teacher_model: the model name its endpoint serves")


def make_teacher(
    name: str,
    *,
    model: str | None = None,
    base_url: str = DEFAULT_TEACHER_URL,
    cache_path: str | Path | None = None,
    records: Sequence[Record] = (),
    progress: bool = True,
) -> Teacher:
    """A teacher by name. `rules` learns brands from `records`; `openai` keeps its SQLite cache at `cache_path`."""
    if name == "rules":
        return RulesTeacher().fit(records)
    if name == "openai":
        from lref.teachers.openai import OpenAITeacher, OpenAITeacherConfig  # needs httpx, only for this teacher

        return OpenAITeacher(OpenAITeacherConfig(
            base_url=base_url, model=model or "", cache_path=str(cache_path) if cache_path else None, progress=progress,
        ))
    if name == "local":
        from lref.teachers.local import LocalTeacher, LocalTeacherConfig

        return LocalTeacher(LocalTeacherConfig(model=model or "gemma-3-270m", progress=progress))
    raise ValueError(f"unknown teacher {name!r}: choose one of {', '.join(TEACHERS)}")


__all__ = ["DEFAULT_TEACHER_URL", "TEACHERS", "check_teacher", "make_teacher"]
