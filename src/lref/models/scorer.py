"""The label scorer: one forward pass per pair gives the distribution over the scheme's labels (the paper's beam).

Every stage that needs label probabilities (selection, DPO mining, evaluation, teacher labelling) scores an LLM
through :class:`LabelScorer`; every kind of scorer follows the :class:`Scorer` protocol, and
`lref.models.factory.make_scorer` builds the right one for a model folder.

What is computed
    For each pair, the logit of the *first token* of every verbalised label (``" Exact"``, ``" Partial"``, ...) at
    the position right after the answer cue. The probabilities are a softmax over **these label logits only**, not
    over the whole vocabulary: they always sum to 1 over the scheme's labels. The top-k labels are the k most
    probable ones (ties go to the label listed first in the scheme).

Two paths, same numbers (tests hold them within 1e-4):
    * naive: ``model(input_ids, attention_mask).logits`` on prefix + pair (right-padded), the last real position,
      then the label columns. It computes the full vocabulary head at every position.
    * fast (default):
        1. the decoder body only (``model.get_decoder()``, whose output is already final-normed), the hidden state
           at the last real position, projected onto the label rows of the output embedding (plus bias, plus
           ``final_logit_softcapping`` when the config sets one): never the 262k-word head;
        2. pairs sorted by length and batched (original order restored on output), so little padding is computed;
        3. the pair-independent instruction prefix runs once; its KV cache is shared by every batch (expanded to
           the batch as a view, never mutated: each batch works on a shallow per-layer copy) and the pair tokens
           follow at positions ``len(prefix) ...``. Sliding-window layers keep their own cache length, so prefixes
           and pairs longer than the window stay exact.

The fast path assumes the usual Hugging Face causal-LM layout, ``logits = lm_head(decoder(...).last_hidden_state)``
(optionally soft-capped), as in Gemma, Llama, Qwen and Mistral; for a model that scales its logits in other ways,
use ``fast=False``.

Example::

    scorer = LabelScorer(model, tokenizer, get_scheme("graded3"), ScorerConfig(batch_size=16))
    result = scorer.score(records)      # ScoreResult: .probs, .logits (N x K, scheme order), .topk_indices
    predictions = result.predictions()  # list[Prediction]
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from lref.data.records import Record
from lref.device import use_bf16
from lref.labels import LabelError, LabelScheme, get_scheme
from lref.models.kv_cache import cache_keyword, expand_cache, output_cache
from lref.predictions import Prediction, ScoreResult
from lref.prompts import (
    Prompt,
    direct_prompt,
    encode_prompt,
    label_token_ids,
    truncate_pair,
    with_match_hints,
)

PromptFn = Callable[[Record, LabelScheme], Prompt]


@dataclass
class ScorerConfig:
    batch_size: int = field(default=16, metadata={"help": "Pairs per forward pass."})
    top_k: int = field(default=3, metadata={"help": "How many of the most probable labels to keep per pair."})
    max_length: int | None = field(
        default=512,
        metadata={
            "help": "Most tokens per prompt (prefix + pair). Only the pair part is truncated, from its end but "
            "keeping the answer cue; the prefix never is. None: no limit."
        },
    )
    fast: bool = field(
        default=True,
        metadata={"help": "Label-rows-only head, length-sorted batches and a shared prefix KV cache. False: naive "
                  "full-logits forward (the reference)."},
    )
    progress: bool = field(default=False, metadata={"help": "Show a progress bar on stderr."})
    bf16: bool | None = field(
        default=None,
        metadata={"help": "bfloat16 autocast for the forward passes: None (auto) = on a CPU with native bf16 "
                  "(AVX512-BF16, AMX), about 3x faster there, float32 elsewhere (GPUs included, where it measured "
                  "faster); True forces it; False: float32 throughout."},
    )
    num_threads: int | None = field(
        default=None, metadata={"help": "torch.set_num_threads before scoring; None leaves torch's default."}
    )
    label_bias: tuple[float, ...] | None = field(
        default=None,
        metadata={"help": "Added to the label logits (scheme order) before the softmax: a fitted label-prior "
                  "calibration (`lref.calibration`; a model folder's calibration.json). None: raw scores."},
    )

    match_hints: bool = field(
        default=False,
        metadata={"help": "Add the match hint line (`lref.data.hints.match_hint`) to every pair before scoring: for a "
                  "model trained with hints, which `for_model` reads from its manifest."},
    )

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if self.max_length is not None and self.max_length < 2:
            raise ValueError(f"max_length must be >= 2 or None, got {self.max_length}")
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(f"num_threads must be >= 1 or None, got {self.num_threads}")


@runtime_checkable
class Scorer(Protocol):
    """What every scorer offers (LLM, cross-encoder, ONNX, lexical, vLLM); build one with
    `lref.models.factory.make_scorer`, which fixes its scheme, match hints and label bias from the model folder.

    `score` keeps the input order (`result.ids` are the records' ids), returns an N x K `ScoreResult` in scheme order
    whose rows sum to 1, adds `config.label_bias` once, adds match hints only to records that carry none, and
    returns an empty result for no records."""

    scheme: LabelScheme
    config: ScorerConfig

    def score(self, records: Sequence[Record]) -> ScoreResult: ...

    def predict(self, records: Sequence[Record]) -> list[Prediction]: ...


def for_model(config: ScorerConfig, manifest: dict | None) -> ScorerConfig:
    """`config` with what the model fixes: match hints on exactly when its manifest says it trained with them."""
    return dataclasses.replace(config, match_hints=bool((manifest or {}).get("match_hints")))


def scheme_for_model(manifest: dict | None, requested: LabelScheme | str | None = None, default=None) -> LabelScheme:
    """The label scheme to score with: the one named in a model's manifest (what it was trained on), `requested`
    when given (refused with LabelError if the manifest names another), else `default`."""
    trained = None
    if manifest and manifest.get("scheme"):
        entry = manifest["scheme"]
        name = entry.get("name") if isinstance(entry, dict) else entry
        try:
            trained = get_scheme(name)
        except LabelError:
            raise LabelError(f"the model was trained on label scheme {name!r}, which is not a preset") from None
        labels = entry.get("labels") if isinstance(entry, dict) else None
        if labels and tuple(labels) != trained.labels:
            raise LabelError(
                f"the model's manifest lists labels {labels} for scheme {name!r}, but the preset has "
                f"{list(trained.labels)}"
            )
    if requested is not None:
        wanted = get_scheme(requested)
        if trained is not None and wanted.name != trained.name:
            raise LabelError(
                f"the model was trained on label scheme {trained.name!r} ({', '.join(trained.labels)}), not "
                f"{wanted.name!r}; drop --scheme or pass --scheme {trained.name}"
            )
        return wanted
    if trained is not None:
        return trained
    if default is None:
        raise LabelError("no label scheme: the model has no manifest naming one, so pass a scheme")
    return get_scheme(default)


class LabelScorer:
    """Scores query–product pairs with a causal LM: probabilities over `scheme`'s labels and the top-k labels.

    Raises :class:`lref.prompts.VerbalizationError` at construction when two labels start with the same token.
    """

    def __init__(
        self,
        model,
        tokenizer,
        scheme: LabelScheme | str,
        config: ScorerConfig | None = None,
        prompt_fn: PromptFn = direct_prompt,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.scheme = get_scheme(scheme)
        self.config = config or ScorerConfig()
        self.prompt_fn = prompt_fn
        self.label_ids = label_token_ids(tokenizer, self.scheme)
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
        self._pad_id = int(pad)
        self._prefix_caches: dict[tuple[int, ...], object] = {}

    # ------------------------------------------------------------------ public API
    def score(self, records: Sequence[Record]) -> ScoreResult:
        """Label logits and probabilities for every record, in input order."""
        if self.config.match_hints:
            records = with_match_hints(records)
        prompts = [self.prompt_fn(record, self.scheme) for record in records]
        return self.score_prompts(prompts, ids=[record.id for record in records])

    def predict(self, records: Sequence[Record]) -> list[Prediction]:
        return self.score(records).predictions()

    def score_prompts(self, prompts: Sequence[Prompt], ids: Sequence[str] | None = None) -> ScoreResult:
        """Score already-built prompts (for stages with their own templates). The label is read right after each
        prompt's pair part."""
        import torch

        ids = [str(i) for i in (ids if ids is not None else range(len(prompts)))]
        if len(ids) != len(prompts):
            raise ValueError(f"{len(ids)} ids for {len(prompts)} prompts")
        logits = np.zeros((len(prompts), len(self.scheme)), dtype=np.float32)
        if not prompts:
            return ScoreResult(ids, self.scheme.labels, logits, self.config.top_k, self.config.label_bias)
        if self.config.num_threads is not None:
            torch.set_num_threads(self.config.num_threads)
        encoded = self.encode(prompts)
        was_training = self.model.training
        self.model.eval()
        device = self.model.device.type
        bf16 = use_bf16(self.config.bf16, use_cpu=device == "cpu")
        try:
            with torch.inference_mode(), torch.autocast(device, torch.bfloat16, enabled=bf16):
                if self.config.fast:
                    self._score_fast(encoded, logits)
                else:
                    self._score_naive(encoded, logits)
        finally:
            if was_training:
                self.model.train()
        return ScoreResult(ids, self.scheme.labels, logits, self.config.top_k, self.config.label_bias)

    def encode(self, prompts: Sequence[Prompt]) -> list[tuple[tuple[int, ...], list[int]]]:
        """(prefix ids, pair ids) per prompt, the pair truncated to `max_length` (the prefix never is)."""
        prefix_cache: dict[str, tuple[int, ...]] = {}
        out = []
        for prompt in prompts:
            if prompt.prefix not in prefix_cache:
                prefix_ids, _ = encode_prompt(self.tokenizer, Prompt(prompt.prefix, ""))
                prefix_cache[prompt.prefix] = tuple(prefix_ids)
        pair_ids_all = self.tokenizer([p.pair for p in prompts], add_special_tokens=False)["input_ids"]
        for prompt, pair_ids in zip(prompts, pair_ids_all):
            prefix_ids = prefix_cache[prompt.prefix]
            if not pair_ids and not prefix_ids:
                raise ValueError("empty prompt")
            if self.config.max_length is not None:
                budget = self.config.max_length - len(prefix_ids)
                if budget < 1:
                    raise ValueError(
                        f"the prompt prefix alone has {len(prefix_ids)} tokens, max_length is {self.config.max_length}"
                    )
                pair_ids = truncate_pair(pair_ids, budget)
            out.append((prefix_ids, list(pair_ids)))
        return out

    # ------------------------------------------------------------------ internals
    def _progress(self, total: int):
        from tqdm.auto import tqdm

        return tqdm(total=total, unit="pair", file=sys.stderr, disable=not self.config.progress, desc="scoring")

    def _batches(self, order: list[int]):
        size = self.config.batch_size
        for start in range(0, len(order), size):
            yield order[start : start + size]

    def _label_head(self):
        """Label rows of the output embedding (K x H), its bias (K or None) and the final soft-capping value."""
        import torch

        head = self.model.get_output_embeddings()
        index = torch.tensor(self.label_ids, device=head.weight.device)
        weight = head.weight.index_select(0, index)
        bias = head.bias.index_select(0, index) if getattr(head, "bias", None) is not None else None
        config = self.model.config
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        softcap = getattr(text_config, "final_logit_softcapping", None)
        return weight, bias, softcap

    def _score_naive(self, encoded, out: np.ndarray) -> None:
        import torch

        device = self.model.device
        label_index = torch.tensor(self.label_ids, device=device)
        order = list(range(len(encoded)))
        with self._progress(len(encoded)) as bar:
            for batch in self._batches(order):
                seqs = [list(encoded[i][0]) + encoded[i][1] for i in batch]
                lengths = torch.tensor([len(s) for s in seqs], device=device)
                width = int(lengths.max())
                input_ids = torch.full((len(seqs), width), self._pad_id, dtype=torch.long)
                mask = torch.zeros((len(seqs), width), dtype=torch.long)
                for row, seq in enumerate(seqs):
                    input_ids[row, : len(seq)] = torch.tensor(seq)
                    mask[row, : len(seq)] = 1
                logits = self.model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits
                last = logits[torch.arange(len(seqs), device=device), lengths - 1]
                out[batch] = last.index_select(-1, label_index).float().cpu().numpy()
                bar.update(len(batch))

    def _decoder_call(self):
        """The decoder body and the name of its cache keyword."""
        decoder = self.model.get_decoder() if hasattr(self.model, "get_decoder") else self.model.model
        return decoder, cache_keyword(decoder)

    def _prefix_cache(self, decoder, prefix_ids: tuple[int, ...]):
        import torch

        # Computed afresh in every `score` call (a few ms), so a model trained between calls never meets a stale cache.
        input_ids = torch.tensor([prefix_ids], device=self.model.device)
        cache = output_cache(decoder(input_ids=input_ids, use_cache=True))
        self._prefix_caches[prefix_ids] = cache  # kept until the next call, for inspection
        return cache

    def _score_fast(self, encoded, out: np.ndarray) -> None:
        import torch

        device = self.model.device
        decoder, cache_kw = self._decoder_call()
        weight, bias, softcap = self._label_head()
        # Group by prefix (one group for a single template), longest pairs first inside each group.
        self._prefix_caches = {}
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, (prefix_ids, _) in enumerate(encoded):
            groups.setdefault(prefix_ids, []).append(i)
        with self._progress(len(encoded)) as bar:
            for prefix_ids, members in groups.items():
                members.sort(key=lambda i: -len(encoded[i][1]))
                n_prefix = len(prefix_ids)
                cache = self._prefix_cache(decoder, prefix_ids) if n_prefix else None
                for batch in self._batches(members):
                    pairs = [encoded[i][1] for i in batch]
                    lengths = torch.tensor([len(p) for p in pairs])
                    if int(lengths.min()) == 0:
                        raise ValueError("a prompt has an empty pair part; the fast path needs at least one pair token")
                    width = int(lengths.max())
                    rows = len(pairs)
                    input_ids = torch.full((rows, width), self._pad_id, dtype=torch.long)
                    mask = torch.zeros((rows, n_prefix + width), dtype=torch.long)
                    mask[:, :n_prefix] = 1
                    for row, pair in enumerate(pairs):
                        input_ids[row, : len(pair)] = torch.tensor(pair)
                        mask[row, n_prefix : n_prefix + len(pair)] = 1
                    position_ids = torch.arange(n_prefix, n_prefix + width).unsqueeze(0).expand(rows, -1)
                    kwargs = {}
                    if cache is not None:
                        kwargs[cache_kw] = expand_cache(cache, rows)
                        if kwargs[cache_kw] is None:
                            raise ValueError("this model's KV cache layout is not supported by the fast path; score "
                                             "with ScorerConfig(fast=False)")
                    hidden = decoder(
                        input_ids=input_ids.to(device),
                        attention_mask=mask.to(device),
                        position_ids=position_ids.to(device),
                        use_cache=cache is not None,
                        **kwargs,
                    ).last_hidden_state
                    last = hidden[torch.arange(rows, device=device), (lengths - 1).to(device)]
                    logits = last.to(weight.dtype) @ weight.T
                    if bias is not None:
                        logits = logits + bias
                    if softcap is not None:
                        logits = torch.tanh(logits / softcap) * softcap
                    out[batch] = logits.float().cpu().numpy()
                    bar.update(rows)
