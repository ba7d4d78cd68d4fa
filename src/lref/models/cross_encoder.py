"""A BERT-class cross-encoder over the scheme's labels: (query, product text) -> K logits.

The fast selector backbone for large pools (stage 1) and the deployable student. Training lives in
`lref.training.cross_encoder` (`train_cross_encoder`); this module reads pairs the way the encoder sees them
(`pair_texts`, `encode_pairs`, `tokenize_pairs`, `EncoderCollator`: every pair fits `max_length`, a long query is cut
too), loads a trained folder (`load_cross_encoder`) and scores with it (`CrossEncoderScorer`, `score_pairs`, shared
with the ONNX backend).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lref.data.records import Record
from lref.device import use_bf16
from lref.labels import LabelScheme, get_scheme
from lref.models.hybrid import FEATURE_INPUT, is_hybrid, load_hybrid
from lref.models.loading import read_manifest
from lref.models.scorer import ScorerConfig, for_model, scheme_for_model
from lref.models.zoo import resolve_model
from lref.predictions import ScoreResult
from lref.prompts import product_fields, with_match_hints

KIND = "cross-encoder"
"""The manifest kind of a trained cross-encoder folder."""


def pair_texts(record: Record) -> tuple[str, str]:
    """The two segments the encoder reads: the query, and the product text the LLM prompt shows."""
    return record.query, product_fields(record)


class EncoderCollator:
    """Pads the token fields with the tokenizer and stacks `labels`, `weights` and (when present) `targets` and the
    hybrid student's match `features`."""

    TOKEN_KEYS = ("input_ids", "attention_mask", "token_type_ids")

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, batch: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        tokens = [{k: example[k] for k in self.TOKEN_KEYS if k in example} for example in batch]
        out = dict(self.tokenizer.pad(tokens, return_tensors="pt"))
        out["labels"] = torch.tensor([example["labels"] for example in batch], dtype=torch.long)
        out["weights"] = torch.tensor([float(example.get("weight", 1.0)) for example in batch])
        if all("targets" in example for example in batch):
            out["targets"] = torch.tensor([example["targets"] for example in batch], dtype=torch.float32)
        if all(FEATURE_INPUT in example for example in batch):
            out[FEATURE_INPUT] = torch.tensor(np.stack([example[FEATURE_INPUT] for example in batch]))
        return out


PAIR_TRUNCATION = "longest_first"
"""How a (query, product) pair is cut to `max_length`: the tokenizer's 'longest_first' strategy removes tokens from
the longer side until the pair fits, so a short query is kept whole and the product gets the rest, while a query
longer than the product is cut too (the two then share the budget about equally). 'only_second' would raise as soon
as the query alone exceeds the budget (a 300-word query with a 128-token student)."""


def encode_pairs(tokenizer, queries: Sequence[str], products: Sequence[str], max_length: int, **kwargs: Any):
    """Tokenise (query, product text) pairs so that every pair fits `max_length` tokens, whatever the two lengths.

    The one tokenisation of cross-encoder pairs: training, PyTorch and ONNX scoring and the ONNX export probe all go
    through it (`PAIR_TRUNCATION`). `kwargs` go to the tokenizer (e.g. padding=True, return_tensors="pt")."""
    return tokenizer(list(queries), list(products), truncation=PAIR_TRUNCATION, max_length=max_length, **kwargs)


def tokenize_pairs(tokenizer, records: Sequence[Record], scheme: LabelScheme, max_length: int):
    """The encoder's token fields of each pair (`encode_pairs`: query and product text cut to fit `max_length`)."""
    queries, products = zip(*(pair_texts(r) for r in records)) if records else ((), ())
    encoded = encode_pairs(tokenizer, queries, products, max_length)
    keys = [k for k in EncoderCollator.TOKEN_KEYS if k in encoded]
    return [{k: encoded[k][i] for k in keys} for i in range(len(records))]


def load_cross_encoder(name_or_path: str | Path):
    """Return (model, tokenizer, manifest) of a trained cross-encoder folder; a hybrid student's folder
    (`lref.models.hybrid`) gives its hybrid model, whose `match_features` computes the features it needs."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = resolve_model(name_or_path)
    model = AutoModelForSequenceClassification.from_pretrained(str(folder), dtype=torch.float32)
    if is_hybrid(folder):
        model = load_hybrid(folder, model)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model.eval()
    return model, tokenizer, read_manifest(folder)


def score_pairs(
    records: Sequence[Record],
    scheme: LabelScheme,
    tokenizer,
    config: ScorerConfig,
    forward: Callable[[dict[str, Any]], np.ndarray],
    match_features=None,
) -> ScoreResult:
    """Tokenise the pairs, batch them longest first and gather `forward(batch) -> logits (B x K)` in input order.

    Every encoder backend (PyTorch, ONNX) scores through this, so they all read exactly the same tokens; `batch` holds
    the padded token tensors (torch) under `EncoderCollator.TOKEN_KEYS`, and, for a hybrid student
    (`match_features`, a fitted `lref.models.hybrid.MatchFeatures`), the pairs' features under `FEATURE_INPUT`."""
    from tqdm.auto import tqdm

    ids = [r.id for r in records]
    logits = np.zeros((len(records), len(scheme)), dtype=np.float32)
    if not records:
        return ScoreResult(ids, scheme.labels, logits, config.top_k, config.label_bias)
    examples = tokenize_pairs(tokenizer, with_match_hints(records) if config.match_hints else records, scheme,
                         config.max_length or 512)
    if match_features is not None:
        for example, row in zip(examples, match_features.transform(records)):
            example[FEATURE_INPUT] = row
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i]["input_ids"]))
    collate = EncoderCollator(tokenizer)
    size = config.batch_size
    with tqdm(total=len(order), unit="pair", file=sys.stderr, disable=not config.progress, desc="scoring") as bar:
        for start in range(0, len(order), size):
            batch_index = order[start : start + size]
            logits[batch_index] = forward(collate([{**examples[i], "labels": 0} for i in batch_index]))
            bar.update(len(batch_index))
    return ScoreResult(ids, scheme.labels, logits, config.top_k, config.label_bias)


class CrossEncoderScorer:
    """Scores pairs with a trained cross-encoder; the same `ScoreResult` as `LabelScorer` (logits in scheme order).

    Uses `ScorerConfig`'s batch_size, top_k, max_length, progress, num_threads and bf16 (`fast` does not apply)."""

    def __init__(self, model, tokenizer, scheme: LabelScheme | str, config: ScorerConfig | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.scheme = get_scheme(scheme)
        self.config = config or ScorerConfig(max_length=128)
        if model.config.num_labels != len(self.scheme):
            raise ValueError(
                f"the model has {model.config.num_labels} outputs, scheme {self.scheme.name!r} has {len(self.scheme)}"
            )

    @classmethod
    def from_pretrained(cls, folder: str | Path, scheme: str | None = None, config: ScorerConfig | None = None):
        model, tokenizer, manifest = load_cross_encoder(folder)
        config = for_model(config or ScorerConfig(max_length=128), manifest)
        return cls(model, tokenizer, scheme_for_model(manifest, scheme), config)

    def score(self, records: Sequence[Record]) -> ScoreResult:
        import torch

        if self.config.num_threads is not None:
            torch.set_num_threads(self.config.num_threads)
        was_training = self.model.training
        self.model.eval()
        device = self.model.device.type
        bf16 = use_bf16(self.config.bf16, use_cpu=device == "cpu")
        try:
            with torch.inference_mode(), torch.autocast(device, torch.bfloat16, enabled=bf16):
                return score_pairs(records, self.scheme, self.tokenizer, self.config, self._logits,
                                   getattr(self.model, "match_features", None))
        finally:
            if was_training:
                self.model.train()

    def _logits(self, batch: dict[str, Any]) -> np.ndarray:
        keys = (*EncoderCollator.TOKEN_KEYS, FEATURE_INPUT)
        inputs = {k: batch[k].to(self.model.device) for k in keys if k in batch}
        return self.model(**inputs).logits.float().cpu().numpy()

    def predict(self, records: Sequence[Record]):
        return self.score(records).predictions()


__all__ = [
    "KIND",
    "PAIR_TRUNCATION",
    "CrossEncoderScorer",
    "EncoderCollator",
    "encode_pairs",
    "load_cross_encoder",
    "pair_texts",
    "score_pairs",
    "tokenize_pairs",
]
