"""Optional vLLM backend for scoring and generation on a GPU, behind the scorer interface (`.scheme`,
`.score(records) -> ScoreResult`, `.predict(records)`).

Install with ``pip install 'lref[vllm]'`` on a machine with a CUDA GPU. `lref.models.factory.make_scorer` picks the
backend (:func:`resolve_backend`): ``auto`` uses vLLM when it is installed and a GPU is present, else the torch
:class:`LabelScorer`.

How it scores
    The same prompt tokens as :class:`~lref.models.scorer.LabelScorer` (its own encoder: direct prompt, prefix never
    truncated, pair cut keeping the answer cue) go to ``LLM.generate`` for one greedy token, restricted to the
    label tokens (``allowed_token_ids``), with the engine's ``logprobs_mode="processed_logits"``: the returned
    "logprobs" are then the label tokens' logits (after the model's own soft-capping), so the probabilities are the
    same softmax over label logits as the torch path, up to GPU numerics (bf16/fp16 weights under ``dtype="auto"``).
    vLLM batches and caches the shared prefix itself (continuous batching, automatic prefix caching).

lref adapter folders (LoRA + manifest) are merged into their base model and exported to a temporary folder once,
since vLLM loads plain HF folders. That folder (a full copy of the weights) is removed by `VLLMScorer.close()`, on
leaving a ``with VLLMScorer(...)`` block, when the scorer is garbage-collected, at interpreter exit, and at once when
the engine fails to start.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
import weakref
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lref.data.records import Record
from lref.labels import LabelScheme, get_scheme
from lref.models.scorer import LabelScorer, ScorerConfig
from lref.predictions import ScoreResult
from lref.prompts import Prompt, direct_prompt, with_match_hints

BACKENDS = ("auto", "torch", "vllm")


class BackendUnavailable(RuntimeError):
    """The requested inference backend cannot run here (not installed, or no GPU)."""


def unavailable_reason() -> str | None:
    """Why vLLM cannot run here, or None when it can."""
    if importlib.util.find_spec("vllm") is None:
        return "vLLM is not installed; install it with: pip install 'lref[vllm]' (needs a CUDA GPU)"
    import torch

    if not torch.cuda.is_available():
        return "vLLM needs a CUDA GPU and none is visible here; use --backend torch (the CPU scorer)"
    return None


def available() -> bool:
    """True when vLLM is installed and a CUDA GPU is visible."""
    return unavailable_reason() is None


EXPORT_PREFIX = "lref-vllm-"
"""Name prefix of the temporary folders holding merged adapters for vLLM (in `tempfile.gettempdir()`)."""


def export_for_vllm(folder: Path) -> tuple[Path, Path | None]:
    """(plain HF folder vLLM can load, temporary folder the caller must delete, or None). Adapters are merged and
    exported; a failed export leaves no folder behind."""
    from lref.models.loading import is_adapter, load_causal_lm

    if not is_adapter(folder):
        return folder, None
    model, tokenizer, _ = load_causal_lm(folder, merge_adapter=True)
    export = Path(tempfile.mkdtemp(prefix=EXPORT_PREFIX))
    try:
        model.save_pretrained(str(export))
        tokenizer.save_pretrained(str(export))
    except BaseException:
        shutil.rmtree(export, ignore_errors=True)
        raise
    return export, export


class VLLMScorer:
    """Label probabilities from vLLM; the same interface and numbers (to GPU precision) as LabelScorer.

    `scheme` and `config` are used as given (`lref.models.factory.make_scorer` reads them from the model's manifest
    and calibration). Raises BackendUnavailable at construction when vLLM is missing or there is no GPU."""

    def __init__(
        self,
        model: str | Path,
        scheme: LabelScheme | str,
        config: ScorerConfig | None = None,
        prompt_fn=direct_prompt,
        *,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.85,
        tensor_parallel_size: int = 1,
        **engine_kwargs,
    ):
        reason = unavailable_reason()
        if reason:
            raise BackendUnavailable(reason)
        from transformers import AutoTokenizer
        from vllm import LLM

        from lref.models.zoo import resolve_model

        folder = resolve_model(model)
        self.scheme = get_scheme(scheme)
        self.config = config or ScorerConfig()
        self.prompt_fn = prompt_fn
        self._model_folder, tmp = export_for_vllm(Path(folder))
        # Removes the merged copy once: on close(), when this scorer is collected, or at interpreter exit.
        self._cleanup = weakref.finalize(self, shutil.rmtree, str(tmp), ignore_errors=True) if tmp else None
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(self._model_folder))
            # The torch scorer is used only for its prompt encoder and label ids (it never touches a model here).
            self._encoder = LabelScorer(None, tokenizer, self.scheme, self.config, prompt_fn)
            self.tokenizer = tokenizer
            self.llm = LLM(
                model=str(self._model_folder),
                dtype=dtype,
                gpu_memory_utilization=gpu_memory_utilization,
                tensor_parallel_size=tensor_parallel_size,
                logprobs_mode="processed_logits",
                max_logprobs=max(20, len(self.scheme)),
                enable_prefix_caching=True,
                **engine_kwargs,
            )
        except BaseException:
            self.close()
            raise

    @property
    def export_folder(self) -> Path | None:
        """The temporary folder holding the merged adapter while it exists (None for a plain model, or once closed)."""
        return self._model_folder if self._cleanup is not None and self._cleanup.alive else None

    def score(self, records: Sequence[Record]) -> ScoreResult:
        if self.config.match_hints:
            records = with_match_hints(records)
        prompts = [self.prompt_fn(record, self.scheme) for record in records]
        return self.score_prompts(prompts, ids=[record.id for record in records])

    def predict(self, records: Sequence[Record]):
        return self.score(records).predictions()

    def score_prompts(self, prompts: Sequence[Prompt], ids: Sequence[str] | None = None) -> ScoreResult:
        from vllm import SamplingParams

        ids = [str(i) for i in (ids if ids is not None else range(len(prompts)))]
        label_ids = self._encoder.label_ids
        logits = np.zeros((len(prompts), len(label_ids)), dtype=np.float32)
        if prompts:
            requests = [{"prompt_token_ids": list(prefix) + pair} for prefix, pair in self._encoder.encode(prompts)]
            params = SamplingParams(
                max_tokens=1, temperature=0.0, logprobs=len(label_ids), allowed_token_ids=list(label_ids)
            )
            outputs = self.llm.generate(requests, params, use_tqdm=self.config.progress)
            for row, output in enumerate(outputs):
                first = output.outputs[0].logprobs[0]  # token id -> Logprob, for the one generated position
                missing = [token for token in label_ids if token not in first]
                if missing:
                    raise RuntimeError(
                        f"vLLM returned no logit for label token(s) {missing}; it needs logprobs_mode support "
                        "(vLLM >= 0.10.2)"
                    )
                logits[row] = [first[token].logprob for token in label_ids]
        return ScoreResult(ids, self.scheme.labels, logits, self.config.top_k, self.config.label_bias)

    def generate(self, texts: Sequence[str], max_new_tokens: int = 256, temperature: float = 0.0) -> list[str]:
        """Completions of raw prompt texts (e.g. CoT reasoning), in input order."""
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=max_new_tokens, temperature=temperature)
        outputs = self.llm.generate(list(texts), params, use_tqdm=self.config.progress)
        return [output.outputs[0].text for output in outputs]

    def close(self) -> None:
        """Delete the merged adapter copy, if any (idempotent)."""
        if self._cleanup is not None:
            self._cleanup()

    def __enter__(self) -> "VLLMScorer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def resolve_backend(backend: str) -> str:
    """``torch`` or ``vllm`` for a requested backend; BackendUnavailable when ``vllm`` is asked for but cannot run."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    if backend == "auto":
        return "vllm" if available() else "torch"
    if backend == "vllm":
        reason = unavailable_reason()
        if reason:
            raise BackendUnavailable(reason)
    return backend
