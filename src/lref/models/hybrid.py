"""The hybrid student: a cross-encoder whose label logits are joined with the lexical match features in one model.

    logits = encoder(query, product text).logits + feature_head(standardised match features)

The match features are the 25 of the lexical baseline (`lref.baselines.lexical.LexicalFeatures`: word, stem and
character overlaps, TF-IDF cosines, BM25, numbers and units, brand), computed from the query and the product text.
They cost about 0.2 ms a pair on one CPU core, against 10 to 20 ms for the encoder, and they carry what a small
encoder learns slowly from few pairs: exact term, number and brand matches. The feature head is a small two-layer
network whose last layer starts at zero, so training starts from the plain cross-encoder; it learns at its own rate
(`CrossEncoderConfig.feature_learning_rate`), since a head trained from scratch at the encoder's fine-tuning rate
barely moves in one epoch.

With a lexical prior (`CrossEncoderConfig.lexical_prior`), the lexical baseline's own log-probabilities join the
features and are added to the logits as they are:

    logits = encoder(...).logits + feature_head(features, prior) + prior,  prior = log p_lexical(label | pair)

so training starts from the lexical model's judgement and the encoder learns what to change in it, as a boosting
stage does. The training pairs' prior comes out of fold (`lref.baselines.lexical.out_of_fold_proba`: each pair
scored by a lexical model that never saw its query), or the student would learn to trust in-sample figures; new pairs
are scored by the lexical model fitted on all training pairs, saved in the folder's `PRIOR_FOLDER`.

A hybrid folder is a cross-encoder folder (the encoder's weights, tokenizer and manifest, `kind: cross-encoder`)
plus three files: `FEATURE_HEAD_FILE` (the head's weights), `MATCH_FEATURES_FILE` (the feature statistics fitted on
the training pairs: IDF vectors, no pickle) and `HYBRID_FILE` (feature names, their training mean and spread, the
head's width). `lref.models.cross_encoder.load_cross_encoder` loads either kind; scorers, the ONNX export (one graph
with a `features` input) and `lref serve student` then handle both.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lref.baselines.lexical import (
    LexicalConfig,
    LexicalFeatures,
    LexicalModel,
    UnsafeModelError,
    out_of_fold_proba,
)
from lref.data.records import Record
from lref.io import atomic_write, write_json
from lref.models.zoo import ModelFileError

HYBRID_FILE = "hybrid.json"
MATCH_FEATURES_FILE = "match_features.npz"
FEATURE_HEAD_FILE = "feature_head.safetensors"
PRIOR_FOLDER = "lexical_prior"
"""The lexical model (`lref.baselines.lexical.LexicalModel`, skops format) of a hybrid with a lexical prior."""
PRIOR_FLOOR = 1e-6
"""Lexical probabilities are floored here before the log: a GBDT's 0 must not put -inf into the logits."""
FEATURE_INPUT = "features"
"""The name of the features tensor in a batch, in the model's forward and in the ONNX graph."""
FEATURE_CLIP = 8.0
"""Standardised features are clipped to +-this: a title far longer than any in training must not swamp the head."""
HYBRID_FORMAT = 1
PRIOR_HYBRID_FORMAT = 2
"""The format of a hybrid with a lexical prior: an lref that reads only format 1 refuses it at load instead of
feeding its graph too few features."""


def is_hybrid(folder: str | Path) -> bool:
    """Whether a model folder (trained or exported) holds a hybrid student."""
    return (Path(folder) / HYBRID_FILE).is_file()


class MatchFeatures:
    """The lexical match features of pairs, standardised with the training pairs' mean and spread (N x F float32)."""

    def __init__(self, features: LexicalFeatures | None = None, mean=None, scale=None,
                 prior: LexicalModel | None = None):
        self.features = features or LexicalFeatures()
        self.mean = None if mean is None else np.asarray(mean, dtype=np.float64)
        self.scale = None if scale is None else np.asarray(scale, dtype=np.float64)
        self.prior = prior

    @property
    def names(self) -> tuple[str, ...]:
        """The columns `transform` returns: the match features, then the prior's log-probabilities if any."""
        prior = tuple(f"lexical_logp_{label}" for label in self.prior.scheme.labels) if self.prior is not None else ()
        return self.features.names + prior

    @property
    def n_prior(self) -> int:
        """How many trailing columns are the lexical prior's log-probabilities (0 without a prior)."""
        return len(self.prior.scheme) if self.prior is not None else 0

    def fit(self, records: Sequence[Record]) -> "MatchFeatures":
        """Learn the corpus statistics and the standardisation from the training pairs."""
        self.fit_transform(records)
        return self

    def fit_transform(self, records: Sequence[Record], prior: LexicalConfig | None = None,
                      prior_folds: int = 5) -> np.ndarray:
        """`fit` on the training pairs and their features, computed once. With `prior` (the lexical model's
        settings), also fit the lexical prior on the labelled pairs; the pairs' own prior columns are out of fold."""
        raw = self.features.fit(records).transform(records)
        self.mean = raw.mean(axis=0)
        spread = raw.std(axis=0)
        self.scale = np.where(spread > 1e-9, spread, 1.0)
        if prior is None:
            self.prior = None
            return self.standardise(raw)
        self.prior, probs = out_of_fold_proba(records, prior, prior_folds)
        return np.hstack([self.standardise(raw), prior_log_probs(probs)])

    def transform(self, records: Sequence[Record]) -> np.ndarray:
        if self.mean is None:
            raise RuntimeError("MatchFeatures.transform before fit")
        features = self.standardise(self.features.transform(records))
        if self.prior is None:
            return features
        return np.hstack([features, prior_log_probs(self.prior.predict_proba(records))])

    def standardise(self, raw: np.ndarray) -> np.ndarray:
        return np.clip((raw - self.mean) / self.scale, -FEATURE_CLIP, FEATURE_CLIP).astype(np.float32)

    def save_pretrained(self, folder: str | Path, hidden_size: int | None = None) -> None:
        """Write `MATCH_FEATURES_FILE` and `HYBRID_FILE` into `folder` (each atomically)."""
        folder = Path(folder)
        state = self.features.state()
        arrays = {key: state.pop(key) for key in ("word_idf", "char_idf", "bm25_idf")}
        with atomic_write(folder / MATCH_FEATURES_FILE, "wb") as handle:
            np.savez_compressed(handle, **arrays)
        prior = None
        if self.prior is not None:
            self.prior.save(folder / PRIOR_FOLDER)
            prior = {"folder": PRIOR_FOLDER, "labels": list(self.prior.scheme.labels)}
        write_json(folder / HYBRID_FILE, {
            "format": HYBRID_FORMAT if prior is None else PRIOR_HYBRID_FORMAT,
            "feature_names": list(self.features.names), "mean": self.mean.tolist(), "scale": self.scale.tolist(),
            "hidden_size": hidden_size, "clip": FEATURE_CLIP, "statistics": state,
            "prior": prior,
        })

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> "MatchFeatures":
        folder = Path(folder)
        spec = hybrid_spec(folder)
        path = folder / MATCH_FEATURES_FILE
        try:
            with np.load(path, allow_pickle=False) as arrays:
                state = {**spec["statistics"], **{key: arrays[key] for key in ("word_idf", "char_idf", "bm25_idf")}}
        except (OSError, ValueError, KeyError) as error:
            raise ModelFileError(f"{path} is not a readable match-feature file ({error}); the hybrid folder is "
                                 f"damaged or incomplete") from None
        features = LexicalFeatures.from_state(state)
        if list(features.names) != spec["feature_names"]:
            raise ModelFileError(f"{folder / HYBRID_FILE} names features {spec['feature_names']}, this lref computes "
                                 f"{list(features.names)}; retrain the hybrid student")
        prior = None
        if spec.get("prior"):
            prior_folder = folder / spec["prior"]["folder"]
            try:
                prior = LexicalModel.load(prior_folder)
            except (FileNotFoundError, UnsafeModelError) as error:
                raise ModelFileError(f"{folder / HYBRID_FILE} names a lexical prior in {prior_folder}, which holds no "
                                     f"readable lexical model ({error}); the hybrid folder is damaged or "
                                     f"incomplete") from None
            if list(prior.scheme.labels) != spec["prior"]["labels"]:
                raise ModelFileError(f"{prior_folder} labels {list(prior.scheme.labels)}, {folder / HYBRID_FILE} "
                                     f"expects {spec['prior']['labels']}; the hybrid folder is damaged")
        return cls(features, spec["mean"], spec["scale"], prior)


def prior_log_probs(probs: np.ndarray) -> np.ndarray:
    """The lexical prior's columns: log-probabilities, floored at `PRIOR_FLOOR` (float32)."""
    return np.log(np.clip(probs, PRIOR_FLOOR, 1.0)).astype(np.float32)


def hybrid_spec(folder: str | Path) -> dict:
    """`HYBRID_FILE` of a hybrid folder, checked; a damaged one raises `ModelFileError` naming it."""
    path = Path(folder) / HYBRID_FILE
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ModelFileError(f"{path} is not readable JSON ({error}); the hybrid folder is damaged") from None
    required = ("format", "feature_names", "mean", "scale", "statistics")
    if not isinstance(spec, dict) or any(key not in spec for key in required):
        raise ModelFileError(f"{path} lacks one of {', '.join(required)}; the hybrid folder is damaged")
    if spec["format"] not in (HYBRID_FORMAT, PRIOR_HYBRID_FORMAT):
        raise ModelFileError(f"{path} has format {spec['format']!r}, this lref reads {HYBRID_FORMAT} and "
                             f"{PRIOR_HYBRID_FORMAT}; retrain it")
    prior = spec.get("prior")
    if (prior is not None) != (spec["format"] == PRIOR_HYBRID_FORMAT):
        raise ModelFileError(f"{path}: format {PRIOR_HYBRID_FORMAT} goes with a lexical prior and only it; the hybrid "
                             f"folder is damaged")
    if prior is not None and not (isinstance(prior, dict) and "folder" in prior and "labels" in prior):
        raise ModelFileError(f"{path}: 'prior' needs a folder and labels; the hybrid folder is damaged")
    n = len(spec["feature_names"])
    if len(spec["mean"]) != n or len(spec["scale"]) != n:
        raise ModelFileError(f"{path}: mean and scale need one value per feature ({n})")
    return spec


@functools.cache
def hybrid_model_class():
    """`HybridCrossEncoder`, a torch module (built on first use, so importing this module does not import torch)."""
    import torch
    from transformers.modeling_outputs import SequenceClassifierOutput

    class HybridCrossEncoder(torch.nn.Module):
        """An `AutoModelForSequenceClassification` encoder plus `feature_head` over the match features."""

        def __init__(self, encoder, n_features: int, hidden_size: int = 64,
                     match_features: MatchFeatures | None = None, n_prior: int = 0):
            super().__init__()
            self.n_prior = n_prior  # the features' last n_prior columns are log-probabilities added to the logits
            self.encoder = encoder
            n_labels = encoder.config.num_labels
            self.feature_head = torch.nn.Sequential(
                torch.nn.Linear(n_features, hidden_size), torch.nn.GELU(), torch.nn.Linear(hidden_size, n_labels)
            )
            torch.nn.init.zeros_(self.feature_head[2].weight)  # start as the plain cross-encoder
            torch.nn.init.zeros_(self.feature_head[2].bias)
            self.hidden_size = hidden_size
            self.match_features = match_features

        @property
        def config(self):
            return self.encoder.config

        @property
        def device(self):
            return self.encoder.device

        def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, features=None):
            if features is None:
                raise ValueError(f"a hybrid cross-encoder needs the '{FEATURE_INPUT}' tensor of the pairs")
            tokens = {"input_ids": input_ids, "attention_mask": attention_mask}
            if token_type_ids is not None:
                tokens["token_type_ids"] = token_type_ids
            logits = self.encoder(**tokens).logits
            features = features.to(logits.dtype)
            logits = logits + self.feature_head(features)
            if self.n_prior:
                logits = logits + features[:, -self.n_prior:]
            return SequenceClassifierOutput(logits=logits)

        def save_pretrained(self, folder: str | Path) -> None:
            from safetensors.torch import save_file

            self.encoder.save_pretrained(str(folder))
            head = {key: value.detach().contiguous().cpu() for key, value in self.feature_head.state_dict().items()}
            save_file(head, str(Path(folder) / FEATURE_HEAD_FILE))
            if self.match_features is not None:
                self.match_features.save_pretrained(folder, self.hidden_size)

    return HybridCrossEncoder


def load_hybrid(folder: str | Path, encoder):
    """The hybrid model of a trained folder around its loaded `encoder` (head weights and match features read)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    spec = hybrid_spec(folder)
    match_features = MatchFeatures.from_pretrained(folder)
    model = hybrid_model_class()(encoder, len(match_features.names), int(spec.get("hidden_size") or 64),
                                 match_features, match_features.n_prior)
    path = folder / FEATURE_HEAD_FILE
    try:
        model.feature_head.load_state_dict(load_file(str(path)))
    except (OSError, RuntimeError, ValueError, SafetensorError) as error:
        raise ModelFileError(f"{path} does not hold this hybrid's feature head ({error}); the folder is damaged or "
                             f"incomplete") from None
    return model.eval()


__all__ = [
    "FEATURE_CLIP",
    "FEATURE_HEAD_FILE",
    "FEATURE_INPUT",
    "HYBRID_FILE",
    "MATCH_FEATURES_FILE",
    "MatchFeatures",
    "PRIOR_FLOOR",
    "PRIOR_FOLDER",
    "PRIOR_HYBRID_FORMAT",
    "hybrid_model_class",
    "hybrid_spec",
    "is_hybrid",
    "load_hybrid",
    "prior_log_probs",
]
