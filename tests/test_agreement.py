"""Agreement figures in `evaluate` (κ, QWK, Spearman, NDCG, Krippendorff's α, the agreed/disagreed split), checked
against scikit-learn, scipy and hand-computed or published values, and the benchmark's agreement table."""

import math

import numpy as np
import pytest
from scipy.stats import spearmanr
from sklearn.metrics import cohen_kappa_score

from lref.agreement import (
    GAIN_SCALE,
    integer_gains,
    kappa_from_confusion,
    krippendorff_alphas,
    ndcg_per_query,
    resampled_spearman,
)
from lref.data.records import DataError, Record
from lref.metrics import evaluate, format_report
from lref.predictions import Prediction

LABELS = ["Exact", "Partial", "Irrelevant"]
RATING = {"Exact": 3.0, "Partial": 2.0, "Irrelevant": 1.0}


def test_kappa_from_confusion_stacks_equal_sklearn():
    rng = np.random.default_rng(0)
    stack, expected = [], {None: [], "quadratic": []}
    for _ in range(30):
        y_true = rng.integers(0, 4, size=40)
        y_pred = np.where(rng.random(40) < 0.6, y_true, rng.integers(0, 3, size=40))  # grade 3 never predicted
        cm = np.zeros((4, 4))
        np.add.at(cm, (y_true, y_pred), 1)
        stack.append(cm)
        for weights in expected:
            expected[weights].append(cohen_kappa_score(y_true, y_pred, labels=[0, 1, 2, 3], weights=weights))
    for weights, values in expected.items():
        assert kappa_from_confusion(np.array(stack), weights) == pytest.approx(values)
    one_grade = np.zeros((3, 3))
    one_grade[1, 1] = 5  # both sides always say Partial: κ is undefined
    assert math.isnan(kappa_from_confusion(one_grade))


def test_resampled_spearman_equals_scipy_on_the_expanded_sample():
    rng = np.random.default_rng(1)
    x = rng.choice([1.0, 1.5, 2.0, 2.5, 3.0], size=60)  # ties on both sides
    y = np.round(x + rng.normal(0, 0.7, size=60), 1)
    weights = rng.integers(0, 3, size=(25, 60)).astype(float)  # 0: the pair is not drawn
    expected = [spearmanr(np.repeat(x, w.astype(int)), np.repeat(y, w.astype(int))).statistic for w in weights]
    assert resampled_spearman(x, y, weights, chunk=7) == pytest.approx(expected)
    assert math.isnan(resampled_spearman(np.ones(4), np.arange(4.0), np.ones((1, 4)))[0])


def _pairs(gold_labels, pred_labels, queries, raw=None, probs=None, meta=None):
    gold = [Record(f"r{i}", queries[i], f"title {i}", label=g, raw_score=None if raw is None else raw[i],
                   meta=dict(meta[i]) if meta else {})
            for i, g in enumerate(gold_labels)]
    preds = [Prediction(f"r{i}", p, (probs or [{}] * len(pred_labels))[i]) for i, p in enumerate(pred_labels)]
    return gold, preds


GOLD = ["Exact", "Exact", "Exact", "Partial", "Irrelevant", "Irrelevant"]
PRED = ["Exact", "Exact", "Irrelevant", "Partial", "Partial", "Irrelevant"]
QUERIES = ["query a"] * 3 + ["query b"] * 3
RAW = [3.0, 2.6, 2.2, 2.0, 1.4, 1.0]
PROBS = [{"Exact": 0.8, "Partial": 0.2}, {}, {"Irrelevant": 0.5, "Partial": 0.3, "Exact": 0.2}, {},
         {"Partial": 0.6, "Irrelevant": 0.4}, {}]
EXPECTED = [2.8, 3.0, 1.7, 2.0, 1.6, 1.0]  # Σ p·rating, or the predicted label's rating without probs


def _index(labels):
    return [LABELS.index(label) for label in labels]


def test_kappas_and_spearman_equal_sklearn_and_scipy():
    gold, preds = _pairs(GOLD, PRED, QUERIES, RAW, PROBS)
    result = evaluate(gold, preds, "graded3", bootstrap=0)
    assert result["cohen_kappa"] == pytest.approx(cohen_kappa_score(_index(GOLD), _index(PRED)))
    assert result["quadratic_weighted_kappa"] == pytest.approx(
        cohen_kappa_score(_index(GOLD), _index(PRED), weights="quadratic"))
    # by hand: observed agreement 4/6; chance (3·2 + 1·2 + 2·2)/36 = 1/3; κ = (2/3 − 1/3) / (2/3) = 0.5
    assert result["cohen_kappa"] == pytest.approx(0.5)
    assert result["spearman_against"] == "raw_score"
    assert result["spearman"] == pytest.approx(spearmanr(EXPECTED, RAW).statistic)
    # without raw scores Spearman compares with the gold label's rating
    gold, preds = _pairs(GOLD, PRED, QUERIES, None, PROBS)
    result = evaluate(gold, preds, "graded3", bootstrap=0)
    assert result["spearman_against"] == "label_rating"
    assert result["spearman"] == pytest.approx(spearmanr(EXPECTED, [RATING[g] for g in GOLD]).statistic)
    # a judge that always says one grade against gold of one grade: κ undefined, reported as null
    gold, preds = _pairs(["Partial"] * 3, ["Partial"] * 3, ["q"] * 3)
    result = evaluate(gold, preds, "graded3", bootstrap=0)
    assert result["cohen_kappa"] is None and result["quadratic_weighted_kappa"] is None and result["spearman"] is None


def test_ndcg_by_hand_and_which_queries_count():
    gold, preds = _pairs(GOLD, PRED, QUERIES, RAW, PROBS)
    result = evaluate(gold, preds, "graded3", bootstrap=0)
    # query a: gains (raw − 1) = 2.0, 1.6, 1.2; ranked by expected rating 3.0 (r1), 2.8 (r0), 1.7 (r2)
    dcg = 1.6 + 2.0 / math.log2(3) + 1.2 / 2
    ideal = 2.0 + 1.6 / math.log2(3) + 1.2 / 2
    # query b: gains 1.0, 0.4, 0.0; ranked 2.0 (r3), 1.6 (r4), 1.0 (r5): the ideal order
    assert result["ndcg@5"] == pytest.approx((dcg / ideal + 1.0) / 2, abs=1e-6)
    assert result["ndcg@10"] == result["ndcg@5"] and result["ndcg_queries"] == 2
    # one-pair queries and queries whose every gain is 0 are left out
    query_index = np.array([0, 1, 1, 2, 2, 2])
    values = ndcg_per_query(query_index, ["a", "b", "c", "d", "e", "f"], np.array([1.0, 2, 1, 3, 2, 1]),
                            np.array([5, 0, 0, 0, 100, 200]))
    assert set(values[5]) == {2}
    # NDCG does not change when every gain is scaled by one constant, so GAIN_SCALE is free
    doubled = ndcg_per_query(query_index, ["a", "b", "c", "d", "e", "f"], np.array([1.0, 2, 1, 3, 2, 1]),
                             np.array([5, 0, 0, 0, 200, 400]))
    assert doubled[10][2] == pytest.approx(values[10][2])
    assert list(integer_gains(np.array([1.0, 1.33, 2.67, 3.0]), 1.0)) == [0, 33, 167, 2 * GAIN_SCALE]


def test_intervals_come_from_the_same_query_bootstrap():
    """Two queries: every resample is {a,a}, {a,b} or {b,b}, so each interval runs from the smallest to the largest
    of the three values (a query drawn twice has the same κ, ρ and NDCG as drawn once)."""
    gold, preds = _pairs(GOLD, PRED, QUERIES, RAW, PROBS)
    result = evaluate(gold, preds, "graded3", bootstrap=1000, seed=3)
    a, b = slice(0, 3), slice(3, 6)
    true, pred, expected, raw = np.array(_index(GOLD)), np.array(_index(PRED)), np.array(EXPECTED), np.array(RAW)

    def kappa(rows, weights):
        return cohen_kappa_score(true[rows], pred[rows], labels=[0, 1, 2], weights=weights)

    for name, weights in (("cohen_kappa", None), ("quadratic_weighted_kappa", "quadratic")):
        values = [kappa(a, weights), kappa(slice(0, 6), weights), kappa(b, weights)]
        assert result["ci95"][name] == pytest.approx([min(values), max(values)])
    rhos = [spearmanr(expected[s], raw[s]).statistic for s in (a, slice(0, 6), b)]
    assert result["ci95"]["spearman"] == pytest.approx([min(rhos), max(rhos)])
    per_query = evaluate(gold[:3], preds[:3], "graded3", bootstrap=0)["ndcg@10"]
    assert result["ci95"]["ndcg@10"] == pytest.approx([per_query, 1.0])


# Krippendorff (2011), "Computing Krippendorff's alpha-reliability", the 4-coder example (ordinal α 0.815): each
# unit's values, the missing ones left out (α depends on the values a unit got, not on which coder gave them).
KRIPPENDORFF_UNITS = [[1, 1, 1], [2, 2, 3, 2], [3, 3, 3, 3], [3, 3, 3, 3], [2, 2, 2, 2], [1, 2, 3, 4], [4, 4, 4, 4],
                      [1, 1, 2, 1], [2, 2, 2, 2], [5, 5, 5], [1, 1], [3]]


def test_krippendorff_alpha_matches_the_published_example_and_adds_the_judge():
    alphas = krippendorff_alphas(KRIPPENDORFF_UNITS, [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, 3], [1, 2, 3, 4, 5])
    assert round(alphas["raters"], 3) == 0.815
    assert alphas["with_judge"] > alphas["raters"]  # a judge giving each unit its raters' majority value
    # in evaluate: graded3 ratings; raters all agree and the judge agrees with them -> α = 1 both ways
    meta = [{"rater_labels": [RATING[g]] * 3} for g in GOLD]
    gold, preds = _pairs(GOLD, GOLD, QUERIES, meta=meta)
    gold.append(Record("x", "query c", "t", label="Exact"))  # no rater labels: left out of α
    preds.append(Prediction("x", "Irrelevant"))
    result = evaluate(gold, preds, "graded3", bootstrap=0)
    assert result["n_rater_labelled"] == 6
    assert result["krippendorff_alpha_raters"] == pytest.approx(1.0)
    assert result["krippendorff_alpha_with_judge"] == pytest.approx(1.0)
    # the judge's predicted rating is one more rater: a wrong judge lowers α
    gold, preds = _pairs(GOLD, PRED, QUERIES, meta=meta)
    result = evaluate(gold, preds, "graded3", bootstrap=0)
    assert result["krippendorff_alpha_raters"] == pytest.approx(1.0)
    assert result["krippendorff_alpha_with_judge"] == pytest.approx(
        krippendorff_alphas([m["rater_labels"] for m in meta], [RATING[p] for p in PRED], [1, 2, 3])["with_judge"])
    assert result["krippendorff_alpha_with_judge"] < 0.9
    gold, preds = _pairs(GOLD, PRED, QUERIES)
    result = evaluate(gold, preds, "graded3", bootstrap=0)
    assert result["krippendorff_alpha_raters"] is None and result["n_rater_labelled"] == 0
    meta[2] = {"rater_labels": ["3", 2]}
    gold, preds = _pairs(GOLD, PRED, QUERIES, meta=meta)
    with pytest.raises(DataError, match=r"gold record 'r2': meta\['rater_labels'\] must be a non-empty list"):
        evaluate(gold, preds, "graded3", bootstrap=0)


def test_agreed_and_disagreed_split_equals_evaluating_each_subset():
    rng = np.random.default_rng(4)
    n = 60
    gold_labels = [LABELS[i] for i in rng.integers(0, 3, size=n)]
    pred_labels = [g if rng.random() < 0.6 else LABELS[rng.integers(0, 3)] for g in gold_labels]
    queries = [f"q{i // 5}" for i in range(n)]
    raw = [RATING[g] + (0.33 if i % 3 else 0.0) * (1 if g != "Exact" else -1) for i, g in enumerate(gold_labels)]
    # Home Depot flags on the first 40 pairs, CrowdFlower variances on the next 10, nothing on the last 10
    meta = [{"rater_disagreement": not float(r).is_integer()} for r in raw[:40]]
    meta += [{"relevance_variance": 0.0 if i % 2 else 0.5} for i in range(10)] + [{}] * 10
    gold, preds = _pairs(gold_labels, pred_labels, queries, raw, meta=meta)
    result = evaluate(gold, preds, "graded3", bootstrap=0)
    split = result["by_rater_agreement"]
    agreed = [i for i in range(50) if not (meta[i].get("rater_disagreement") or meta[i].get("relevance_variance"))]
    disagreed = [i for i in range(50) if i not in agreed]
    for name, rows in (("agreed", agreed), ("disagreed", disagreed)):
        alone = evaluate([gold[i] for i in rows], [preds[i] for i in rows], "graded3", bootstrap=0)
        assert split[name]["n"] == len(rows)
        for key in ("accuracy", "weighted_f1", "cohen_kappa", "quadratic_weighted_kappa", "spearman"):
            assert split[name][key] == pytest.approx(alone[key])
    assert "by_rater_agreement" not in evaluate(gold[50:], preds[50:], "graded3", bootstrap=0)

    from rich.console import Console

    console = Console(width=160, record=True)
    console.print(format_report(evaluate(gold, preds, "graded3", bootstrap=100), "graded3"))
    text = console.export_text()
    assert f"Cohen's κ            │ {result['cohen_kappa']:.3f} │ [" in text
    assert f"NDCG@10              │ {result['ndcg@10']:.3f}" in text and "Spearman ρ" in text
    assert "By rater agreement" in text and "the ceiling to compare a judge with" in text
    assert f"agreed    │    {len(agreed)} │    {split['agreed']['accuracy']:.3f}" in text


def test_the_benchmark_writes_an_agreement_table(monkeypatch):
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import homedepot

    rng = np.random.default_rng(5)
    gold_labels = [LABELS[i] for i in rng.integers(0, 3, size=80)]
    gold = [Record(f"r{i}", f"q{i // 4}", "t", label=g, raw_score=RATING[g] + (0.33 if i % 2 else 0.0),
                   meta={"rater_disagreement": bool(i % 2)}) for i, g in enumerate(gold_labels)]
    preds = [Prediction(r.id, r.label if rng.random() < 0.7 else "Partial") for r in gold]
    metrics = evaluate(gold, preds, "graded3", bootstrap=50)
    lines = homedepot.agreement_table({"lexical": metrics, "bert": {"skipped": "no model"},
                                       "student": {"weighted_f1": 0.5}})
    assert lines[1] == "## Agreement with the raters"
    row = next(line for line in lines if line.startswith("| lexical |"))
    low, high = metrics["ci95"]["cohen_kappa"]
    assert f"| {metrics['cohen_kappa']:.3f} [{low:.3f}, {high:.3f}] |" in row
    assert f"| {metrics['ndcg@10']:.3f} |" in row
    split = metrics["by_rater_agreement"]
    assert row.endswith(f"| {split['agreed']['cohen_kappa']:.3f} | {split['disagreed']['cohen_kappa']:.3f} |")
    assert "| student | – | – | – | – | – | – |" in lines and not any("| bert |" in line for line in lines)
