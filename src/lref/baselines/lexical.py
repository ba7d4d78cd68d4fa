"""The lexical baseline: query–product text-match features and a scikit-learn classifier.

Features (one row per pair, `FEATURE_NAMES`), computed on the query and the product text (title, plus brand when
the record has one), with the token and character n-gram overlaps done on hashed columns (sparse matrices for many
pairs at once, sets pair by pair for a served request's few: the same figures either way):

* word overlap: query coverage, title coverage and Jaccard of the word sets, plain and crudely stemmed;
  IDF-weighted query coverage; TF-IDF cosine;
* character 3-gram overlap (query coverage, Jaccard) and TF-IDF cosine, which forgive misspellings;
* BM25 of the query against the title (IDF and average length from the training titles);
* the query's last word (usually the product type) found in the title, exactly or by its first 4 letters;
* numbers and number+unit pairs (`18v`, `1/2 in.`, `50 ft`; unit spellings normalised) of the query found in the
  title, and whether the query names a number the title lacks;
* brand: the record's brand, or else the title's first word, mentioned in the query; the query naming a known
  brand (a brand or first title word seen 3+ times in training) absent from the product text;
* lengths of query and title;
* optionally (`query_context`) the pair's coverage and BM25 relative to the best pair of the same query among the
  pairs scored together: judgements are relative within a query's result list.

The classifier is `HistGradientBoostingClassifier` (default) or a standardised `LogisticRegression`.

    >>> from lref.baselines.lexical import LexicalConfig
    >>> LexicalConfig().classifier
    'gbdt'
"""

from __future__ import annotations

import functools
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from sklearn.utils import murmurhash3_32
from threadpoolctl import threadpool_limits

from lref.data.records import DataError, Record, has_label
from lref.data.splits import normalise_query
from lref.data.text import (
    NUMBER_RE,
    STOPWORDS,
    UNITS,
    numbers_and_units,
    product_text,
    stem,
    tokenize,
)
from lref.data.validation import validate_records
from lref.fingerprint import data_hash, library_versions
from lref.io import MANIFEST_NAME, atomic_write, write_json
from lref.labels import CLASS_BALANCE, class_weights, get_scheme
from lref.predictions import Prediction, ScoreResult

CLASSIFIERS = ("gbdt", "logistic")
MODEL_FILE = "lexical.skops"
"""The saved model: skops' safe format, which holds data (arrays, numbers, the fitted estimator's parameters) and
no code; `load` admits only the types in `TRUSTED_TYPES` beyond skops' own defaults."""
LEGACY_PICKLE = "lexical.joblib"
"""The pickle earlier versions wrote; loading a pickle runs whatever code it holds, so `load` refuses it unless told
the folder is trusted."""
TRUSTED_TYPES = ("sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",)
"""Types outside skops' default trusted set that a saved model may hold (the GBDT's fitted trees)."""
STATE_FORMAT = 1
KIND = "lexical"
_HASH_FEATURES = 2**18
MATCH_FEATURE_NAMES = (
    "word_cov_q", "word_cov_t", "word_jaccard", "stem_cov_q", "stem_cov_t", "stem_jaccard", "idf_cov_q",
    "word_tfidf_cos", "char_cov_q", "char_jaccard", "char_tfidf_cos", "bm25", "bm25_per_term",
)
"""The features computed on hashed columns (sparse matrices for many pairs, sets for a few)."""
FEATURE_NAMES = MATCH_FEATURE_NAMES + (
    "last_in_title", "last_prefix_in_title", "n_numbers", "number_cov", "number_missing", "n_units", "unit_cov",
    "brand_in_query", "known_brand_missing", "query_words", "title_words", "query_chars",
)
MATCH_METHODS = ("auto", "sparse", "per_pair")
PER_PAIR_MAX = 32
"""Up to this many pairs, `LexicalFeatures.transform` computes the hashed overlaps pair by pair (faster there)."""
CONTEXT_FEATURE_NAMES = ("stem_cov_q_gap", "bm25_gap", "char_cov_q_gap", "stem_cov_q_rank", "query_pairs")


@dataclass
class LexicalConfig:
    """Settings of the lexical baseline."""

    scheme: str = field(default="graded3", metadata={"help": "Label scheme (preset name) the records are labelled in."})
    classifier: str = field(
        default="gbdt",
        metadata={"help": "'gbdt' (scikit-learn HistGradientBoostingClassifier) or 'logistic' (standardised "
                  "multinomial logistic regression)."},
    )
    query_context: bool = field(
        default=False,
        metadata={"help": "Add features relative to the best-matching pair of the same query among the pairs scored "
                  "together (coverage and BM25 gaps, rank, pairs per query). Then a pair's score depends on its batch: "
                  "train and score on whole query result lists."},
    )
    class_balance: str = field(
        default="none",
        metadata={"help": "Per-example weights by label frequency: 'none', 'sqrt' or 'inverse' (as in SFT)."},
    )
    max_iter: int = field(default=300, metadata={"help": "Boosting rounds (gbdt) or solver iterations (logistic)."})
    learning_rate: float = field(default=0.1, metadata={"help": "Boosting learning rate (gbdt)."})
    max_leaf_nodes: int = field(default=15, metadata={"help": "Leaves per tree (gbdt)."})
    l2_regularization: float = field(
        default=1.0, metadata={"help": "L2 penalty of the trees (gbdt); inverse strength C = 1/this (logistic)."}
    )
    bm25_k1: float = field(default=1.2, metadata={"help": "BM25 term-frequency saturation."})
    bm25_b: float = field(default=0.75, metadata={"help": "BM25 length normalisation."})
    seed: int = field(default=0, metadata={"help": "Seed of the classifier (gbdt's validation split)."})
    threads: int | None = field(
        default=1,
        metadata={"help": "OpenMP threads of the classifier (None: all cores). One is nearly as fast at these sizes "
                  "and never stalls on a busy machine, where spinning OpenMP threads can be 40x slower."},
    )

    def __post_init__(self) -> None:

        get_scheme(self.scheme)
        if self.classifier not in CLASSIFIERS:
            raise ValueError(f"classifier must be one of {', '.join(CLASSIFIERS)}, not {self.classifier!r}")
        if self.class_balance not in CLASS_BALANCE:
            raise ValueError(f"class_balance must be one of {', '.join(CLASS_BALANCE)}, not {self.class_balance!r}")
        if self.max_iter < 1:
            raise ValueError(f"max_iter must be at least 1, not {self.max_iter}")
        if self.max_leaf_nodes < 2:
            raise ValueError(f"max_leaf_nodes must be at least 2, not {self.max_leaf_nodes}")
        for name in ("learning_rate", "l2_regularization", "bm25_k1"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, not {getattr(self, name)}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be at least 1 or None, not {self.threads}")
        if not 0 <= self.bm25_b <= 1:
            raise ValueError(f"bm25_b must lie in [0, 1], not {self.bm25_b}")


# ---------------------------------------------------------------------------------------------------------------------
# Features


def _row_sum(matrix) -> np.ndarray:
    return np.asarray(matrix.sum(axis=1)).ravel().astype(np.float64)


def _divide(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.divide(a, b, out=np.zeros_like(a, dtype=np.float64), where=b > 0)


def _hash_tokens(token_lists: Sequence[Sequence[str]]):
    from sklearn.feature_extraction import FeatureHasher

    hasher = FeatureHasher(n_features=_HASH_FEATURES, input_type="string", alternate_sign=False)
    return hasher.transform(token_lists).tocsr()


def _hash_chars(texts: Sequence[str]):
    from sklearn.feature_extraction.text import HashingVectorizer

    vectorizer = HashingVectorizer(
        analyzer="char_wb", ngram_range=(3, 3), n_features=_HASH_FEATURES, alternate_sign=False, norm=None,
        lowercase=False,
    )
    return vectorizer.transform(texts).tocsr()


def _binary(matrix):
    matrix = matrix.copy()
    matrix.data[:] = 1.0
    return matrix


def _cosine(a, b, idf: np.ndarray) -> np.ndarray:
    from sklearn.preprocessing import normalize

    a = normalize(a.multiply(idf).tocsr())
    b = normalize(b.multiply(idf).tocsr())
    return _row_sum(a.multiply(b))


def _idf(document_matrix) -> np.ndarray:
    """Smoothed IDF (scikit-learn's formula) over the hashed columns, from binary document occurrences."""
    n = document_matrix.shape[0]
    df = np.bincount(document_matrix.indices, minlength=_HASH_FEATURES)
    return (np.log((1 + n) / (1 + df)) + 1).astype(np.float32)


@functools.lru_cache(maxsize=2**16)
def _column(token: str) -> int:
    """The hashed column of a token or n-gram: what `_hash_tokens` and `_hash_chars` (scikit-learn's FeatureHasher,
    alternate_sign off) put it in."""
    return abs(murmurhash3_32(token, seed=0)) % _HASH_FEATURES


@functools.cache
def _char_analyzer():
    from sklearn.feature_extraction.text import HashingVectorizer

    return HashingVectorizer(analyzer="char_wb", ngram_range=(3, 3), lowercase=False).build_analyzer()


def _char_ngrams(text: str) -> list[str]:
    """The character 3-grams `_hash_chars` hashes (scikit-learn's char_wb analyzer)."""
    return _char_analyzer()(text)


def _set_cosine(a: dict[int, float], b: dict[int, float], idf: np.ndarray) -> float:
    """`_cosine` of one pair: IDF-weighted, L2-normalised counts by column."""
    norm_a = sum((v * float(idf[c])) ** 2 for c, v in a.items()) ** 0.5
    norm_b = sum((v * float(idf[c])) ** 2 for c, v in b.items()) ** 0.5
    if not norm_a or not norm_b:
        return 0.0
    return sum(a[c] * b[c] * float(idf[c]) ** 2 for c in a.keys() & b.keys()) / (norm_a * norm_b)


@dataclass
class _Texts:
    query_words: list[list[str]]
    title_words: list[list[str]]
    query_text: list[str]
    title_text: list[str]


def _texts(records: Sequence[Record]) -> _Texts:
    queries = [tokenize(r.query) for r in records]
    titles = [tokenize(product_text(r)) for r in records]
    return _Texts(queries, titles, [" ".join(t) for t in queries], [" ".join(t) for t in titles])


class LexicalFeatures:
    """The corpus statistics (IDF, BM25 average length, known brands) learned from training pairs, and the feature
    matrix of any pairs."""

    def __init__(self, k1: float = 1.2, b: float = 0.75, query_context: bool = False):
        self.k1, self.b, self.query_context = k1, b, query_context

    @property
    def names(self) -> tuple[str, ...]:
        return FEATURE_NAMES + (CONTEXT_FEATURE_NAMES if self.query_context else ())

    def fit(self, records: Sequence[Record]) -> "LexicalFeatures":
        texts = _texts(records)
        words = _hash_tokens([sorted(set(t)) for t in texts.title_words])
        chars = _binary(_hash_chars(texts.title_text))
        self.word_idf_ = _idf(words)
        self.char_idf_ = _idf(chars)
        n = max(len(records), 1)
        self.bm25_idf_ = np.log(1 + (n - np.bincount(words.indices, minlength=_HASH_FEATURES) + 0.5)
                                / (np.bincount(words.indices, minlength=_HASH_FEATURES) + 0.5)).astype(np.float32)
        self.avg_title_words_ = float(np.mean([len(t) for t in texts.title_words])) if records else 1.0
        leads = Counter(r.brand.lower() if r.brand else (t[0] if t else "") for r, t in zip(records, texts.title_words))
        self.known_brands_ = frozenset(
            b for b, c in leads.items() if c >= 3 and b and not b[0].isdigit() and b not in STOPWORDS and b not in UNITS
        )
        return self

    def state(self) -> dict:
        """The fitted statistics as plain data (arrays, numbers, strings): what `from_state` rebuilds from."""
        if not hasattr(self, "word_idf_"):
            raise RuntimeError("LexicalFeatures.state before fit")
        return {
            "k1": self.k1, "b": self.b, "query_context": self.query_context,
            "word_idf": self.word_idf_, "char_idf": self.char_idf_, "bm25_idf": self.bm25_idf_,
            "avg_title_words": self.avg_title_words_, "known_brands": sorted(self.known_brands_),
        }

    @classmethod
    def from_state(cls, state: dict) -> "LexicalFeatures":
        """Fitted features from `state()`'s data."""
        features = cls(float(state["k1"]), float(state["b"]), bool(state["query_context"]))
        features.word_idf_ = np.asarray(state["word_idf"], dtype=np.float32)
        features.char_idf_ = np.asarray(state["char_idf"], dtype=np.float32)
        features.bm25_idf_ = np.asarray(state["bm25_idf"], dtype=np.float32)
        features.avg_title_words_ = float(state["avg_title_words"])
        features.known_brands_ = frozenset(str(b) for b in state["known_brands"])
        return features

    def _sparse_match(self, texts: _Texts) -> dict[str, np.ndarray]:
        """The overlap, TF-IDF and BM25 columns of all pairs at once, on hashed sparse matrices."""
        columns: dict[str, np.ndarray] = {}

        def overlap(prefix: str, q, t) -> None:
            nq, nt = _row_sum(q), _row_sum(t)
            common = _row_sum(q.multiply(t))
            columns[f"{prefix}_cov_q"] = _divide(common, nq)
            if f"{prefix}_cov_t" in FEATURE_NAMES:
                columns[f"{prefix}_cov_t"] = _divide(common, nt)
            columns[f"{prefix}_jaccard"] = _divide(common, nq + nt - common)

        q_words = _binary(_hash_tokens(texts.query_words))
        t_counts = _hash_tokens(texts.title_words)
        t_words = _binary(t_counts)
        overlap("word", q_words, t_words)
        overlap("stem", _binary(_hash_tokens([[stem(w) for w in q] for q in texts.query_words])),
                _binary(_hash_tokens([[stem(w) for w in t] for t in texts.title_words])))
        columns["idf_cov_q"] = _divide(_row_sum(q_words.multiply(t_words).multiply(self.word_idf_)),
                                       _row_sum(q_words.multiply(self.word_idf_)))
        columns["word_tfidf_cos"] = _cosine(q_words, t_words, self.word_idf_)
        q_chars, t_chars = _hash_chars(texts.query_text), _hash_chars(texts.title_text)
        overlap("char", _binary(q_chars), _binary(t_chars))
        columns["char_tfidf_cos"] = _cosine(q_chars, t_chars, self.char_idf_)

        # BM25: the title's term frequencies saturated and length-normalised, weighted by IDF, summed over the query.
        lengths = np.array([len(t) for t in texts.title_words], dtype=np.float64)
        n = len(lengths)
        norm = self.k1 * (1 - self.b + self.b * lengths / max(self.avg_title_words_, 1e-9))
        weighted = t_counts.copy().astype(np.float64)
        rows = np.repeat(np.arange(n), np.diff(weighted.indptr))
        tf = weighted.data
        weighted.data = self.bm25_idf_[weighted.indices] * tf * (self.k1 + 1) / (tf + norm[rows])
        columns["bm25"] = _row_sum(q_words.multiply(weighted))
        columns["bm25_per_term"] = _divide(columns["bm25"], _row_sum(q_words))
        return columns

    def _per_pair_match(self, texts: _Texts) -> dict[str, np.ndarray]:
        """The same columns as `_sparse_match`, pair by pair on sets of hashed columns: no sparse-matrix overhead,
        which dominates for a handful of pairs."""
        rows = []
        for q, t, q_text, t_text in zip(texts.query_words, texts.title_words, texts.query_text, texts.title_text):
            q_words, t_counts = {_column(w) for w in q}, Counter(_column(w) for w in t)
            t_words = set(t_counts)
            values = {}

            def overlap(prefix: str, q_set: set, t_set: set) -> None:
                common = len(q_set & t_set)
                values[f"{prefix}_cov_q"] = common / len(q_set) if q_set else 0.0
                values[f"{prefix}_cov_t"] = common / len(t_set) if t_set else 0.0
                union = len(q_set) + len(t_set) - common
                values[f"{prefix}_jaccard"] = common / union if union else 0.0

            overlap("word", q_words, t_words)
            overlap("stem", {_column(stem(w)) for w in q}, {_column(stem(w)) for w in t})
            idf = self.word_idf_
            q_idf = sum(float(idf[c]) for c in q_words)
            values["idf_cov_q"] = sum(float(idf[c]) for c in q_words & t_words) / q_idf if q_idf else 0.0
            values["word_tfidf_cos"] = _set_cosine(dict.fromkeys(q_words, 1), dict.fromkeys(t_words, 1), idf)
            q_chars, t_chars = Counter(map(_column, _char_ngrams(q_text))), Counter(map(_column, _char_ngrams(t_text)))
            overlap("char", set(q_chars), set(t_chars))
            values["char_tfidf_cos"] = _set_cosine(q_chars, t_chars, self.char_idf_)
            norm = self.k1 * (1 - self.b + self.b * len(t) / max(self.avg_title_words_, 1e-9))
            values["bm25"] = sum(float(self.bm25_idf_[c]) * t_counts[c] * (self.k1 + 1) / (t_counts[c] + norm)
                                 for c in q_words & t_words)
            values["bm25_per_term"] = values["bm25"] / len(q_words) if q_words else 0.0
            rows.append([values[name] for name in MATCH_FEATURE_NAMES])
        matrix = np.array(rows, dtype=np.float64).reshape(len(rows), len(MATCH_FEATURE_NAMES))
        return {name: matrix[:, j] for j, name in enumerate(MATCH_FEATURE_NAMES)}

    def transform(self, records: Sequence[Record], method: str = "auto") -> np.ndarray:
        """The feature matrix of `records` (one row per pair, columns `names`). The hashed word and character
        overlaps are computed on sparse matrices, which is fast for many pairs at once, or pair by pair on sets,
        which is fast for a few (a served request): `method` 'auto' picks by size (`PER_PAIR_MAX`); 'sparse' and
        'per_pair' force one. Both give the same matrix (tested)."""
        if not hasattr(self, "word_idf_"):
            raise RuntimeError("LexicalFeatures.transform before fit")
        if method not in MATCH_METHODS:
            raise ValueError(f"method must be one of {', '.join(MATCH_METHODS)}, not {method!r}")
        texts = _texts(records)
        n = len(records)
        per_pair = method == "per_pair" or (method == "auto" and n <= PER_PAIR_MAX)
        columns = self._per_pair_match(texts) if per_pair else self._sparse_match(texts)
        lengths = np.array([len(t) for t in texts.title_words], dtype=np.float64)

        last_in, last_prefix = np.zeros(n), np.zeros(n)
        n_numbers, number_cov, number_missing = np.zeros(n), np.zeros(n), np.zeros(n)
        n_units, unit_cov = np.zeros(n), np.zeros(n)
        brand_in_query, brand_missing = np.zeros(n), np.zeros(n)
        for i, (record, q, t) in enumerate(zip(records, texts.query_words, texts.title_words)):
            title_set = set(t) | {stem(w) for w in t}
            content = [w for w in q if w not in STOPWORDS and not NUMBER_RE.match(w) and w not in UNITS]
            if content:
                last = content[-1]
                last_in[i] = last in title_set or stem(last) in title_set
                last_prefix[i] = any(w[:4] == last[:4] for w in t if len(w) >= 4) if len(last) >= 4 else last_in[i]
            q_numbers, q_units = numbers_and_units(q)
            t_numbers, t_units = numbers_and_units(t)
            n_numbers[i], n_units[i] = len(q_numbers), len(q_units)
            if q_numbers:
                number_cov[i] = len(q_numbers & t_numbers) / len(q_numbers)
                number_missing[i] = bool(q_numbers - t_numbers)
            if q_units:
                unit_cov[i] = len(q_units & t_units) / len(q_units)
            brand = record.brand.lower().split() if record.brand else t[:1]
            query_set = set(q)
            brand_in_query[i] = bool(brand) and all(w in query_set for w in tokenize(" ".join(brand)))
            brand_missing[i] = any(w in self.known_brands_ and w not in title_set for w in query_set)
        columns.update(
            last_in_title=last_in, last_prefix_in_title=last_prefix, n_numbers=n_numbers, number_cov=number_cov,
            number_missing=number_missing, n_units=n_units, unit_cov=unit_cov, brand_in_query=brand_in_query,
            known_brand_missing=brand_missing,
            query_words=np.array([len(q) for q in texts.query_words], dtype=np.float64),
            title_words=lengths, query_chars=np.array([len(r.query) for r in records], dtype=np.float64),
        )
        if self.query_context:
            columns.update(_query_context(records, columns))
        return np.column_stack([columns[name] for name in self.names]) if n else np.zeros((0, len(self.names)))


def _query_context(records: Sequence[Record], columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each pair's gap to the best pair of its query (same normalised query among `records`) and its rank."""
    import pandas as pd


    frame = pd.DataFrame({
        "query": [normalise_query(r.query) for r in records],
        "stem": columns["stem_cov_q"], "bm25": columns["bm25"], "char": columns["char_cov_q"],
    })
    groups = frame.groupby("query", sort=False)
    return {
        "stem_cov_q_gap": (groups["stem"].transform("max") - frame["stem"]).to_numpy(),
        "bm25_gap": (groups["bm25"].transform("max") - frame["bm25"]).to_numpy(),
        "char_cov_q_gap": (groups["char"].transform("max") - frame["char"]).to_numpy(),
        "stem_cov_q_rank": groups["stem"].rank(ascending=False, pct=True).to_numpy(),
        "query_pairs": groups["stem"].transform("size").to_numpy(dtype=np.float64),
    }


# ---------------------------------------------------------------------------------------------------------------------
# Model


class LexicalModel:
    """Text-match features + a scikit-learn classifier, with the scikit-learn contract: `fit` returns self."""

    def __init__(self, config: LexicalConfig | None = None):
        self.config = config or LexicalConfig()

    @property
    def scheme(self):
        return get_scheme(self.config.scheme)

    def _classifier(self):
        config = self.config
        if config.classifier == "gbdt":
            from sklearn.ensemble import HistGradientBoostingClassifier

            return HistGradientBoostingClassifier(
                max_iter=config.max_iter, learning_rate=config.learning_rate, max_leaf_nodes=config.max_leaf_nodes,
                l2_regularization=config.l2_regularization, early_stopping=True, random_state=config.seed,
            )
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        return make_pipeline(
            StandardScaler(), LogisticRegression(C=1 / config.l2_regularization, max_iter=config.max_iter)
        )

    def fit(self, records: Sequence[Record]) -> "LexicalModel":

        scheme = self.scheme
        records = validate_records(records, scheme, "training")
        labels = np.array([scheme.index(r.label) for r in records])
        if len(set(labels.tolist())) < 2:
            raise DataError(f"the training records carry a single label ({records[0].label}); need at least two")
        started = time.perf_counter()
        self.features_ = LexicalFeatures(self.config.bm25_k1, self.config.bm25_b, self.config.query_context)
        matrix = self.features_.fit(records).transform(records)
        weights = class_weights([r.label for r in records], scheme, self.config.class_balance)
        sample_weight = np.array([weights[r.label] for r in records])
        classifier = self._classifier()
        step = classifier.steps[-1][0] + "__" if hasattr(classifier, "steps") else ""
        with threadpool_limits(self.config.threads):
            classifier.fit(matrix, labels, **{f"{step}sample_weight": sample_weight})
        self.classifier_ = classifier
        self.train_info_ = {
            "n_train": len(records),
            "data_hash": data_hash(records),
            "label_counts": dict(Counter(r.label for r in records)),
            "fit_seconds": round(time.perf_counter() - started, 3),
        }
        return self

    def predict_proba(self, records: Sequence[Record]) -> np.ndarray:
        """N x K probabilities in scheme order (a label unseen in training gets 0)."""
        if not hasattr(self, "classifier_"):
            raise RuntimeError("LexicalModel.predict_proba before fit")
        out = np.zeros((len(records), len(self.scheme)))
        if records:
            classes = self.classifier_.classes_
            with threadpool_limits(self.config.threads):
                out[:, classes] = self.classifier_.predict_proba(self.features_.transform(records))
        return out

    def score(self, records: Sequence[Record]):
        """A `ScoreResult`, as `LabelScorer` and `CrossEncoderScorer` return (log-probabilities as logits)."""
        probs = self.predict_proba(records)
        return ScoreResult([r.id for r in records], self.scheme.labels, np.log(np.clip(probs, 1e-9, 1.0)))

    def predict(self, records: Sequence[Record]) -> list[Prediction]:
        return self.score(records).predictions()

    def save(self, folder: str | Path) -> Path:
        """Write `lexical.skops` (skops' code-free format) and `lref_manifest.json` into `folder` (atomically, file by
        file); a `lexical.joblib` left by an earlier version is removed."""
        import skops.io as sio

        if not hasattr(self, "classifier_"):
            raise RuntimeError("LexicalModel.save before fit")
        folder = Path(folder)
        state = {
            "format": STATE_FORMAT,
            "config": asdict(self.config),
            "features": self.features_.state(),
            "classifier": self.classifier_,
            "train_info": self.train_info_,
        }
        with atomic_write(folder / MODEL_FILE, "wb") as handle:
            handle.write(sio.dumps(state))
        (folder / LEGACY_PICKLE).unlink(missing_ok=True)
        write_json(folder / MANIFEST_NAME, {
            "kind": KIND,
            "scheme": {"name": self.scheme.name, "labels": list(self.scheme.labels)},
            "features": list(self.features_.names),
            "config": asdict(self.config),
            **self.train_info_,
            "versions": {**library_versions(), "scikit-learn": _sklearn_version()},
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        })
        return folder

    @classmethod
    def load(cls, folder: str | Path, *, trust_pickle: bool = False) -> "LexicalModel":
        """Load a model saved by `save`. A folder holding only the pickle of earlier versions (`lexical.joblib`) is
        refused with `UnsafeModelError`, since unpickling runs code: retrain it, or pass `trust_pickle=True` for a
        folder you made yourself."""
        import skops.io as sio

        folder = Path(folder)
        path = folder / MODEL_FILE
        if not path.is_file():
            legacy = folder / LEGACY_PICKLE
            if legacy.is_file():
                if not trust_pickle:
                    raise UnsafeModelError(
                        f"{LEGACY_PICKLE} is a pickle written by an earlier lref, and loading a pickle runs any code "
                        f"it holds; retrain the lexical model (rerun `lref select --backbone lexical`) to save it as "
                        f"{MODEL_FILE}, or load it with LexicalModel.load(folder, trust_pickle=True) if you made it "
                        f"yourself",
                        path=str(legacy),
                    )
                import joblib

                return cls.from_state(joblib.load(legacy), legacy)
            raise FileNotFoundError(f"{folder} holds no {MODEL_FILE}: not a saved lexical model")
        try:
            untrusted = [t for t in sio.get_untrusted_types(file=path) if t not in TRUSTED_TYPES]
            if untrusted:
                raise UnsafeModelError(f"holds types lref does not load: {', '.join(untrusted)}", path=str(path))
            state = sio.load(path, trusted=list(TRUSTED_TYPES))
        except UnsafeModelError:
            raise
        except Exception as error:  # skops reports a damaged archive as zipfile, JSON or key errors
            raise UnsafeModelError(f"not a readable saved lexical model ({type(error).__name__}: {error})",
                                   path=str(path)) from None
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise UnsafeModelError("not a lexical model state of this lref version; retrain it", path=str(path))
        return cls.from_state(state, path)

    @classmethod
    def from_state(cls, state: dict, path: Path) -> "LexicalModel":
        """A fitted model from a saved state (the skops dict, or a legacy joblib dict holding the features object)."""
        model = cls(LexicalConfig(**state["config"]))
        saved = state["features"]
        if isinstance(saved, LexicalFeatures):  # the legacy pickle stored the object itself
            features = saved
        else:
            features = LexicalFeatures.from_state(saved)
        model.features_, model.classifier_, model.train_info_ = features, state["classifier"], state["train_info"]
        return model


def out_of_fold_proba(records: Sequence[Record], config: LexicalConfig, folds: int = 5
                      ) -> tuple[LexicalModel, np.ndarray]:
    """A lexical model fitted on the labelled `records`, and every record's probabilities (N x K) from a model that
    never saw its query: labelled records are scored by the model of the fold that held their query out
    (scikit-learn's `GroupKFold` over normalised queries), unlabelled ones by the model fitted on all labelled ones.

    This is how a stacked model's training inputs must be made: in-sample probabilities would be near-perfect on the
    very pairs a model learns from, and it would learn to trust them more than they deserve on new pairs."""
    from sklearn.model_selection import GroupKFold

    if folds < 2:
        raise ValueError(f"folds must be at least 2, not {folds}")
    labelled = [i for i, record in enumerate(records) if has_label(record)]
    queries = [normalise_query(records[i].query) for i in labelled]
    if len(set(queries)) < folds:
        raise DataError(f"{len(set(queries))} labelled queries cannot make {folds} query-disjoint folds; label more "
                        f"queries or lower the number of folds")
    full = LexicalModel(config).fit([records[i] for i in labelled])
    probs = np.zeros((len(records), len(full.scheme)))
    unlabelled = sorted(set(range(len(records))) - set(labelled))
    probs[unlabelled] = full.predict_proba([records[i] for i in unlabelled])
    for fit_rows, held_rows in GroupKFold(n_splits=folds).split(labelled, groups=queries):
        fold = LexicalModel(config).fit([records[labelled[j]] for j in fit_rows])
        held = [labelled[j] for j in held_rows]
        probs[held] = fold.predict_proba([records[i] for i in held])
    return full, probs


class UnsafeModelError(DataError):
    """A saved model that lref will not load: a pickle (which runs code), unexpected types, or a damaged file."""


def _sklearn_version() -> str:
    import sklearn

    return sklearn.__version__


__all__ = ["FEATURE_NAMES", "LEGACY_PICKLE", "MODEL_FILE", "TRUSTED_TYPES", "LexicalConfig", "LexicalFeatures",
           "LexicalModel", "UnsafeModelError", "out_of_fold_proba"]
