"""Training examples as text and as token ids: the prompt the scorer sees, then the completion to learn.

Each example is the prompt exactly as the scorer sees it (`encode_prompt`: the instruction prefix and the pair part
tokenized separately) followed by the completion plus EOS; prompt positions are labelled -100, so the loss covers
the completion only. `direct_example` is the direct prompt -> " Label" example of a labelled record; other stages
build `TextExample`s of their own (a chain of thought ending in the answer cue and the label, say).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lref.data.records import DataError, Record
from lref.labels import LabelScheme
from lref.prompts import PAIR_TAIL_TOKENS, Prompt, direct_prompt, encode_prompt, label_completion, truncate_pair

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TextExample:
    """One training example as text: the model reads `prompt` (prefix and pair tokenized separately, as the scorer
    does) and learns to write `completion`, then EOS. `label` is the gold label the completion ends in (for class
    weights and label counts). `target`, when given, spreads the completion's first token over several labels
    (label -> weight, summing to 1): the loss there is the weighted sum of each label's first-token loss."""

    id: str
    prompt: Prompt
    completion: str
    label: str
    target: dict[str, float] | None = None


def rating_target(record: Record, scheme: LabelScheme) -> dict[str, float] | None:
    """The soft target of a record carrying a raw score (the raters' mean, on the scheme's ratings):
    `scheme.rating_split` of it, or None without one. The record's label must be one of the grades the split names."""
    if record.raw_score is None:
        return None
    label = scheme.parse(record.label)
    target = scheme.rating_split(float(record.raw_score))
    if label not in target:
        raise DataError(
            f"record {record.id!r}: raw_score {record.raw_score} does not sit beside its label {label!r} on the "
            f"ratings of scheme {scheme.name!r} ({dict(zip(scheme.labels, scheme.ratings))}); soft labels need raw "
            "scores on that scale"
        )
    return target


def direct_example(record: Record, scheme: LabelScheme, soft_label: bool = False) -> TextExample:
    """The direct example of a labelled record: the direct prompt, then the verbalised label; with `soft_label`, the
    record's `rating_target` as its first token's target."""
    label = scheme.parse(record.label)
    target = rating_target(record, scheme) if soft_label else None
    return TextExample(record.id, direct_prompt(record, scheme), label_completion(scheme, label), label, target)


def text_completion_ids(tokenizer, completion: str) -> list[int]:
    """Token ids of a completion, then EOS."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token")
    return tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def completion_ids(tokenizer, scheme: LabelScheme, label: str) -> list[int]:
    """Token ids the model is trained to write after the direct prompt: the verbalised label, then EOS."""
    return text_completion_ids(tokenizer, label_completion(scheme, label))


def build_example(tokenizer, record: Record, scheme: LabelScheme, max_length: int | None = None) -> dict[str, Any]:
    """The direct training example of a record, tokenized (see `encode_example`)."""
    return encode_example(tokenizer, direct_example(record, scheme), max_length)


def encode_example(tokenizer, example: TextExample, max_length: int | None = None) -> dict[str, Any]:
    """One tokenized example: `input_ids` = prompt + completion, `labels` = -100 on the prompt, the ids elsewhere,
    `prefix_length` = tokens of the pair-independent instruction prefix (BOS included) at the start of `input_ids`.
    Too long, the pair loses its middle; the prefix, the pair's last tokens (the cue) and the completion are kept."""
    prefix_ids, pair_ids = encode_prompt(tokenizer, example.prompt)
    answer = text_completion_ids(tokenizer, example.completion)
    truncated = False
    if max_length is not None and len(prefix_ids) + len(pair_ids) + len(answer) > max_length:
        budget = max_length - len(prefix_ids) - len(answer)
        if budget < 2 * PAIR_TAIL_TOKENS:
            raise DataError(
                f"record {example.id!r}: max_length {max_length} leaves no room for the pair after the "
                f"{len(prefix_ids)}-token instruction and the {len(answer)}-token completion; raise max_length"
            )
        pair_ids = truncate_pair(pair_ids, budget)
        truncated = True
    prompt_ids = prefix_ids + pair_ids
    return {
        "input_ids": prompt_ids + answer,
        "labels": [-100] * len(prompt_ids) + answer,
        "prefix_length": len(prefix_ids),
        "truncated": truncated,
    }


class ExampleDataset:
    """A list of tokenized examples (plain dicts) in the shape `Trainer`'s data loader wants."""

    def __init__(self, examples: list[dict[str, Any]]):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.examples[index]


def build_dataset(
    tokenizer, records: Sequence[Record], scheme: LabelScheme, max_length: int | None, weights: dict[str, float] | None
) -> ExampleDataset:
    """The direct examples of labelled records, tokenized."""
    return build_example_dataset(tokenizer, [direct_example(r, scheme) for r in records], max_length, weights)


def build_example_dataset(
    tokenizer, examples: Sequence[TextExample], max_length: int | None, weights: dict[str, float] | None,
    first_token_ids: dict[str, int] | None = None,
) -> ExampleDataset:
    """Tokenized examples with their loss weight; an example with a `target` also carries `soft_ids` and
    `soft_probs` (its labels' first-token ids, from `first_token_ids`, and their weights)."""
    encoded, truncated = [], 0
    for example in examples:
        item = encode_example(tokenizer, example, max_length)
        truncated += item.pop("truncated")
        item["weight"] = 1.0 if weights is None else weights[example.label]
        if example.target:
            if first_token_ids is None:
                raise ValueError("examples with a soft target need the labels' first-token ids")
            first = next(token for token in item["labels"] if token != -100)
            if first != first_token_ids[example.label]:
                raise DataError(f"example {example.id!r}: its completion does not start with the first token of "
                                f"label {example.label!r}, so a soft target cannot replace it")
            item["soft_ids"] = [first_token_ids[label] for label in example.target]
            item["soft_probs"] = [float(weight) for weight in example.target.values()]
        encoded.append(item)
    if truncated:
        logger.warning("%d of %d examples exceeded max_length=%s and lost part of their product text",
                       truncated, len(examples), max_length)
    return ExampleDataset(encoded)


def prefix_grouped_order(examples: Sequence[TextExample], batch_size: int, seed: int = 0) -> list[int]:
    """A training order in which every run of `batch_size` examples shares one instruction prefix, so each batch can
    take the shared-prefix path: examples shuffled within their prefix group, cut into batches, the full batches
    shuffled; the groups' partial batches come last (the only batches that may mix prefixes)."""
    groups: dict[str, list[int]] = {}
    for index, example in enumerate(examples):
        groups.setdefault(example.prompt.prefix, []).append(index)
    rng = random.Random(seed)
    full, partial = [], []
    for indices in groups.values():
        rng.shuffle(indices)
        for start in range(0, len(indices), batch_size):
            batch = indices[start : start + batch_size]
            (full if len(batch) == batch_size else partial).append(batch)
    rng.shuffle(full)
    return [index for batch in full + partial for index in batch]


def examples_hash(examples: Sequence[TextExample]) -> str:
    """sha256 over the examples' id, prompt text, completion and label, in order."""
    digest = hashlib.sha256()
    for example in examples:
        fields = [example.id, example.prompt.prefix, example.prompt.pair, example.completion, example.label]
        digest.update(json.dumps(fields + ([example.target] if example.target else []), ensure_ascii=False).encode())
        digest.update(b"\n")
    return digest.hexdigest()


class PadCollator:
    """Right-pads `input_ids` (pad id), `labels` (-100) and builds the attention mask and the weight vector; passes
    `prefix_lengths` on when every example carries a `prefix_length`, and `soft_ids` / `soft_probs` (zero-padded)
    when any carries a soft target."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, batch: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        width = max(len(example["input_ids"]) for example in batch)
        input_ids = torch.full((len(batch), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, example in enumerate(batch):
            n = len(example["input_ids"])
            input_ids[row, :n] = torch.tensor(example["input_ids"])
            labels[row, :n] = torch.tensor(example["labels"])
            attention_mask[row, :n] = 1
        weights = torch.tensor([float(example.get("weight", 1.0)) for example in batch])
        out = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, "weights": weights}
        if all("prefix_length" in example for example in batch):
            out["prefix_lengths"] = torch.tensor([int(example["prefix_length"]) for example in batch])
        width = max((len(example.get("soft_ids", ())) for example in batch), default=0)
        if width:  # rows without a soft target keep zero weights, which selects their ordinary loss
            out["soft_ids"] = torch.zeros((len(batch), width), dtype=torch.long)
            out["soft_probs"] = torch.zeros((len(batch), width))
            for row, example in enumerate(batch):
                n = len(example.get("soft_ids", ()))
                out["soft_ids"][row, :n] = torch.tensor(example.get("soft_ids", []), dtype=torch.long)
                out["soft_probs"][row, :n] = torch.tensor(example.get("soft_probs", []))
        return out



__all__ = [
    "ExampleDataset",
    "PadCollator",
    "TextExample",
    "build_dataset",
    "build_example",
    "build_example_dataset",
    "completion_ids",
    "direct_example",
    "encode_example",
    "examples_hash",
    "prefix_grouped_order",
    "rating_target",
    "text_completion_ids",
]
