"""The one place that turns a model reference into a scorer (`lref.models.scorer.Scorer`).

`make_scorer` reads the model folder's manifest and calibration once and decides, for every kind of model:

* the label scheme: the one the model was trained on (`scheme_for_model`; a different `scheme` is refused);
* match hints: on exactly when the manifest says the model trained with them (`for_model`); scorers add a hint
  only to records that carry none, so hinted records are never hinted twice;
* the label bias: `config.label_bias` when the caller sets one, else, with `calibrated`, the folder's
  `calibration.json` (`lref calibrate`), else none. The scorer adds it to the label logits once.

Kinds (`KINDS`), read from the manifest when `kind` is None:

* ``llm``: a causal LM (zoo name, HF folder or lref adapter) scored by `LabelScorer`, or by `VLLMScorer` with
  ``backend="vllm"`` (or ``"auto"`` where vLLM can run);
* ``encoder``: a trained cross-encoder folder (bert baseline, distilled student), `CrossEncoderScorer`;
* ``onnx``: an `export_student` folder, `OnnxScorer` over its ``int8`` or ``fp32`` graph;
* ``lexical``: a saved `lref.baselines.lexical.LexicalModel`.

    scorer = make_scorer("runs/demo/stages/dpo/model", config=ScorerConfig(batch_size=32))
    result = scorer.score(records)

`make_scorer` is `scorer_spec` (every decision, made before any weights load; a `ScorerSpec` pickles, so worker
processes build the same scorer from it) followed by `build_scorer` (load the model, wrap it). `load_student` picks
a student's scorer by serving backend name (int8, onnx, torch).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lref.calibration import label_bias_for
from lref.data.records import Record
from lref.labels import LabelScheme
from lref.models.loading import read_manifest
from lref.models.scorer import Scorer, ScorerConfig, for_model, scheme_for_model
from lref.models.zoo import resolve_model
from lref.predictions import Prediction, ScoreResult
from lref.prompts import direct_prompt

KINDS = ("llm", "encoder", "onnx", "lexical")
MANIFEST_KINDS = {"lexical": "lexical", "cross-encoder": "encoder"}
"""Manifest `kind` -> scorer kind; any other manifest (or none) is a causal LM."""


class LexicalScorer:
    """A saved lexical model behind the `Scorer` interface: log-probabilities as logits, plus the label bias."""

    def __init__(self, model, config: ScorerConfig | None = None):
        self.model = model
        self.scheme = model.scheme
        self.config = config or ScorerConfig()

    def score(self, records: Sequence[Record]) -> ScoreResult:
        raw = self.model.score(records)
        return ScoreResult(raw.ids, raw.labels, raw.logits, self.config.top_k, self.config.label_bias)

    def predict(self, records: Sequence[Record]) -> list[Prediction]:
        return self.score(records).predictions()


def model_kind(folder: str | Path, manifest: dict | None = None) -> str:
    """The scorer kind of a model folder: from its manifest's `kind`; a cross-encoder folder holding only ONNX graphs
    (an `export_student` folder) is ``onnx``."""
    from lref.models.onnx import ONNX_FILES

    folder = Path(folder)
    manifest = read_manifest(folder) if manifest is None and folder.is_dir() else manifest
    kind = MANIFEST_KINDS.get((manifest or {}).get("kind"), "llm")
    if kind == "encoder" and not (folder / "config.json").is_file() and any(
        (folder / name).is_file() for name in ONNX_FILES.values()
    ):
        return "onnx"
    return kind


@dataclass(frozen=True)
class ScorerSpec:
    """Everything decided about a scorer before a model is loaded: which folder, which kind, the scheme and the
    final config (match hints and label bias included). It pickles, so worker processes can build the same scorer."""

    folder: Path
    kind: str
    scheme: LabelScheme
    config: ScorerConfig


def scorer_spec(
    model: str | Path,
    *,
    kind: str | None = None,
    scheme: LabelScheme | str | None = None,
    default_scheme: LabelScheme | str | None = None,
    config: ScorerConfig | None = None,
    calibrated: bool = True,
) -> ScorerSpec:
    """Read `model`'s manifest and calibration and decide the kind, scheme, match hints and label bias (module docs);
    see `make_scorer` for the arguments. Raises before any weights load (unknown model, another scheme, a
    calibration for other labels)."""
    folder = resolve_model(model)
    manifest = read_manifest(folder)
    kind = kind or model_kind(folder, manifest)
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    label_scheme = scheme_for_model(manifest, scheme, default=default_scheme)
    config = for_model(config or _default_config(kind, manifest), manifest)
    if config.label_bias is None and calibrated:
        config = dataclasses.replace(config, label_bias=label_bias_for(folder, label_scheme))
    return ScorerSpec(Path(folder), kind, label_scheme, config)


def build_scorer(spec: ScorerSpec, *, backend: str = "torch", variant: str | None = None, device: str | None = "auto",
                 prompt_fn=direct_prompt) -> Scorer:
    """Load the model of `spec` and wrap it in the scorer of its kind, with `spec`'s scheme and config as they are."""
    folder, config = spec.folder, spec.config
    if spec.kind == "lexical":
        from lref.baselines.lexical import LexicalModel

        return LexicalScorer(LexicalModel.load(folder), config)
    if spec.kind == "encoder":
        from lref.models.cross_encoder import CrossEncoderScorer, load_cross_encoder

        encoder, tokenizer, _ = load_cross_encoder(folder)
        return CrossEncoderScorer(encoder, tokenizer, spec.scheme, config)
    if spec.kind == "onnx":
        from transformers import AutoTokenizer

        from lref.models.hybrid import MatchFeatures, is_hybrid
        from lref.models.onnx import OnnxScorer, onnx_session

        session = onnx_session(folder, variant or _exported_variant(folder), config.num_threads)
        match_features = MatchFeatures.from_pretrained(folder) if is_hybrid(folder) else None
        return OnnxScorer(session, AutoTokenizer.from_pretrained(str(folder)), spec.scheme, config, match_features)
    from lref.models.vllm_backend import VLLMScorer, resolve_backend

    if resolve_backend(backend) == "vllm":
        return VLLMScorer(folder, spec.scheme, config, prompt_fn)
    from lref.models.loading import load_causal_lm
    from lref.models.scorer import LabelScorer

    lm, tokenizer, _ = load_causal_lm(folder, device=device)
    return LabelScorer(lm, tokenizer, spec.scheme, config, prompt_fn)


def make_scorer(
    model: str | Path,
    *,
    kind: str | None = None,
    scheme: LabelScheme | str | None = None,
    default_scheme: LabelScheme | str | None = None,
    config: ScorerConfig | None = None,
    calibrated: bool = True,
    backend: str = "torch",
    variant: str | None = None,
    device: str | None = "auto",
    prompt_fn=direct_prompt,
) -> Scorer:
    """A scorer for `model` (zoo name or folder) with its scheme, match hints and label bias fixed (module docs).

    `kind`: one of `KINDS`, None to read it from the manifest. `scheme`: the scheme asked for (refused when the
    model learnt another); `default_scheme`: used when neither `scheme` nor the manifest names one. `config`: batch
    size, lengths, threads; None gives each kind's defaults (for encoders, the max_length they were trained with).
    `calibrated`: apply the folder's calibration.json when `config` sets no bias. `backend` (llm): torch, vllm or
    auto. `variant` (onnx): int8 or fp32, None for int8 where it was exported. `device` (llm, torch): "auto" puts
    the model on the GPU when there is one. `prompt_fn` (llm): the prompt template."""
    spec = scorer_spec(model, kind=kind, scheme=scheme, default_scheme=default_scheme, config=config,
                       calibrated=calibrated)
    return build_scorer(spec, backend=backend, variant=variant, device=device, prompt_fn=prompt_fn)


def _default_config(kind: str, manifest: dict | None) -> ScorerConfig:
    if kind in ("encoder", "onnx"):
        from lref.models.onnx import trained_max_length

        return ScorerConfig(max_length=trained_max_length(manifest))
    return ScorerConfig()


def _exported_variant(folder: Path) -> str:
    from lref.models.onnx import ONNX_FILES

    return "int8" if (folder / ONNX_FILES["int8"]).is_file() else "fp32"


def load_student(
    folder: str | Path,
    backend: str = "int8",
    *,
    threads: int | None = None,
    batch_size: int | None = None,
    config: ScorerConfig | None = None,
    calibrated: bool = True,
) -> Scorer:
    """A scorer for a student folder, by serving backend: 'int8' or 'onnx' (fp32) from an `export_student` folder,
    'torch' from the trained folder (or from an export folder whose source model is still in place).

    `config` wins over `threads`/`batch_size`; by default max_length is the one the student was trained with.
    `calibrated`: apply the folder's calibration.json (`lref calibrate`) when it has one and `config` sets no bias
    (an export carries its source's calibration)."""
    from lref.models.onnx import BACKENDS, trained_max_length

    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"student folder {folder} does not exist")
    manifest = read_manifest(folder)
    if config is None:
        config = ScorerConfig(batch_size=batch_size or 32, max_length=trained_max_length(manifest), top_k=3,
                              num_threads=threads)
    if calibrated and config.label_bias is None:  # the export folder's calibration, also when torch scores its source
        config = dataclasses.replace(config, label_bias=label_bias_for(folder, scheme_for_model(manifest)))
    if backend != "torch":
        return make_scorer(folder, kind="onnx", variant="int8" if backend == "int8" else "fp32", config=config,
                           calibrated=False)
    if not (folder / "config.json").is_file():  # an export folder: score with the PyTorch model it came from
        source = ((manifest or {}).get("export") or {}).get("source")
        if not source or not (Path(source) / "config.json").is_file():
            raise FileNotFoundError(f"{folder} holds no PyTorch model (and names no source folder that does)")
        folder = Path(source)
    return make_scorer(folder, kind="encoder", config=config, calibrated=False)


__all__ = ["KINDS", "LexicalScorer", "ScorerSpec", "build_scorer", "load_student", "make_scorer", "model_kind",
           "scorer_spec"]
