"""What identifies a run's inputs: content hashes, library versions and the config fields that leave outputs alone.

Every resumable folder (a stage's run directory, a trainer's checkpoints, a teacher cache) is matched on a
fingerprint built from these helpers, so that two copies of the same logic cannot drift.

    >>> sha256_json({"b": 1, "a": [2]}) == sha256_json({"a": [2], "b": 1})
    True
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
import platform
from collections.abc import Iterable, Sequence
from dataclasses import asdict, field, fields, is_dataclass
from typing import Any

NEUTRAL = "output_neutral"
"""Field metadata key: True on config fields that change how a run goes (threads, progress bars, logging, where it
writes, whether it resumes) but never what it produces; fingerprints leave them out."""

ADDED_FIELDS = "FINGERPRINT_ADDED_FIELDS"
"""Class attribute of a config dataclass naming fields it gained after run directories were fingerprinted without
them: such a field enters fingerprints only when set to something other than its default, so existing runs stay
valid."""

CORE_LIBRARIES = ("lref", "torch", "transformers", "peft", "accelerate")


def sha256_json(obj: Any) -> str:
    """sha256 of `obj` as JSON with sorted keys (objects JSON cannot write are written as `str`)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def data_hash(records: Sequence[Any]) -> str:
    """sha256 over the records' id, query, title and label, in order."""
    digest = hashlib.sha256()
    for record in records:
        digest.update(json.dumps([record.id, record.query, record.title, record.label], ensure_ascii=False).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def library_versions(extra: Iterable[str] = ()) -> dict[str, str]:
    """Python's version and the installed versions of the core libraries plus `extra` (absent ones are left out)."""
    versions = {"python": platform.python_version()}
    for name in (*CORE_LIBRARIES, *extra):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return versions


def neutral_field(default: Any, help: str) -> Any:
    """A dataclass field flagged as not changing the output (see `NEUTRAL`)."""
    return field(default=default, metadata={"help": help, NEUTRAL: True})


def neutral_names(config_cls: type) -> tuple[str, ...]:
    """The names of a config dataclass's fields flagged as not changing the output."""
    return tuple(f.name for f in fields(config_cls) if f.metadata.get(NEUTRAL))


def settings_of(config: Any, exclude: Iterable[str] = ()) -> dict[str, Any]:
    """A config dataclass as a dict without its output-neutral fields, the names in `exclude`, and the fields it
    gained later (`ADDED_FIELDS`) while they hold their default."""
    if not is_dataclass(config):
        raise TypeError(f"expected a config dataclass, got {type(config).__name__}")
    skip = {*neutral_names(type(config)), *exclude}
    added = set(getattr(type(config), ADDED_FIELDS, ()))
    defaults = {f.name: f.default for f in fields(config) if f.name in added}
    return {key: value for key, value in asdict(config).items()
            if key not in skip and not (key in added and value == defaults.get(key))}


__all__ = ["ADDED_FIELDS", "CORE_LIBRARIES", "NEUTRAL", "data_hash", "library_versions", "neutral_field",
           "neutral_names", "settings_of", "sha256_json"]
