"""Match hints: a line naming the query words found, close or missing in the product text, carried in a record's
`meta` so that every prompt and cross-encoder input built from it shows the same line."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import replace

from lref.data.records import Record
from lref.data.text import product_text, stem, tokenize

MATCH_HINT = "match_hint"
"""The `Record.meta` key holding a record's match hint."""


def match_hint(record: Record) -> str:
    """Which query words the product text contains: `found` (same crude stem), `close` (`word~title word`: part of a
    title word, e.g. `deck~deckover`, or a near spelling) and `missing`. Small LMs read spelling and numbers poorly;
    on Home Depot this line is worth about 2 points of weighted-F1 to Gemma-3-270M (docs/homedepot.md)."""
    title = [stem(token) for token in tokenize(product_text(record))]
    found, close, missing = [], [], []
    for word in dict.fromkeys(tokenize(record.query)):
        word_stem = stem(word)
        if word_stem in title:
            found.append(word)
            continue
        near = [token for token in title if len(word_stem) >= 3 and word_stem in token][:1]
        near = near or difflib.get_close_matches(word_stem, title, n=1, cutoff=0.8)
        if near:
            close.append(f"{word}~{near[0]}")
        else:
            missing.append(word)
    parts = [f"found: {', '.join(found) or 'none'}"]
    if close:
        parts.append(f"close: {', '.join(close)}")
    parts.append(f"missing: {', '.join(missing) or 'none'}")
    return "; ".join(parts)


def with_match_hints(records: Sequence[Record]) -> list[Record]:
    """Copies of `records` carrying their `match_hint` in `meta`, so every prompt and cross-encoder input built from
    them shows it (`product_fields`). Idempotent."""
    return [record if MATCH_HINT in record.meta
            else replace(record, meta={**record.meta, MATCH_HINT: match_hint(record)}) for record in records]


def records_for_model(records: Sequence[Record], manifest: dict | None) -> list[Record]:
    """`records` as a model reads them: with match hints when its manifest says it trained with them."""
    return with_match_hints(records) if (manifest or {}).get("match_hints") else list(records)


def match_hint_manifest(records: Sequence[Record]) -> dict[str, bool]:
    """The manifest entry of a model trained on `records`: `{"match_hints": True}` when they all carry a match hint,
    so scorers loading the model add hints to the pairs they are given (`ScorerConfig.match_hints`)."""
    return {"match_hints": True} if records and all(MATCH_HINT in record.meta for record in records) else {}


__all__ = ["MATCH_HINT", "match_hint", "match_hint_manifest", "records_for_model", "with_match_hints"]
