"""LoRA supervised fine-tuning on the direct prompt: (query, product) -> " Label" <eos>.

Each example is the prompt exactly as the scorer sees it (`encode_prompt`: the instruction prefix and the pair part
tokenized separately) followed by the completion, `label_completion(scheme, label)` plus EOS. The loss covers the completion
tokens only; prompt positions are labelled -100.

Training runs on `transformers.Trainer` with one override, `compute_loss`: by default the LM head is applied only at
the positions that predict a completion token (about 3 per example) instead of at every position. With Gemma's 262k
vocabulary the full head dominates the cost of a step. TRL's fused LM head does the same only on Triton devices; on
CPU it projects every position, which is why this stage does not use `SFTTrainer`.

Other stages train free-text completions through the same loop: `train_sft_examples` takes `TextExample`s (a prompt
and the completion to write, e.g. a chain of thought ending in the answer cue and the label); `train_sft` builds the
direct examples from records and calls it.

Shared prefix (`share_prefix`, default on): every direct prompt starts with the same instruction (~110 of ~137
tokens with Gemma-3). When all rows of a batch start with the same prefix ids, `completion_loss` runs the prefix once
(batch 1, with gradients, `use_cache=True`), broadcasts its KV cache to the batch with `expand` views, and runs only
the rest of each row (pair + completion, right-padded) on that cache at positions `len(prefix) ...`, with the
attention mask over prefix + rest. The gradients reach the prefix through the cache, so loss and gradients equal the
plain forward's (tests: within 1e-5, sliding-window layers included). Other batches take the plain forward.

    >>> from lref.stages.sft import SFTStageConfig
    >>> SFTStageConfig(model="gemma-3-270m", output_dir="runs/sft").lora_r
    16
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import Counter
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lref.data.records import DataError, Record
from lref.data.validation import validate_records
from lref.device import is_main_process, prepare_device
from lref.fingerprint import data_hash, library_versions
from lref.labels import CLASS_BALANCE, LabelScheme, class_weights, get_scheme
from lref.models.zoo import stored_model_reference
from lref.prompts import (
    PAIR_TAIL_TOKENS,
    PROMPT_VERSION,
    Prompt,
    direct_prompt,
    encode_prompt,
    label_completion,
    match_hint_manifest,
    records_for_model,
    truncate_pair,
)
from lref.training import BF16_HELP, check_training_fields, training_arguments

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
RUN_FILE = "lref_run.json"
"""Written into the checkpoint folder when a run starts; resuming checks that the training data is the same."""


@dataclass
class SFTStageConfig:
    """Settings of the LoRA SFT stage. Every field's help text also feeds the command line (`lref train sft`)."""

    model: str = field(
        default="gemma-3-270m",
        metadata={"help": "Base model: a zoo name, an HF folder, or an lref adapter folder (merged before training)."},
    )
    scheme: str = field(default="graded3", metadata={"help": "Label scheme (preset name) the records are labelled in."})
    output_dir: str = field(
        default="runs/sft",
        metadata={"help": "Folder for the final adapter, tokenizer and manifest; checkpoints go to its checkpoints/."},
    )
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA branch."})
    target_modules: str | list[str] = field(
        default="all-linear",
        metadata={
            "help": "Modules that get LoRA: 'all-linear' (every linear layer but the LM head; beat attention-only "
            "in the design probes) or a list of module names such as ['q_proj', 'v_proj']."
        },
    )
    learning_rate: float = field(default=2e-4, metadata={"help": "Peak learning rate (linear decay)."})
    epochs: float = field(default=1.0, metadata={"help": "Training epochs; ignored when max_steps > 0."})
    max_steps: int = field(default=-1, metadata={"help": "Stop after this many optimizer steps (-1: run the epochs)."})
    batch_size: int = field(default=8, metadata={"help": "Examples per forward pass (training and evaluation)."})
    grad_accum: int = field(default=1, metadata={"help": "Forward passes accumulated per optimizer step."})
    max_length: int = field(
        default=512,
        metadata={
            "help": "Longest example in tokens. Longer pairs lose the middle of their product text; the instruction, "
            "the answer cue and the label are always kept."
        },
    )
    warmup_ratio: float = field(default=0.05, metadata={"help": "Fraction of the steps spent warming up the rate."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    eval_steps: int = field(
        default=0, metadata={"help": "Evaluate every this many steps when eval records are given (0: only at the end)."}
    )
    save_steps: int = field(default=100, metadata={"help": "Write a resumable checkpoint every this many steps."})
    save_total_limit: int = field(default=2, metadata={"help": "Checkpoints kept on disk (the newest ones)."})
    seed: int = field(default=0, metadata={"help": "Seed for LoRA initialisation, shuffling and dropout."})
    class_balance: str = field(
        default="none",
        metadata={
            "help": "Per-example loss weights by label frequency: 'none', 'sqrt' (square root of inverse frequency) "
            "or 'inverse' (inverse frequency); weights average 1 over the training set."
        },
    )
    soft_labels: bool = field(
        default=False,
        metadata={
            "help": "Train toward the raters' mean where a record carries one (raw_score, on the scheme's ratings): "
            "the label's first token is shared between the two grades that bracket it, by closeness (graded3: 2.67 "
            "is 0.67 Exact, 0.33 Partial). Records without a raw score keep their label."
        },
    )
    logits_at_labels_only: bool = field(
        default=True,
        metadata={"help": "Apply the LM head only where a completion token is predicted (same loss, much faster)."},
    )
    share_prefix: bool = field(
        default=True,
        metadata={
            "help": "Run the instruction prefix once per batch (with gradients) and share its KV cache across the "
            "batch's pairs; same loss and gradients, less compute. Batches whose prefixes differ take the ordinary "
            "path."
        },
    )
    resume: bool = field(
        default=False, metadata={"help": "Continue from the last checkpoint in output_dir instead of starting anew."}
    )
    threads: int | None = field(default=None, metadata={"help": "CPU threads for torch (default: torch's choice)."})
    use_cpu: bool | None = field(
        default=None, metadata={"help": "Train on the CPU (default: CPU unless a CUDA device is available)."}
    )
    bf16: bool | None = field(
        default=None,
        metadata={"help": BF16_HELP},
    )
    logging_steps: int = field(default=10, metadata={"help": "Log the training loss every this many steps."})
    progress: bool = field(default=True, metadata={"help": "Show progress bars."})

    def __post_init__(self) -> None:
        if self.class_balance not in CLASS_BALANCE:
            raise ValueError(f"class_balance must be one of {', '.join(CLASS_BALANCE)}, not {self.class_balance!r}")
        check_training_fields(self, ("lora_r", "batch_size", "grad_accum", "save_steps", "logging_steps", "max_length"))
        if isinstance(self.target_modules, tuple):
            self.target_modules = list(self.target_modules)


# ---------------------------------------------------------------------------------------------------------------------
# Data


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


class _ExampleDataset:
    """A list of tokenized examples (plain dicts) in the shape `Trainer`'s data loader wants."""

    def __init__(self, examples: list[dict[str, Any]]):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.examples[index]


def build_dataset(
    tokenizer, records: Sequence[Record], scheme: LabelScheme, max_length: int | None, weights: dict[str, float] | None
) -> _ExampleDataset:
    """The direct examples of labelled records, tokenized."""
    return build_example_dataset(tokenizer, [direct_example(r, scheme) for r in records], max_length, weights)


def build_example_dataset(
    tokenizer, examples: Sequence[TextExample], max_length: int | None, weights: dict[str, float] | None,
    first_token_ids: dict[str, int] | None = None,
) -> _ExampleDataset:
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
    return _ExampleDataset(encoded)


def prefix_grouped_order(examples: Sequence[TextExample], batch_size: int, seed: int = 0) -> list[int]:
    """A training order in which every run of `batch_size` examples shares one instruction prefix, so each batch can
    take the shared-prefix path: examples shuffled within their prefix group, cut into batches, the full batches
    shuffled; the groups' partial batches come last (the only batches that may mix prefixes)."""
    import random

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


# ---------------------------------------------------------------------------------------------------------------------
# Loss


_LOGIT_SCALES = ("logit_scale", "logits_scaling", "output_multiplier", "lm_head_multiplier")


def fast_head_supported(lm) -> bool:
    """Whether the model's logits are `lm_head(decoder(x))`, optionally soft-capped, so that projecting only some
    hidden states is exact. Models that rescale their logits fall back to the full forward."""
    text_config = lm.config.get_text_config()
    if any(getattr(text_config, name, None) not in (None, 1, 1.0) for name in _LOGIT_SCALES):
        logger.warning("%s rescales its logits: computing the full logits", type(lm).__name__)
        return False
    return lm.get_output_embeddings() is not None


def shared_prefix_length(inputs: dict[str, Any]) -> int:
    """The length of the instruction prefix that every row of the batch starts with, or 0 when the shared-prefix
    path does not apply: no `prefix_lengths`, fewer than 2 rows, prefixes of different length or ids, padding inside
    the prefix, no token after it, or a label predicted from inside the prefix."""
    lengths = inputs.get("prefix_lengths")
    input_ids = inputs["input_ids"]
    if lengths is None or input_ids.shape[0] < 2:
        return 0
    n = int(lengths[0])
    if n < 1 or n >= input_ids.shape[1] or bool((lengths != n).any()):
        return 0
    if not bool((input_ids[:, :n] == input_ids[:1, :n]).all()):
        return 0
    mask = inputs.get("attention_mask")
    if mask is not None and not bool(mask[:, : n + 1].all()):
        return 0
    return n if bool((inputs["labels"][:, : n + 1] == -100).all()) else 0


def _cache_keyword(module) -> str:
    """The name of a forward's cache argument: `cache` in transformers >= 5.2x, else `past_key_values`."""
    import inspect

    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


def _expand_cache(cache, batch_size: int):
    """A shallow copy of a one-row cache whose layers hold the keys/values broadcast to `batch_size` rows (`expand`
    views: differentiable, no copy; the backward sums the rows' gradients into the prefix). The copy's layers get
    new tensors when the batch's tokens are appended (`torch.cat`), so nothing autograd saved is mutated. Returns None
    for a cache of an unknown layout."""
    import copy

    import torch

    layers = getattr(cache, "layers", None)
    if layers is None:
        return None
    expanded = copy.copy(cache)
    clones = []
    for layer in layers:
        clone = copy.copy(layer)
        keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
        if torch.is_tensor(keys) and keys.numel():
            if keys.dim() != 4 or keys.shape[0] != 1 or not torch.is_tensor(values):
                return None
            clone.keys = keys.expand(batch_size, -1, -1, -1)
            clone.values = values.expand(batch_size, -1, -1, -1)
        clones.append(clone)
    expanded.layers = clones
    return expanded


def _forward_with_shared_prefix(module, decoder, inputs: dict[str, Any], n_prefix: int):
    """Run the prefix (row 0, batch 1) through `decoder` with a cache, then the rest of every row through `module`
    (the decoder or the full model) on that cache broadcast to the batch, at positions `n_prefix ...`. Returns the
    module's output for the positions after the prefix, or None when the cache cannot be shared."""
    import torch

    input_ids = inputs["input_ids"]
    rows, width = input_ids.shape
    prefix = decoder(input_ids=input_ids[:1, :n_prefix], use_cache=True)
    cache = getattr(prefix, "cache", None)
    if cache is None:
        cache = getattr(prefix, "past_key_values", None)
    cache = _expand_cache(cache, rows) if cache is not None else None
    if cache is None:
        return None
    attention_mask = inputs.get("attention_mask")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    position_ids = torch.arange(n_prefix, width, device=input_ids.device).unsqueeze(0).expand(rows, -1)
    return module(
        input_ids=input_ids[:, n_prefix:],
        attention_mask=attention_mask,  # prefix + rest, right-padded
        position_ids=position_ids,
        use_cache=True,
        **{_cache_keyword(decoder): cache},
    )


def completion_loss(
    model,
    inputs: dict[str, Any],
    *,
    logits_at_labels_only: bool = True,
    share_prefix: bool = True,
    num_items: Any = None,
):
    """Weighted next-token cross-entropy over the positions whose label is not -100 (at a row's first label position,
    its soft target's mix of label losses when the batch carries `soft_ids` / `soft_probs`; `token_losses`).

    Returns (sum of weighted token losses / `num_items`, number of label tokens). `num_items` defaults to the number
    of label tokens in this batch. With `logits_at_labels_only` the backbone's hidden states are projected through
    the LM head only at the positions that predict a label token; otherwise the model's full logits are used.

    With `share_prefix`, when every row starts with the same instruction prefix (`shared_prefix_length`), the prefix
    runs once (batch 1, with gradients) and its KV cache, broadcast to the batch, serves the rest of every row: the
    same loss and gradients as the plain forward (up to float rounding), with the prefix computed once instead of
    once per row. LoRA dropout then draws one mask for the prefix per batch instead of one per row (same
    expectation). Otherwise, or when the model's cache cannot be shared, the plain forward runs.
    """
    import torch
    from peft import PeftModel

    labels = inputs["labels"]
    weights = inputs.get("weights")
    shifted = labels[:, 1:]
    mask = shifted != -100
    targets = shifted[mask]
    soft = _soft_targets_at_labels(mask, inputs.get("soft_ids"), inputs.get("soft_probs"))
    lm = model.get_base_model() if isinstance(model, PeftModel) else model
    if logits_at_labels_only and not fast_head_supported(lm):
        logits_at_labels_only = False
    n_prefix = shared_prefix_length(inputs) if share_prefix else 0
    backbone = lm.get_decoder()
    module = backbone if logits_at_labels_only else model
    output = _forward_with_shared_prefix(module, backbone, inputs, n_prefix) if n_prefix else None
    if output is None:
        n_prefix = 0
        output = module(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"), use_cache=False)
    # Positions < n_prefix predict no label (checked), so the rows' rest lines up with `mask[:, n_prefix:]`.
    mask = mask[:, n_prefix:]
    if logits_at_labels_only:
        token_loss = head_token_losses(lm, output.last_hidden_state[:, :-1][mask], targets, soft)
    else:
        token_loss = token_losses(output.logits[:, :-1][mask], targets, *(soft or ()))
    if weights is not None:
        token_loss = token_loss * weights.to(token_loss.dtype)[:, None].expand_as(mask)[mask]
    count = int(mask.sum())
    denominator = num_items if num_items is not None else max(count, 1)
    if torch.is_tensor(denominator):
        denominator = denominator.to(token_loss.device).clamp(min=1)
    return token_loss.sum() / denominator, count


def _soft_targets_at_labels(mask, soft_ids, soft_probs):
    """(ids, probs) with one row per label position (in `mask`'s row-major order): a row's soft target at its first
    label position, zeros elsewhere; None when the batch has no soft targets."""
    import torch

    if soft_ids is None:
        return None
    counts = mask.sum(dim=1)
    first = torch.cumsum(counts, 0) - counts  # each row's first label position among the flattened ones
    rows = counts > 0
    ids = torch.zeros((int(counts.sum()), soft_ids.shape[1]), dtype=torch.long, device=soft_ids.device)
    probs = torch.zeros(ids.shape, dtype=soft_probs.dtype, device=soft_probs.device)
    ids[first[rows]] = soft_ids[rows]
    probs[first[rows]] = soft_probs[rows]
    return ids, probs


def token_losses(logits, targets, soft_ids=None, soft_probs=None):
    """Cross-entropy of `targets` under `logits` (positions x vocabulary); where a row of `soft_probs` has weight,
    the weighted sum of the cross-entropies of its `soft_ids` instead."""
    import torch
    import torch.nn.functional as F

    if soft_ids is None:
        return F.cross_entropy(logits.float(), targets, reduction="none")
    log_probs = F.log_softmax(logits.float(), dim=-1)
    hard = -log_probs.gather(1, targets[:, None]).squeeze(1)
    spread = -(log_probs.gather(1, soft_ids) * soft_probs.to(log_probs.dtype)).sum(dim=1)
    return torch.where(soft_probs.sum(dim=1) > 0, spread, hard)


HEAD_CHUNK = 256
"""Label positions projected through the LM head at a time. CoT completions put hundreds of label tokens in a batch,
and with Gemma's 262k-token vocabulary their logits would take gigabytes at once; each chunk is recomputed in the
backward pass instead of kept."""


def head_token_losses(lm, hidden, targets, soft=None):
    """`token_losses` under `lm`'s output layer (soft-capped as the model does) at the hidden states `hidden`
    (positions x width), `HEAD_CHUNK` positions at a time: the same values and gradients as one pass. `soft`:
    (soft_ids, soft_probs) per position, or None."""
    import torch
    from torch.utils.checkpoint import checkpoint

    head = lm.get_output_embeddings()
    cap = getattr(lm.config.get_text_config(), "final_logit_softcapping", None)

    def chunk_losses(states, *chunk_targets):
        logits = head(states)
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return token_losses(logits, *chunk_targets)

    columns = (hidden, targets, *(soft or ()))
    if len(targets) <= HEAD_CHUNK:
        return chunk_losses(*columns)
    recompute = torch.is_grad_enabled()
    chunks = [[column[i:i + HEAD_CHUNK] for column in columns] for i in range(0, len(targets), HEAD_CHUNK)]
    return torch.cat([checkpoint(chunk_losses, *chunk, use_reentrant=False) if recompute else chunk_losses(*chunk)
                      for chunk in chunks])


@contextmanager
def forward_replaced(module, forward):
    """Within the block, calling `module` runs `forward` instead of its own forward (hooks and wrappers kept). A
    forward set on the instance before (accelerate's autocast wrapper, say) is put back afterwards."""
    previous = module.__dict__.get("forward")
    module.forward = forward
    try:
        yield module
    finally:
        if previous is None:
            del module.forward
        else:
            module.forward = previous


def _make_trainer_class():
    from transformers import Trainer

    class CompletionTrainer(Trainer):
        """`Trainer` whose loss is `completion_loss` (weighted, LM head only at label positions if asked)."""

        # The loss is divided by the token count of the whole accumulated batch (`num_items_in_batch`), or by the
        # local count times the accumulation steps, so Trainer must not divide it again.
        loss_is_scaled_for_ga = True

        def __init__(self, *args, logits_at_labels_only: bool = True, share_prefix: bool = True, **kwargs):
            super().__init__(*args, **kwargs)
            self.logits_at_labels_only = logits_at_labels_only
            self.share_prefix = share_prefix

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            import torch

            inner = self.accelerator.unwrap_model(model)
            num_items = num_items_in_batch
            if num_items is None:
                local = int((inputs["labels"][:, 1:] != -100).sum())
                steps = self.current_gradient_accumulation_steps if inner.training else 1
                num_items = max(local, 1) * steps

            def loss_forward(**batch):
                # The replaced forward bypasses accelerate's autocast wrapper, so mixed precision is applied here.
                with torch.autocast(inputs["input_ids"].device.type, torch.bfloat16, enabled=self.args.bf16):
                    return completion_loss(
                        inner,
                        batch,
                        logits_at_labels_only=self.logits_at_labels_only,
                        share_prefix=self.share_prefix,
                        num_items=num_items,
                    )

            # DDP, FSDP and DeepSpeed sync gradients (or gather sharded weights) only around their own forward
            # call, so the whole loss (prefix pass included) runs as the model's forward for this one call.
            with forward_replaced(inner, loss_forward):
                loss, _ = model(**inputs)
            if num_items_in_batch is not None and self.args.average_tokens_across_devices and self.args.world_size > 1:
                # `num_items_in_batch` counts every process's tokens while DDP averages the gradients over processes.
                loss = loss * self.accelerator.num_processes
            return (loss, {"loss": loss}) if return_outputs else loss

    return CompletionTrainer


# ---------------------------------------------------------------------------------------------------------------------
# Entry point


def last_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest resumable checkpoint of a run in `output_dir`, if any."""
    from transformers.trainer_utils import get_last_checkpoint

    folder = Path(output_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return None
    found = get_last_checkpoint(str(folder))
    return Path(found) if found else None


def train_sft(
    config: SFTStageConfig,
    train_records: Sequence[Record],
    eval_records: Sequence[Record] | None = None,
    *,
    callbacks: list | None = None,
) -> Path:
    """Fine-tune `config.model` with LoRA on labelled records (direct prompt -> label) and return the adapter folder.

    The folder holds the PEFT adapter, the tokenizer and `lref_manifest.json`; `lref.models.loading.load_causal_lm`
    loads it back (base model plus adapter). `callbacks` are extra `transformers.TrainerCallback`s.
    """
    from lref.models.loading import read_manifest

    scheme = get_scheme(config.scheme)
    # continuing an adapter trained with match hints: the records read as they did for it
    start = read_manifest(config.model) if Path(config.model).is_dir() else None
    train_records = records_for_model(validate_records(train_records, scheme, "training"), start)
    eval_records = records_for_model(validate_records(eval_records, scheme, "evaluation"), start) if eval_records \
        else None
    soft = config.soft_labels
    return train_sft_examples(
        config,
        [direct_example(r, scheme, soft) for r in train_records],
        [direct_example(r, scheme, soft) for r in eval_records] if eval_records else None,
        callbacks=callbacks,
        train_hash=data_hash(train_records) + ("+soft-labels" if soft else ""),
        manifest_extra=match_hint_manifest(train_records),
    )


def train_sft_examples(
    config: SFTStageConfig,
    train_examples: Sequence[TextExample],
    eval_examples: Sequence[TextExample] | None = None,
    *,
    callbacks: list | None = None,
    train_hash: str | None = None,
    stage: str = "sft",
    manifest_extra: dict[str, Any] | None = None,
    group_by_prefix: bool = False,
) -> Path:
    """Fine-tune `config.model` with LoRA on prompt -> completion examples and return the adapter folder.

    The loss covers each completion and its EOS. Batches whose rows share one instruction prefix take the
    shared-prefix path; mixed batches (e.g. direct and CoT examples) the plain forward. `group_by_prefix` orders the
    examples so that every full batch holds one prefix (`prefix_grouped_order`, fixed for all epochs) instead of
    shuffling them. `train_hash` identifies the training data for resuming (default: `examples_hash`); `stage` and
    `manifest_extra` go into the manifest.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import TrainingArguments, set_seed

    from lref.io import write_json
    from lref.models.loading import MANIFEST_NAME, load_causal_lm
    from lref.prompts import label_token_ids

    scheme = get_scheme(config.scheme)
    if not train_examples:
        raise DataError("no training examples: SFT needs at least one")
    for example in [*train_examples, *(eval_examples or [])]:
        if example.label not in scheme.labels:
            raise DataError(f"example {example.id!r}: label {example.label!r} is not a label of scheme {scheme.name!r}")
    output_dir = Path(config.output_dir)
    checkpoint = last_checkpoint(output_dir)
    if checkpoint is not None and not config.resume:
        raise FileExistsError(
            f"{output_dir} already holds checkpoints of a run ({checkpoint.name}); resume it (--resume) or choose "
            "another output folder"
        )
    if config.resume and checkpoint is None:
        logger.warning("resume asked for, but %s holds no checkpoint: starting from scratch", output_dir)
    run_file = output_dir / CHECKPOINT_DIR / RUN_FILE
    train_hash = train_hash or examples_hash(train_examples)
    if checkpoint is not None:
        previous = json.loads(run_file.read_text()) if run_file.is_file() else {}
        if previous.get("data_hash", train_hash) != train_hash:
            raise DataError(
                f"cannot resume {output_dir}: its checkpoints were trained on other data (data hash "
                f"{previous['data_hash'][:12]}, these records {train_hash[:12]}); use another output folder"
            )
    elif is_main_process():
        write_json(run_file, {"data_hash": train_hash, "n_train": len(train_examples), "config": asdict(config)})

    use_cpu = prepare_device(config)

    set_seed(config.seed)
    model, tokenizer, _ = load_causal_lm(config.model, merge_adapter=True, dtype=torch.float32)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    first_token_ids = dict(zip(scheme.labels, label_token_ids(tokenizer, scheme)))  # fails when two labels share one
    model.config.use_cache = False
    model = get_peft_model(
        model,
        LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=config.target_modules,
            task_type="CAUSAL_LM",
        ),
    )

    if group_by_prefix:
        order = prefix_grouped_order(train_examples, config.batch_size, config.seed)
        train_examples = [train_examples[i] for i in order]
    weights = class_weights([e.label for e in train_examples], scheme, config.class_balance)
    train_dataset = build_example_dataset(tokenizer, train_examples, config.max_length, weights, first_token_ids)
    eval_dataset = (build_example_dataset(tokenizer, eval_examples, config.max_length, None, first_token_ids)
                    if eval_examples else None)

    evaluate_during = eval_dataset is not None and config.eval_steps > 0
    args = TrainingArguments(
        **training_arguments(
            config,
            output_dir / CHECKPOINT_DIR,
            use_cpu,
            eval_strategy="steps" if evaluate_during else "no",
            eval_steps=config.eval_steps if evaluate_during else None,
            prediction_loss_only=True,
            label_names=["labels"],
            remove_unused_columns=False,
            train_sampling_strategy="sequential" if group_by_prefix else "random",
        )
    )
    trainer = _make_trainer_class()(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=PadCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
        callbacks=callbacks,
        logits_at_labels_only=config.logits_at_labels_only,
        share_prefix=config.share_prefix,
    )

    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if config.resume and checkpoint else None)
    wall = time.perf_counter() - started
    resumed_from = trainer_state_step(checkpoint) if config.resume and checkpoint else 0
    steps_run = result.global_step - resumed_from
    train_losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    metrics: dict[str, Any] = {
        "final_loss": train_losses[-1] if train_losses else result.training_loss,
        "mean_loss": result.training_loss,
        "steps": result.global_step,
        "resumed_from_step": resumed_from,
        "steps_this_run": steps_run,
        "epochs": trainer.state.epoch,
        "wall_time_s": round(wall, 2),
        "s_per_step": round(wall / steps_run, 4) if steps_run > 0 else None,
    }
    if eval_dataset is not None:
        metrics["eval_loss"] = trainer.evaluate()["eval_loss"]

    # Under `accelerate launch`, every process reaches this point; only the first writes, the others wait for it.
    if not trainer.is_world_process_zero():
        trainer.accelerator.wait_for_everyone()
        return output_dir
    model.save_pretrained(str(output_dir))
    tokenizer.save_pretrained(str(output_dir))
    manifest = {
        "kind": "lora-adapter",
        "stage": stage,
        "base_model": stored_model_reference(config.model),
        "scheme": {"name": scheme.name, "labels": list(scheme.labels)},
        "prompt_version": PROMPT_VERSION,
        "data_hash": train_hash,
        "n_train": len(train_examples),
        "n_eval": len(eval_examples) if eval_examples else 0,
        "label_counts": dict(Counter(e.label for e in train_examples)),
        "class_weights": weights,
        "config": asdict(config),
        "train_metrics": metrics,
        "precision": "bf16" if args.bf16 else "fp32",
        "versions": library_versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **(manifest_extra or {}),
    }
    write_json(output_dir / MANIFEST_NAME, manifest)
    logger.info("%s adapter written to %s (%d steps, final loss %.4f)", stage, output_dir, result.global_step,
                metrics["final_loss"])
    trainer.accelerator.wait_for_everyone()
    return output_dir


def trainer_state_step(checkpoint: Path) -> int:
    """The optimizer step a checkpoint was written at."""
    state = Path(checkpoint) / "trainer_state.json"
    if state.is_file():
        return int(json.loads(state.read_text()).get("global_step", 0))
    suffix = Path(checkpoint).name.rsplit("-", 1)[-1]
    return int(suffix) if suffix.isdigit() else 0


__all__ = [
    "PadCollator",
    "SFTStageConfig",
    "TextExample",
    "build_dataset",
    "build_example",
    "build_example_dataset",
    "class_weights",
    "completion_ids",
    "completion_loss",
    "data_hash",
    "direct_example",
    "encode_example",
    "examples_hash",
    "fast_head_supported",
    "forward_replaced",
    "last_checkpoint",
    "prefix_grouped_order",
    "rating_target",
    "shared_prefix_length",
    "text_completion_ids",
    "token_losses",
    "train_sft",
    "train_sft_examples",
    "validate_records",
]
