"""Agreement between a judge and the people who labelled the data: the figures that say whether a judge can stand in
for a rater, beside the classification metrics of `lref.metrics` (which builds them into `evaluate`).

- Cohen's κ and quadratic-weighted κ (scikit-learn's `cohen_kappa_score` for a point estimate, and the same formula
  on whole stacks of confusion matrices for the bootstrap, `kappa_from_confusion`);
- Spearman's ρ of the judge's expected rating against the gold rating (scipy for a point estimate;
  `resampled_spearman` for bootstrap resamples given as replication counts, without materialising them);
- Krippendorff's α (ordinal) among the raters, and with the judge as one more rater (the `krippendorff` package);
- NDCG@k per query (ir-measures, through pytrec_eval), ranking each query's pairs by the judge's expected rating
  against gains from the gold rating.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
from scipy.stats import spearmanr
from sklearn.metrics import cohen_kappa_score

KAPPA_WEIGHTS = {"cohen_kappa": None, "quadratic_weighted_kappa": "quadratic"}
"""JSON key -> scikit-learn's `weights` argument."""

GAIN_SCALE = 100
"""Gold ratings become integer gains round((rating - lowest rating) * GAIN_SCALE): pytrec_eval takes integer
relevance only, and NDCG does not change when every gain is multiplied by one constant."""

NDCG_CUTOFFS = (5, 10)


def cohen_kappa(y_true: np.ndarray, y_pred: np.ndarray, n_labels: int, weights: str | None = None) -> float | None:
    """scikit-learn's κ over grade indices 0..n_labels-1 (scheme order, so quadratic weights follow the grades);
    None where κ is undefined (both sides use one and the same grade)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the undefined case warns; it is reported as None
        value = cohen_kappa_score(y_true, y_pred, labels=list(range(n_labels)), weights=weights,
                                  replace_undefined_by=np.nan)
    return None if math.isnan(value) else float(value)


def kappa_from_confusion(cm: np.ndarray, weights: str | None = None) -> np.ndarray:
    """κ of each confusion matrix in a (..., K, K) stack, as `cohen_kappa_score` computes it: 1 − Σ w·observed /
    Σ w·expected, where expected is the outer product of the marginals and w is 1 off the diagonal (unweighted) or
    (i − j)² (quadratic). NaN where the expected disagreement is 0."""
    k = cm.shape[-1]
    index = np.arange(k)
    if weights is None:
        w = 1.0 - np.eye(k)
    elif weights == "quadratic":
        w = (index[:, None] - index[None, :]).astype(float) ** 2
    else:
        raise ValueError(f"weights must be None or 'quadratic', got {weights!r}")
    cm = np.asarray(cm, dtype=float)
    total = cm.sum(axis=(-2, -1))
    expected = cm.sum(axis=-1)[..., :, None] * cm.sum(axis=-2)[..., None, :]
    observed_disagreement = (w * cm).sum(axis=(-2, -1))
    expected_disagreement = (w * expected).sum(axis=(-2, -1)) / np.where(total > 0, total, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(expected_disagreement > 0, 1.0 - observed_disagreement / expected_disagreement, np.nan)


def spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    """scipy's Spearman ρ; None where it is undefined (fewer than two pairs, or a side without variation)."""
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return float(spearmanr(x, y).statistic)


def _weighted_midranks(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(R, n) ranks of `values` (n,) in each of the R samples where value i occurs weights[r, i] times: the mean rank
    of its tie group, as scipy's `rankdata` gives the expanded sample."""
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    group = np.empty(len(values), dtype=int)
    group[order] = np.cumsum(np.r_[True, ordered[1:] != ordered[:-1]]) - 1
    counts = np.add.reduceat(weights[:, order], starts, axis=1)
    midranks = np.cumsum(counts, axis=1) - (counts - 1) / 2
    return midranks[:, group]


def resampled_spearman(x: np.ndarray, y: np.ndarray, weights: np.ndarray, chunk: int = 128) -> np.ndarray:
    """Spearman's ρ of each sample that repeats pair i weights[r, i] times (R, n), as `spearman` of the expanded
    sample gives it; NaN where a sample has no variation. Chunked so memory stays near chunk·n floats."""
    out = np.empty(len(weights))
    for begin in range(0, len(weights), chunk):
        w = weights[begin:begin + chunk]
        rx, ry = _weighted_midranks(x, w), _weighted_midranks(y, w)
        total = w.sum(axis=1, keepdims=True)
        mx, my = (w * rx).sum(axis=1, keepdims=True) / total, (w * ry).sum(axis=1, keepdims=True) / total
        dx, dy = rx - mx, ry - my
        covariance = (w * dx * dy).sum(axis=1)
        variance = (w * dx * dx).sum(axis=1) * (w * dy * dy).sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            out[begin:begin + chunk] = np.where(variance > 0, covariance / np.sqrt(variance), np.nan)
    return out


def integer_gains(ratings: np.ndarray, lowest_rating: float) -> np.ndarray:
    """NDCG gains: round((rating − lowest rating) · GAIN_SCALE), at least 0, so the least relevant grade gains 0."""
    return np.maximum(np.rint((np.asarray(ratings, dtype=float) - lowest_rating) * GAIN_SCALE), 0).astype(int)


def ndcg_per_query(
    query_index: np.ndarray, doc_ids: Sequence[str], scores: np.ndarray, gains: np.ndarray,
    cutoffs: Sequence[int] = NDCG_CUTOFFS,
) -> dict[int, dict[int, float]]:
    """cutoff -> {query -> NDCG@cutoff} from ir-measures (pytrec_eval), ranking each query's pairs by `scores`
    (ties in trec_eval's order, by document id) against integer `gains`. Only queries with at least two pairs and a
    positive gain are scored: NDCG is undefined without a gain, and one pair is ranked first whatever its score."""
    import ir_measures
    from ir_measures import Qrel, ScoredDoc, nDCG

    per_query = np.bincount(query_index)
    best = np.zeros(len(per_query), dtype=int)
    np.maximum.at(best, query_index, gains)
    kept = (per_query >= 2) & (best > 0)
    rows = [i for i, q in enumerate(query_index) if kept[q]]
    result: dict[int, dict[int, float]] = {cutoff: {} for cutoff in cutoffs}
    if not rows:
        return result
    qrels = [Qrel(str(query_index[i]), doc_ids[i], int(gains[i])) for i in rows]
    run = [ScoredDoc(str(query_index[i]), doc_ids[i], float(scores[i])) for i in rows]
    measures = {nDCG @ cutoff: cutoff for cutoff in cutoffs}
    evaluator = ir_measures.providers.registry["pytrec_eval"].evaluator(list(measures), qrels)
    for metric in evaluator.iter_calc(run):
        result[measures[metric.measure]][int(metric.query_id)] = float(metric.value)
    return result


def krippendorff_alphas(rater_labels: Sequence[Sequence[float]], judge: Sequence[float],
                        domain: Sequence[float]) -> dict[str, float | None]:
    """Ordinal Krippendorff's α of the raters among themselves (one list of ratings per pair; the i-th entry is
    rater i, shorter lists leave the later raters missing) and with `judge` as one more rater. `domain`: every
    rating value, in order. None where α is undefined (no pair rated twice, or a single value)."""
    import krippendorff

    width = max((len(labels) for labels in rater_labels), default=0)
    raters = np.full((width, len(rater_labels)), np.nan)
    for unit, labels in enumerate(rater_labels):
        raters[: len(labels), unit] = labels
    values = sorted(set(float(v) for v in domain) | set(raters[~np.isnan(raters)].tolist()))

    def alpha(data: np.ndarray) -> float | None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # 0/0 where every pairable value is the same: reported as None
                value = float(krippendorff.alpha(reliability_data=data, value_domain=values,
                                                 level_of_measurement="ordinal"))
        except ValueError:  # no pair rated twice, or a single value in the domain
            return None
        return value if math.isfinite(value) else None

    return {"raters": alpha(raters) if width else None,
            "with_judge": alpha(np.vstack([raters, np.asarray(judge, dtype=float)[None, :]]))}


__all__ = ["GAIN_SCALE", "KAPPA_WEIGHTS", "NDCG_CUTOFFS", "cohen_kappa", "integer_gains", "kappa_from_confusion",
           "krippendorff_alphas", "ndcg_per_query", "resampled_spearman", "spearman"]
