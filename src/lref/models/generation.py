"""CoT inference: greedy generation after a CoT prompt (EE or RA), the label parsed from the text.

Used by `lref cot-predict`, by DPO's CoT mining (the model's own analyses) and by the benchmarks. A text without a
parsable label gets the direct scorer's label (`LabelScorer` on the same model), counted as a fallback.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lref.data.records import DataError, Record
from lref.device import use_bf16
from lref.labels import LabelScheme, get_scheme
from lref.models.loading import load_causal_lm, read_manifest
from lref.models.scorer import LabelScorer, ScorerConfig, scheme_for_model
from lref.predictions import Prediction
from lref.prompts import PAIR_TAIL_TOKENS, encode_prompt, records_for_model, truncate_pair
from lref.prompts.cot import cot_prompt, parse_label
from lref.prompts.rules import RuleSet, load_rule_set


def generate_predictions(
    model_dir: str | Path,
    records: Sequence[Record],
    scheme: LabelScheme | str | None = None,
    *,
    task: str = "ee",
    rules: str | RuleSet | None = None,
    max_new_tokens: int = 160,
    batch_size: int = 8,
    max_length: int = 1024,
    progress: bool = True,
    model=None,
    tokenizer=None,
    bf16: bool | None = None,
) -> tuple[list[Prediction], dict[str, Any]]:
    """CoT inference: greedy generation after the `task` prompt (ee or ra), the label parsed from the text.

    Pairs run in length-sorted, left-padded batches. A text without a parsable label gets the direct scorer's label
    (`LabelScorer` on the same model), counted as a fallback. Pass `model` and `tokenizer` to reuse a loaded model.
    `bf16`: bfloat16 autocast, None = auto (`lref.device.use_bf16`: on a CPU with native bf16).
    Returns the predictions in input order and stats: pairs, fallbacks, fallback_share, generated_tokens,
    hit_max_new_tokens, seconds, pairs_per_s and texts (the generations, in input order).
    """
    import torch
    from tqdm.auto import tqdm

    if task not in ("ee", "ra"):
        raise ValueError(f"CoT inference runs the ee or ra prompt, not {task!r}")
    if batch_size < 1 or max_new_tokens < 1:
        raise ValueError("batch_size and max_new_tokens must be at least 1")
    manifest = None
    if model is None or tokenizer is None:
        model, tokenizer, manifest = load_causal_lm(model_dir, device="auto")
    else:
        manifest = read_manifest(model_dir) if model_dir and Path(model_dir).is_dir() else None
    scheme = scheme_for_model(manifest, scheme) if (manifest or scheme is None) else get_scheme(scheme)
    records = records_for_model(records, manifest)
    if task == "ra" and rules is None:
        rules = ((manifest or {}).get("cot") or {}).get("rules")
    rule_set = load_rule_set(rules, scheme) if task == "ra" else None
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    started = time.perf_counter()
    encoded = []
    for record in records:
        prefix_ids, pair_ids = encode_prompt(tokenizer, cot_prompt(task, record, scheme, rule_set))
        budget = max_length - max_new_tokens - len(prefix_ids)
        if budget < 2 * PAIR_TAIL_TOKENS:
            raise DataError(f"record {record.id!r}: max_length {max_length} leaves no room for the pair after the "
                            f"{len(prefix_ids)}-token instruction and {max_new_tokens} new tokens; raise max_length")
        encoded.append(prefix_ids + truncate_pair(pair_ids, budget, PAIR_TAIL_TOKENS))
    order = sorted(range(len(records)), key=lambda i: len(encoded[i]))
    texts: list[str] = [""] * len(records)
    generated_tokens = hit_limit = 0
    was_training = model.training
    model.eval()
    device = model.device.type
    try:
        with torch.inference_mode(), torch.autocast(device, torch.bfloat16, enabled=use_bf16(bf16, device == "cpu")), \
                tqdm(total=len(records), desc=f"cot {task}", unit="pair", disable=not progress) as bar:
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                width = max(len(encoded[i]) for i in rows)
                input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
                attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
                for row, i in enumerate(rows):  # left padding: every prompt ends at the last column
                    input_ids[row, width - len(encoded[i]) :] = torch.tensor(encoded[i])
                    attention_mask[row, width - len(encoded[i]) :] = 1
                output = model.generate(input_ids=input_ids.to(model.device),
                                        attention_mask=attention_mask.to(model.device), do_sample=False,
                                        max_new_tokens=max_new_tokens, pad_token_id=pad,
                                        eos_token_id=tokenizer.eos_token_id, top_p=None, top_k=None)
                for row, i in enumerate(rows):
                    new = output[row, width:].tolist()
                    if tokenizer.eos_token_id in new:
                        new = new[: new.index(tokenizer.eos_token_id)]
                    else:
                        hit_limit += 1
                    while new and new[-1] == pad:
                        new.pop()
                    generated_tokens += len(new)
                    texts[i] = tokenizer.decode(new, skip_special_tokens=True)
                bar.update(len(rows))
    finally:
        if was_training:
            model.train()

    labels = [parse_label(text, scheme) for text in texts]
    failed = [i for i, label in enumerate(labels) if label is None]
    fallback: dict[int, Prediction] = {}
    if failed:
        config = ScorerConfig(batch_size=batch_size, max_length=max_length, bf16=bf16)
        scorer = LabelScorer(model, tokenizer, scheme, config)
        for i, prediction in zip(failed, scorer.predict([records[i] for i in failed])):
            fallback[i] = prediction
    predictions = [fallback.get(i) or Prediction(id=r.id, label=labels[i], topk=[labels[i]])
                   for i, r in enumerate(records)]
    seconds = time.perf_counter() - started
    stats = {
        "pairs": len(records),
        "fallbacks": len(failed),
        "fallback_share": round(len(failed) / len(records), 4) if records else None,
        "generated_tokens": generated_tokens,
        "hit_max_new_tokens": hit_limit,
        "seconds": round(seconds, 3),
        "pairs_per_s": round(len(records) / seconds, 3) if seconds > 0 else None,
        "texts": texts,
    }
    return predictions, stats


__all__ = ["generate_predictions"]
