"""Prompt templates and label verbalisation.

Layout: everything that does not depend on the pair comes first (the *prefix*: instruction and label definitions), so
its KV cache can be computed once and shared; the *pair* part follows and ends right before the answer. The prefix and
the pair are tokenized separately and concatenated, at training and at scoring time alike, so that the shared prefix
has the same token ids in every sequence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from lref.data.records import Record
from lref.labels import LabelScheme

PROMPT_VERSION = "direct-v1"

ANSWER_CUE = "Relevance:"

MATCH_HINT = "match_hint"
"""The `Record.meta` key of a pair's match hint; a model's manifest says `match_hints: true` when it trained on them."""


class VerbalizationError(ValueError):
    """Label words whose first tokens collide, so one forward pass cannot tell them apart."""


@dataclass(frozen=True)
class Prompt:
    prefix: str
    pair: str

    @property
    def text(self) -> str:
        return self.prefix + self.pair


def instruction(scheme: LabelScheme) -> str:
    """The pair-independent instruction carrying the scheme's label definitions."""
    return (
        "You judge how relevant a product is to an e-commerce search query.\n"
        "Grades, from most to least relevant:\n"
        f"{scheme.describe()}\n"
        f"Answer with one grade: {', '.join(scheme.words)}.\n\n"
    )


def match_hint(record: Record) -> str:
    """Which query words the product text contains: `found` (same crude stem), `close` (`word~title word`: part of a
    title word, e.g. `deck~deckover`, or a near spelling) and `missing`. Small LMs read spelling and numbers poorly;
    on Home Depot this line is worth about 2 points of weighted-F1 to Gemma-3-270M (docs/homedepot.md)."""
    import difflib

    from lref.baselines.lexical import product_text, stem, tokenize

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


def product_fields(record: Record, max_description_chars: int = 300) -> str:
    """The product part of every prompt and cross-encoder input: title, the match hint when the record carries one
    (`with_match_hints`), brand, attributes and a cut description."""
    lines = [f"Product: {record.title}"]
    if record.meta.get(MATCH_HINT):  # next to the title, so no truncation of a long product text cuts it
        lines.append(f"Query words in product: {record.meta[MATCH_HINT]}")
    if record.brand:
        lines.append(f"Brand: {record.brand}")
    if record.attributes:
        lines.append("Attributes: " + "; ".join(f"{k}: {v}" for k, v in record.attributes.items()))
    if record.description:
        description = record.description.strip()
        if len(description) > max_description_chars:
            description = description[:max_description_chars].rsplit(" ", 1)[0] + " ..."
        lines.append(f"Description: {description}")
    return "\n".join(lines)


def direct_prompt(record: Record, scheme: LabelScheme) -> Prompt:
    """The direct-classification prompt; the answer is one label word right after the cue."""
    pair = f"Query: {record.query}\n{product_fields(record)}\n{ANSWER_CUE}"
    return Prompt(prefix=instruction(scheme), pair=pair)


def label_completion(scheme: LabelScheme, label: str) -> str:
    """What the model should write after the cue: a space, then the grade's word."""
    return f" {scheme.word(label)}"


def encode_prompt(tokenizer, prompt: Prompt, add_bos: bool = True) -> tuple[list[int], list[int]]:
    """Token ids of (prefix, pair), tokenized separately so the prefix ids never depend on the pair."""
    prefix_ids = tokenizer(prompt.prefix, add_special_tokens=False)["input_ids"]
    if add_bos and tokenizer.bos_token_id is not None:
        prefix_ids = [tokenizer.bos_token_id, *prefix_ids]
    pair_ids = tokenizer(prompt.pair, add_special_tokens=False)["input_ids"]
    return prefix_ids, pair_ids


def label_token_ids(tokenizer, scheme: LabelScheme) -> list[int]:
    """First token id of each verbalised label; raises VerbalizationError when two labels share one."""
    ids = []
    for label in scheme.labels:
        tokens = tokenizer(label_completion(scheme, label), add_special_tokens=False)["input_ids"]
        if not tokens:
            raise VerbalizationError(f"label {label!r} tokenizes to nothing")
        ids.append(tokens[0])
    seen: dict[int, str] = {}
    for label, token in zip(scheme.labels, ids):
        if token in seen:
            raise VerbalizationError(
                f"labels {seen[token]!r} and {label!r} of scheme {scheme.name!r} start with the same token "
                f"({tokenizer.convert_ids_to_tokens(token)!r}) for this tokenizer; give the scheme distinct words"
            )
        seen[token] = label
    return ids
