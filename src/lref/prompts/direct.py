"""The direct prompt: (instruction with the label definitions | query and product) -> " <label>".

Layout: everything that does not depend on the pair comes first (the *prefix*: instruction and label definitions), so
its KV cache can be computed once and shared; the *pair* part follows and ends right before the answer. The prefix and
the pair are tokenized separately and concatenated, at training and at scoring time alike, so that the shared prefix
has the same token ids in every sequence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lref.data.hints import MATCH_HINT
from lref.data.records import Record
from lref.labels import LabelScheme

PROMPT_VERSION = "direct-v1"

ANSWER_CUE = "Relevance:"

PAIR_TAIL_TOKENS = 8
"""When a pair is cut to fit, its last tokens (the answer or analysis cue) are always kept."""


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


def truncate_pair(pair_ids: Sequence[int], budget: int, keep_tail: int = PAIR_TAIL_TOKENS) -> list[int]:
    """Cut `pair_ids` to `budget` tokens, dropping the end of the product text but keeping the last `keep_tail` tokens
    (the cue), so the prompt still ends where the answer is expected. The one pair cut of training and scoring."""
    pair_ids = list(pair_ids)
    if len(pair_ids) <= budget:
        return pair_ids
    if budget < 1:
        raise ValueError(f"no room left for the pair (budget {budget} tokens); raise max_length")
    keep_tail = min(keep_tail, budget)
    return pair_ids[: budget - keep_tail] + pair_ids[len(pair_ids) - keep_tail :]


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
