"""Query-level splits and a summary of a labelled set."""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from lref.data.records import Record
from lref.labels import LabelScheme, get_scheme

DEFAULT_FRACTIONS = {"train": 0.8, "dev": 0.1, "test": 0.1}


def normalise_query(query: str) -> str:
    """The form under which two queries count as the same: case-folded, whitespace collapsed."""
    return " ".join(query.casefold().split())


def _unit_interval(seed: int, query: str) -> float:
    """A uniform number in [0, 1) fixed by seed and normalised query (sha256, stable across runs and machines)."""
    digest = hashlib.sha256(f"{seed}\x1f{normalise_query(query)}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def check_fractions(fractions: Mapping[str, float]) -> dict[str, float]:
    """Validate split fractions: named, each in [0, 1], summing to 1. Returns them as floats, order kept."""
    if not fractions:
        raise ValueError("fractions must name at least one split")
    checked = {}
    for name, value in fractions.items():
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"split names must be non-empty strings, got {name!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"fraction for split {name!r} must be a number, got {value!r}") from None
        if not (0.0 <= number <= 1.0):
            raise ValueError(f"fraction for split {name!r} must lie in [0, 1], got {value!r}")
        checked[name] = number
    total = math.fsum(checked.values())
    if not math.isclose(total, 1.0, abs_tol=1e-6):
        raise ValueError(
            f"fractions must sum to 1, got {total:g} ({', '.join(f'{k}={v:g}' for k, v in checked.items())})"
        )
    return checked


def split_by_query(
    records: Sequence[Record], fractions: Mapping[str, float] | None = None, seed: int = 0
) -> dict[str, list[Record]]:
    """Split records so that every normalised query falls on exactly one side.

    Each query draws a number in [0, 1) from sha256(seed, normalised query) and goes to the split whose cumulative
    fraction range holds it. So a query keeps its side when records are added or reordered, and split sizes match
    `fractions` only approximately (closely for thousands of queries). Default: train 0.8, dev 0.1, test 0.1.
    Records keep their input order within each split.
    """
    checked = check_fractions(DEFAULT_FRACTIONS if fractions is None else fractions)
    names = list(checked)
    bounds = []
    cumulative = 0.0
    for name in names:
        cumulative += checked[name]
        bounds.append(cumulative)
    bounds[-1] = math.inf  # rounding must never leave a query without a side
    last_nonzero = [name for name in names if checked[name] > 0][-1]

    side_of: dict[str, str] = {}
    splits: dict[str, list[Record]] = {name: [] for name in names}
    for record in records:
        key = normalise_query(record.query)
        side = side_of.get(key)
        if side is None:
            draw = _unit_interval(seed, key)
            # Skip zero-width splits so a fraction of 0 really gets nothing.
            side = next(
                (n for n, bound in zip(names, bounds, strict=True) if draw < bound and checked[n] > 0), last_nonzero
            )
            side_of[key] = side
        splits[side].append(record)
    return splits


def _flag_rate(records: Sequence[Record], key: str) -> float | None:
    flags = [bool(record.meta[key]) for record in records if key in record.meta]
    return sum(flags) / len(flags) if flags else None


def describe_records(records: Sequence[Record], scheme: LabelScheme | str) -> dict[str, Any]:
    """Summary of a record set.

    Keys: pairs, queries (distinct normalised queries), mean_pairs_per_query, labelled, unlabelled, label_counts and
    label_shares (scheme order; shares of the labelled pairs), majority_label, majority_floor (share of the most
    common label: the accuracy of always predicting it), rater_disagreement_rate and label_noise_rate (share of the
    records carrying meta["rater_disagreement"] / meta["label_noise"] that have it true; None when none carry it).
    A label outside `scheme` raises LabelError.
    """
    scheme = get_scheme(scheme)
    counts = Counter(record.label for record in records if record.label is not None)
    for label in counts:
        scheme.index(label)
    labelled = sum(counts.values())
    label_counts = {label: counts.get(label, 0) for label in scheme.labels}
    label_shares = {label: (count / labelled if labelled else 0.0) for label, count in label_counts.items()}
    majority_label = max(scheme.labels, key=lambda label: label_counts[label]) if labelled else None
    queries = len({normalise_query(record.query) for record in records})
    return {
        "scheme": scheme.name,
        "pairs": len(records),
        "queries": queries,
        "mean_pairs_per_query": len(records) / queries if queries else None,
        "labelled": labelled,
        "unlabelled": len(records) - labelled,
        "label_counts": label_counts,
        "label_shares": label_shares,
        "majority_label": majority_label,
        "majority_floor": label_shares[majority_label] if majority_label else None,
        "rater_disagreement_rate": _flag_rate(records, "rater_disagreement"),
        "label_noise_rate": _flag_rate(records, "label_noise"),
    }
