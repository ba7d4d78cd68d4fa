"""Evaluation of graded relevance predictions against gold labels.

Classification metrics come from scikit-learn (labels in scheme order, ``zero_division=0``). Macro-F1 averages over the
labels that occur in the gold labels or the predictions (scikit-learn's default), so a grade that neither side uses does
not count as an F1 of 0; `per_class` still lists every label of the scheme.

Grade errors use scheme indices (0 = most relevant): a prediction *over-estimates* relevance when its index is smaller
than the gold index. `rmse` compares the expected rating Σ p(label)·rating(label) with the gold `raw_score`.

Agreement with the raters (`lref.agreement`): Cohen's κ and quadratic-weighted κ over grade indices, Spearman's ρ of
the expected rating against the gold `raw_score` (or the gold label's rating where a record lacks one), NDCG@5/10 per
query ranking pairs by expected rating, Krippendorff's α where records carry `meta["rater_labels"]`, and every figure
split by whether the raters agreed (`meta["rater_disagreement"]` or `meta["relevance_variance"]`).

Confidence intervals are percentile bootstraps over **queries**: each resample draws as many queries as there are, with
replacement, and keeps all pairs of each drawn query (queries compared in their `normalise_query` form), because
pairs of one query are not independent.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)

from lref.agreement import (
    KAPPA_WEIGHTS,
    NDCG_CUTOFFS,
    cohen_kappa,
    integer_gains,
    kappa_from_confusion,
    krippendorff_alphas,
    ndcg_per_query,
    resampled_spearman,
    spearman,
)
from lref.data.records import DataError, Record
from lref.data.splits import normalise_query
from lref.labels import LabelError, LabelScheme, get_scheme
from lref.predictions import Prediction

BANDS = ("head", "torso", "tail")


@dataclass
class EvalConfig:
    """Settings of `evaluate`."""

    bootstrap: int = field(
        default=1000, metadata={"help": "Bootstrap resamples (over queries) for the 95% intervals; 0 skips them."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the bootstrap; the same seed gives the same intervals."})
    allow_missing: bool = field(
        default=False,
        metadata={"help": "Evaluate on the ids present on both sides instead of failing when ids do not match."},
    )

    def __post_init__(self) -> None:
        if self.bootstrap < 0:
            raise ValueError(f"bootstrap must be >= 0, got {self.bootstrap}")


def _examples(ids: list[str], k: int = 5) -> str:
    shown = ", ".join(repr(i) for i in ids[:k])
    return shown + (", ..." if len(ids) > k else "")


def _join(
    gold: list[Record], predictions: list[Prediction], allow_missing: bool
) -> tuple[list[tuple[Record, Prediction]], int, int]:
    gold_ids = Counter(r.id for r in gold)
    duplicated = [i for i, c in gold_ids.items() if c > 1]
    if duplicated:
        raise DataError(f"{len(duplicated)} gold id(s) occur more than once: {_examples(duplicated)}")
    by_id: dict[str, Prediction] = {}
    duplicated = []
    for prediction in predictions:
        if prediction.id in by_id:
            duplicated.append(prediction.id)
        by_id[prediction.id] = prediction
    if duplicated:
        raise DataError(f"{len(duplicated)} prediction id(s) occur more than once: {_examples(duplicated)}")
    missing = [r.id for r in gold if r.id not in by_id]
    unmatched = [p.id for p in predictions if p.id not in gold_ids]
    if (missing or unmatched) and not allow_missing:
        problems = []
        if missing:
            problems.append(f"{len(missing)} of {len(gold)} gold record(s) have no prediction ({_examples(missing)})")
        if unmatched:
            problems.append(
                f"{len(unmatched)} of {len(predictions)} prediction(s) have no gold record ({_examples(unmatched)})"
            )
        raise DataError("; ".join(problems) + "; pass allow_missing=True (CLI: --allow-missing) to evaluate on the ids "
                        "both sides share")
    pairs = [(r, by_id[r.id]) for r in gold if r.id in by_id]
    if not pairs:
        raise DataError("no prediction id matches a gold record id")
    return pairs, len(missing), len(unmatched)


def _label_index(scheme: LabelScheme, value: object, what: str, record_id: str) -> int:
    if value is None or value == "":
        raise DataError(f"{what} {record_id!r} has no label")
    try:
        return scheme.index(scheme.parse(value))
    except LabelError as error:
        raise DataError(f"{what} {record_id!r}: {error}") from None


def _expected_rating(prediction: Prediction, scheme: LabelScheme, label_index: int) -> float:
    """Σ p(label)·rating(label) with the probabilities renormalised; the predicted label's rating without them."""
    if prediction.probs:
        ratings = {label: rating for label, rating in zip(scheme.labels, scheme.ratings, strict=True)}
        total, value = 0.0, 0.0
        for label, p in prediction.probs.items():
            try:
                name = scheme.parse(label)
            except LabelError as error:
                raise DataError(f"prediction {prediction.id!r} probs: {error}") from None
            total += float(p)
            value += float(p) * ratings[name]
        if total > 0:
            return value / total
    return scheme.ratings[label_index]


def scores_from_confusion(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy, macro- and weighted-F1 from confusion matrices of shape (..., K, K), as scikit-learn computes them,
    and the over-estimate share (labels are ordered most relevant first, so over-estimates lie below the diagonal)."""
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    support = cm.sum(axis=-1)
    predicted = cm.sum(axis=-2)
    total = support.sum(axis=-1)
    denominator = support + predicted
    f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp, dtype=float), where=denominator > 0)
    present = denominator > 0
    return {
        "accuracy": tp.sum(axis=-1) / total,
        "macro_f1": (f1 * present).sum(axis=-1) / present.sum(axis=-1),
        "weighted_f1": (f1 * support).sum(axis=-1) / total,
        "over_estimate_share": np.tril(cm, k=-1).sum(axis=(-2, -1)) / total,
    }


def _query_draws(query_index: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """(resamples, queries) counts: how often each query is drawn in each bootstrap resample."""
    n_queries = int(query_index.max()) + 1
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_queries, np.full(n_queries, 1.0 / n_queries), size=resamples).astype(float)


def _resampled_scores(query_index: np.ndarray, gold: np.ndarray, pred: np.ndarray, n_labels: int,
                      draws: np.ndarray) -> dict[str, np.ndarray]:
    """`scores_from_confusion` and both κ of every resample in `draws` (one confusion matrix per resample)."""
    cells = np.zeros((draws.shape[1], n_labels * n_labels))
    np.add.at(cells, (query_index, gold * n_labels + pred), 1.0)
    matrices = (draws @ cells).reshape(len(draws), n_labels, n_labels)
    scores = scores_from_confusion(matrices)
    for name, weights in KAPPA_WEIGHTS.items():
        scores[name] = kappa_from_confusion(matrices, weights)
    return scores


def _query_index(records: list[Record]) -> np.ndarray:
    query_ids: dict[str, int] = {}
    return np.array([query_ids.setdefault(normalise_query(r.query), len(query_ids)) for r in records])


def _bootstrap(
    query_index: np.ndarray,
    gold: np.ndarray,
    pred: np.ndarray,
    n_labels: int,
    squared_errors: np.ndarray | None,
    resamples: int,
    seed: int,
    expected: np.ndarray | None = None,
    target: np.ndarray | None = None,
    ndcg: dict[str, dict[int, float]] | None = None,
) -> dict[str, list[float]]:
    """Percentile intervals of every metric over the same query resamples; `expected`/`target` add Spearman's ρ,
    `ndcg` (name -> {query: value}) the mean of the per-query values over the drawn queries."""
    n_queries = int(query_index.max()) + 1
    draws = _query_draws(query_index, resamples, seed)
    samples = _resampled_scores(query_index, gold, pred, n_labels, draws)
    if squared_errors is not None:
        per_query_sse = np.bincount(query_index, weights=squared_errors, minlength=n_queries)
        per_query_n = np.bincount(query_index, minlength=n_queries).astype(float)
        samples["rmse"] = np.sqrt((draws @ per_query_sse) / (draws @ per_query_n))
    if expected is not None and target is not None:
        chunk = 128  # (chunk, pairs) weights at a time
        samples["spearman"] = np.concatenate([
            resampled_spearman(expected, target, draws[begin:begin + chunk][:, query_index])
            for begin in range(0, len(draws), chunk)])
    for name, per_query in (ndcg or {}).items():
        if per_query:
            queries = np.fromiter(per_query, dtype=int)
            drawn = draws[:, queries]
            with np.errstate(divide="ignore", invalid="ignore"):
                samples[name] = (drawn @ np.fromiter(per_query.values(), dtype=float)) / drawn.sum(axis=1)
    intervals = {}
    for name, values in samples.items():
        values = values[~np.isnan(values)]  # a resample where a κ or ρ is undefined gives no value
        if len(values):
            intervals[name] = [float(v) for v in np.percentile(values, [2.5, 97.5])]
    return intervals


def _rater_labels(record: Record) -> list[float] | None:
    labels = record.meta.get("rater_labels")
    if labels is None:
        return None
    values = []
    if isinstance(labels, list | tuple):
        for value in labels:
            if isinstance(value, int | float) and not isinstance(value, bool):
                try:
                    values.append(float(value))
                except OverflowError:  # an integer too large for a float
                    break
    if not values or len(values) != len(labels) or not all(math.isfinite(v) for v in values):
        raise DataError(f"gold record {record.id!r}: meta['rater_labels'] must be a non-empty list of numeric "
                        f"ratings, one per rater, got {str(labels)[:200]}")
    return values


def _raters_disagreed(record: Record) -> bool | None:
    """True/False where the record says whether its raters disagreed, None where it does not say."""
    if "rater_disagreement" in record.meta:
        return bool(record.meta["rater_disagreement"])
    variance = record.meta.get("relevance_variance")
    if variance is None:
        return None
    try:
        return float(variance) > 0
    except (TypeError, ValueError):
        raise DataError(f"gold record {record.id!r}: meta['relevance_variance'] must be a number, "
                        f"got {variance!r}") from None


def _agreement_subset(y_true: np.ndarray, y_pred: np.ndarray, expected: np.ndarray, target: np.ndarray,
                      n_labels: int) -> dict[str, Any]:
    return {
        "n": len(y_true),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "weighted_f1": float(f1_score(y_true, y_pred, labels=list(range(n_labels)), average="weighted",
                                      zero_division=0)),
        **{name: cohen_kappa(y_true, y_pred, n_labels, weights) for name, weights in KAPPA_WEIGHTS.items()},
        "spearman": spearman(expected, target),
    }


def evaluate(
    gold: list[Record],
    predictions: list[Prediction],
    scheme: LabelScheme | str,
    bootstrap: int = 1000,
    seed: int = 0,
    allow_missing: bool = False,
) -> dict[str, Any]:
    """Compare `predictions` with `gold` (joined by id) and return a JSON-ready dict of metrics; see the module doc."""
    config = EvalConfig(bootstrap=bootstrap, seed=seed, allow_missing=allow_missing)
    scheme = get_scheme(scheme)
    pairs, n_missing, n_unmatched = _join(gold, predictions, config.allow_missing)
    k = len(scheme)
    y_true = np.array([_label_index(scheme, r.label, "gold record", r.id) for r, _ in pairs])
    y_pred = np.array([_label_index(scheme, p.label, "prediction", p.id) for _, p in pairs])
    labels = list(range(k))
    n = len(pairs)

    present = sorted(set(y_true.tolist()) | set(y_pred.tolist()))
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    counts = np.bincount(y_true, minlength=k)
    majority = int(np.argmax(counts))  # ties go to the more relevant grade
    difference = y_pred - y_true
    errors = int((difference != 0).sum())
    over = int((difference < 0).sum())

    result: dict[str, Any] = {
        "scheme": scheme.name,
        "labels": list(scheme.labels),
        "n": n,
        "n_queries": len({normalise_query(r.query) for r, _ in pairs}),
        "n_gold_without_prediction": n_missing,
        "n_predictions_without_gold": n_unmatched,
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(y_true, y_pred, labels=labels, average="weighted", zero_division=0)),
        "majority_label": scheme.labels[majority],
        "majority_floor": float(counts[majority] / n),
        "per_class": {
            scheme.labels[i]: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i in labels
        },
        "confusion": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "mean_abs_grade_error": float(np.abs(difference).mean()),
        "over_estimate_share": over / n,
        "under_estimate_share": (errors - over) / n,
        "over_share_of_errors": over / errors if errors else None,
        "rmse": None,
    }

    squared_errors = None
    expected = np.array([_expected_rating(p, scheme, int(i)) for (_, p), i in zip(pairs, y_pred, strict=True)])
    ratings = np.array(scheme.ratings, dtype=float)
    if all(r.raw_score is not None for r, _ in pairs):
        target = np.array([float(r.raw_score) for r, _ in pairs])  # type: ignore[arg-type]
        squared_errors = (expected - target) ** 2
        result["rmse"] = float(np.sqrt(squared_errors.mean()))
        result["spearman_against"] = "raw_score"
    else:
        target = ratings[y_true]
        result["spearman_against"] = "label_rating"

    for name, weights in KAPPA_WEIGHTS.items():
        result[name] = cohen_kappa(y_true, y_pred, k, weights)
    result["spearman"] = spearman(expected, target)
    query_index = _query_index([r for r, _ in pairs])
    per_query_ndcg = ndcg_per_query(query_index, [r.id for r, _ in pairs], expected,
                                    integer_gains(target, float(ratings.min())))
    ndcg = {f"ndcg@{cutoff}": values for cutoff, values in per_query_ndcg.items()}
    for name, values in ndcg.items():
        result[name] = float(np.mean(list(values.values()))) if values else None
    result["ndcg_queries"] = len(per_query_ndcg[NDCG_CUTOFFS[0]])

    rater_labels = [_rater_labels(r) for r, _ in pairs]
    rated = [i for i, labels in enumerate(rater_labels) if labels is not None]
    result["n_rater_labelled"] = len(rated)
    result["krippendorff_alpha_raters"] = result["krippendorff_alpha_with_judge"] = None
    if rated:
        alphas = krippendorff_alphas([rater_labels[i] for i in rated], ratings[y_pred[rated]], ratings)
        result["krippendorff_alpha_raters"] = alphas["raters"]
        result["krippendorff_alpha_with_judge"] = alphas["with_judge"]

    disagreed = [_raters_disagreed(r) for r, _ in pairs]
    if any(flag is not None for flag in disagreed):
        result["by_rater_agreement"] = {}
        for subset, wanted in (("agreed", False), ("disagreed", True)):
            mask = np.array([flag is wanted for flag in disagreed])
            if mask.any():
                result["by_rater_agreement"][subset] = _agreement_subset(
                    y_true[mask], y_pred[mask], expected[mask], target[mask], k)

    bands = [r.meta.get("query_band") for r, _ in pairs]
    if all(b in BANDS for b in bands):
        band_array = np.array(bands)
        result["by_band"] = {}
        for band in BANDS:
            mask = band_array == band
            if mask.any():
                t, p = y_true[mask], y_pred[mask]
                result["by_band"][band] = {
                    "n": int(mask.sum()),
                    "accuracy": float(accuracy_score(t, p)),
                    "macro_f1": float(
                        f1_score(
                            t, p, labels=sorted(set(t.tolist()) | set(p.tolist())), average="macro", zero_division=0
                        )
                    ),
                }

    result["bootstrap"] = config.bootstrap
    result["ci95"] = {}
    if config.bootstrap > 0:
        result["ci95"] = _bootstrap(query_index, y_true, y_pred, k, squared_errors, config.bootstrap, config.seed,
                                    expected=expected, target=target, ndcg=ndcg)
    return result


def paired_difference(
    gold: list[Record],
    predictions: list[Prediction],
    baseline: list[Prediction],
    scheme: LabelScheme | str,
    bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Accuracy, macro- and weighted-F1, over-estimate share, Cohen's κ and quadratic-weighted κ of `predictions`
    minus those of `baseline` on the same gold pairs, with a paired 95% interval: every bootstrap resample of queries
    scores both systems, so the interval is that of the difference, far narrower than the two systems' own intervals
    when they err on the same pairs. Both must cover every gold pair. A κ difference is None where a κ is undefined
    (one label only), and resamples where either κ is undefined give it no value."""
    scheme = get_scheme(scheme)
    if bootstrap < 1:
        raise ValueError(f"bootstrap must be at least 1 for a paired interval, got {bootstrap}")
    k = len(scheme)
    joined = [_join(gold, system, allow_missing=False)[0] for system in (predictions, baseline)]
    labels = [np.array([_label_index(scheme, p.label, what, p.id) for _, p in pairs])
              for what, pairs in zip(("prediction", "baseline prediction"), joined)]
    records = [r for r, _ in joined[0]]
    y_true = np.array([_label_index(scheme, r.label, "gold record", r.id) for r in records])
    query_index = _query_index(records)
    draws = _query_draws(query_index, bootstrap, seed)
    full = np.ones((1, draws.shape[1]))
    result: dict[str, Any] = {"scheme": scheme.name, "n": len(records), "bootstrap": bootstrap, "ci95": {}}
    point = [_resampled_scores(query_index, y_true, pred, k, full) for pred in labels]
    samples = [_resampled_scores(query_index, y_true, pred, k, draws) for pred in labels]
    for name in ("accuracy", "macro_f1", "weighted_f1", "over_estimate_share", *KAPPA_WEIGHTS):
        difference = float(point[0][name][0] - point[1][name][0])
        result[name] = None if np.isnan(difference) else difference
        drawn = samples[0][name] - samples[1][name]
        drawn = drawn[~np.isnan(drawn)]
        if len(drawn):
            result["ci95"][name] = [float(v) for v in np.percentile(drawn, [2.5, 97.5])]
    return result


def format_report(result: dict[str, Any], scheme: LabelScheme | str | None = None):
    """A rich renderable: headline metrics (majority floor beside accuracy), per-class table, confusion matrix."""
    from rich.console import Group
    from rich.table import Table

    labels = list(get_scheme(scheme).labels) if scheme is not None else list(result["labels"])
    ci = result.get("ci95") or {}

    def interval(name: str) -> str:
        return f"[{ci[name][0]:.3f}, {ci[name][1]:.3f}]" if name in ci else ""

    headline = Table(
        title=f"Relevance evaluation: {result['n']} pairs, {result['n_queries']} queries, scheme {result['scheme']}",
        caption="95% intervals: bootstrap over queries" if ci else None,
    )
    headline.add_column("metric")
    headline.add_column("value", justify="right")
    headline.add_column("95% CI" if ci else "", justify="right")
    headline.add_column("note")
    headline.add_row(
        "accuracy",
        f"{result['accuracy']:.3f}",
        interval("accuracy"),
        f"majority floor {result['majority_floor']:.3f} (always {result['majority_label']!r})",
    )
    headline.add_row("macro F1", f"{result['macro_f1']:.3f}", interval("macro_f1"), "")
    headline.add_row("weighted F1", f"{result['weighted_f1']:.3f}", interval("weighted_f1"), "support-weighted")
    headline.add_row("mean |grade error|", f"{result['mean_abs_grade_error']:.3f}", "", "in grade steps")
    share = result["over_share_of_errors"]
    headline.add_row(
        "over-estimates",
        f"{result['over_estimate_share']:.3f}",
        interval("over_estimate_share"),
        "predicted more relevant than gold" + (f"; {share:.1%} of errors" if share is not None else ""),
    )
    headline.add_row(
        "under-estimates", f"{result['under_estimate_share']:.3f}", "", "predicted less relevant than gold"
    )
    if result.get("rmse") is not None:
        headline.add_row("RMSE", f"{result['rmse']:.3f}", interval("rmse"), "expected rating vs raw score")
    against = {"raw_score": "raw score", "label_rating": "gold label's rating"}.get(result.get("spearman_against"), "")
    agreement = [
        ("Cohen's κ", "cohen_kappa", "agreement beyond chance"),
        ("quadratic-weighted κ", "quadratic_weighted_kappa", "far grade errors cost more"),
        ("Spearman ρ", "spearman", f"expected rating vs {against}"),
        ("NDCG@5", "ndcg@5", f"per query, mean over {result.get('ndcg_queries')} queries"),
        ("NDCG@10", "ndcg@10", "ranked by expected rating, gains from gold"),
        ("Krippendorff α raters", "krippendorff_alpha_raters",
         f"ordinal, {result.get('n_rater_labelled')} pairs with rater labels"),
        ("Krippendorff α + judge", "krippendorff_alpha_with_judge", "the judge's label as one more rater"),
    ]
    for title, name, note in agreement:
        if result.get(name) is not None:
            headline.add_row(title, f"{result[name]:.3f}", interval(name), note)

    per_class = Table(title="Per class")
    for name in ("label", "precision", "recall", "F1", "support"):
        per_class.add_column(name, justify="left" if name == "label" else "right")
    for label in labels:
        row = result["per_class"][label]
        per_class.add_row(
            label, f"{row['precision']:.3f}", f"{row['recall']:.3f}", f"{row['f1']:.3f}", str(row["support"])
        )

    confusion = Table(title="Confusion (rows gold, columns predicted)")
    confusion.add_column("gold \\ pred")
    for label in labels:
        confusion.add_column(label, justify="right")
    for label, row in zip(labels, result["confusion"], strict=True):
        confusion.add_row(label, *(str(v) for v in row))

    parts = [headline, per_class, confusion]
    if result.get("by_band"):
        bands = Table(title="By query band")
        for name in ("band", "pairs", "accuracy", "macro F1"):
            bands.add_column(name, justify="left" if name == "band" else "right")
        for band, row in result["by_band"].items():
            bands.add_row(band, str(row["n"]), f"{row['accuracy']:.3f}", f"{row['macro_f1']:.3f}")
        parts.append(bands)
    if result.get("by_rater_agreement"):
        split = Table(title="By rater agreement",
                      caption="agreed: pairs the raters agreed on, the ceiling to compare a judge with")

        def cell(value: float | None) -> str:
            return "–" if value is None else f"{value:.3f}"

        for name in ("raters", "pairs", "accuracy", "weighted F1", "κ", "QWK", "Spearman ρ"):
            split.add_column(name, justify="left" if name == "raters" else "right")
        for subset, row in result["by_rater_agreement"].items():
            split.add_row(subset, str(row["n"]), *(cell(row[key]) for key in (
                "accuracy", "weighted_f1", "cohen_kappa", "quadratic_weighted_kappa", "spearman")))
        parts.append(split)
    return Group(*parts)
