"""Helpers shared by the config dataclasses: each field's `metadata["help"]` feeds the command line and the docs."""

from __future__ import annotations

from dataclasses import MISSING, fields
from typing import Any


def field_help(config_cls: type, name: str) -> str:
    """The help text of field `name` of a config dataclass."""
    for f in fields(config_cls):
        if f.name == name:
            return f.metadata.get("help", "")
    raise KeyError(f"{config_cls.__name__} has no field {name!r}")


def field_default(config_cls: type, name: str) -> Any:
    """The default value of field `name` of a config dataclass."""
    for f in fields(config_cls):
        if f.name == name:
            if f.default is not MISSING:
                return f.default
            if f.default_factory is not MISSING:
                return f.default_factory()
            raise KeyError(f"{config_cls.__name__}.{name} has no default")
    raise KeyError(f"{config_cls.__name__} has no field {name!r}")
