import numpy as np
import pytest
from sklearn.metrics import f1_score

from lref.data.records import DataError, Record
from lref.metrics import (
    evaluate,
    format_report,
    paired_difference,
    scores_from_confusion,
)
from lref.predictions import Prediction

# Six pairs over two queries, scheme graded3 (Exact=3, Partial=2, Irrelevant=1).
GOLD = ["Exact", "Exact", "Exact", "Partial", "Irrelevant", "Irrelevant"]
PRED = ["Exact", "Exact", "Irrelevant", "Partial", "Partial", "Irrelevant"]
RAW = [3.0, 2.6, 2.2, 2.0, 1.4, 1.0]
PROBS = [
    {"Exact": 0.8, "Partial": 0.2},  # expected rating 2.8
    {},  # one-hot Exact: 3
    {"Irrelevant": 0.5, "Partial": 0.3, "Exact": 0.2},  # 0.5 + 0.6 + 0.6 = 1.7
    {},  # Partial: 2
    {"Partial": 0.6, "Irrelevant": 0.4},  # 1.2 + 0.4 = 1.6
    {},  # Irrelevant: 1
]


def six_pairs(raw=True):
    gold = [
        Record(
            f"r{i}", "query a" if i < 3 else "query b", f"title {i}", label=GOLD[i], raw_score=RAW[i] if raw else None
        )
        for i in range(6)
    ]
    preds = [Prediction(f"r{i}", PRED[i], PROBS[i]) for i in range(6)]
    return gold, preds


def test_hand_computed_metrics():
    gold, preds = six_pairs()
    result = evaluate(gold, preds, "graded3", bootstrap=0)
    assert result["n"] == 6 and result["n_queries"] == 2
    assert result["accuracy"] == pytest.approx(4 / 6)
    # per class: Exact P=2/2 R=2/3 F1=0.8; Partial P=1/2 R=1/1 F1=2/3; Irrelevant P=1/2 R=1/2 F1=1/2
    assert result["per_class"]["Exact"] == pytest.approx({"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3})
    assert result["per_class"]["Partial"] == pytest.approx({"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 1})
    assert result["per_class"]["Irrelevant"] == pytest.approx(
        {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    )
    assert result["macro_f1"] == pytest.approx((0.8 + 2 / 3 + 0.5) / 3)
    assert result["weighted_f1"] == pytest.approx((3 * 0.8 + 1 * 2 / 3 + 2 * 0.5) / 6)
    assert result["majority_label"] == "Exact" and result["majority_floor"] == pytest.approx(0.5)
    assert result["labels"] == ["Exact", "Partial", "Irrelevant"]
    assert result["confusion"] == [[2, 0, 1], [0, 1, 0], [0, 1, 1]]
    # pair 5 (gold Irrelevant, predicted Partial) over-estimates; pair 3 (Exact -> Irrelevant) under-estimates by 2
    assert result["over_estimate_share"] == pytest.approx(1 / 6)
    assert result["under_estimate_share"] == pytest.approx(1 / 6)
    assert result["over_share_of_errors"] == pytest.approx(0.5)
    assert result["mean_abs_grade_error"] == pytest.approx(3 / 6)
    # squared errors: 0.04, 0.16, 0.25, 0, 0.04, 0 -> sum 0.49
    assert result["rmse"] == pytest.approx(np.sqrt(0.49 / 6))
    assert result["ci95"] == {}


def test_rmse_needs_every_raw_score_and_no_errors_gives_none():
    gold, preds = six_pairs(raw=False)
    assert evaluate(gold, preds, "graded3", bootstrap=0)["rmse"] is None
    perfect = [Prediction(r.id, r.label) for r in gold]
    result = evaluate(gold, perfect, "graded3", bootstrap=0)
    assert result["accuracy"] == 1.0 and result["over_share_of_errors"] is None


def test_bootstrap_resamples_queries_not_pairs():
    gold, preds = six_pairs()
    result = evaluate(gold, preds, "graded3", bootstrap=1000, seed=7)
    # Both queries have accuracy 2/3, so every query resample has accuracy 2/3 (a pair resample would not).
    assert result["ci95"]["accuracy"] == pytest.approx([2 / 3, 2 / 3])
    # Resamples are {a,a}, {a,b}, {b,b}: macro-F1 0.4, 0.656, 2/3; RMSE sqrt(0.45/3), ..., sqrt(0.04/3).
    assert result["ci95"]["macro_f1"] == pytest.approx([0.4, 2 / 3])
    assert result["ci95"]["weighted_f1"] == pytest.approx([2 / 3, 0.8])
    assert result["ci95"]["rmse"] == pytest.approx([np.sqrt(0.04 / 3), np.sqrt(0.45 / 3)])


def _noisy_set(n_queries=300, seed=0):
    rng = np.random.default_rng(seed)
    labels = ["Exact", "Partial", "Irrelevant"]
    gold, preds = [], []
    for q in range(n_queries):
        for j in range(rng.integers(2, 12)):
            g = labels[rng.integers(3)]
            p = g if rng.random() < 0.7 else labels[rng.integers(3)]
            gold.append(Record(f"q{q}-{j}", f"query {q}", "t", label=g, raw_score=float(rng.normal(2, 0.5))))
            preds.append(Prediction(f"q{q}-{j}", p))
    return gold, preds


def test_intervals_contain_the_estimate_and_are_reproducible():
    gold, preds = _noisy_set()
    first = evaluate(gold, preds, "graded3", bootstrap=500, seed=1)
    again = evaluate(gold, preds, "graded3", bootstrap=500, seed=1)
    other = evaluate(gold, preds, "graded3", bootstrap=500, seed=2)
    assert first["ci95"] == again["ci95"]
    assert first["ci95"] != other["ci95"]
    for name in ("accuracy", "macro_f1", "weighted_f1", "rmse"):
        low, high = first["ci95"][name]
        assert low < first[name] < high
        assert high - low < 0.2


def test_a_system_against_itself_differs_by_exactly_zero():
    gold, preds = _noisy_set()
    result = paired_difference(gold, preds, preds, "graded3", bootstrap=200)
    assert result["n"] == len(gold)
    for name in ("accuracy", "macro_f1", "weighted_f1", "over_estimate_share", "cohen_kappa",
                 "quadratic_weighted_kappa"):
        assert result[name] == 0 and result["ci95"][name] == [0, 0]


def test_paired_difference_is_the_difference_of_the_evaluations_with_a_narrower_interval():
    gold, better = _noisy_set()
    rng = np.random.default_rng(3)
    labels = ["Exact", "Partial", "Irrelevant"]
    # The baseline errs wherever `better` does, plus on a tenth of the pairs `better` gets right.
    worse = [Prediction(p.id, labels[(labels.index(g.label) + 1) % 3]) if p.label == g.label and rng.random() < 0.1
             else p for g, p in zip(gold, better)]
    first, second = (evaluate(gold, preds, "graded3", bootstrap=500, seed=1) for preds in (better, worse))
    result = paired_difference(gold, better, list(reversed(worse)), "graded3", bootstrap=500, seed=1)  # joined by id
    for name in ("accuracy", "macro_f1", "weighted_f1", "cohen_kappa", "quadratic_weighted_kappa"):
        assert result[name] == pytest.approx(first[name] - second[name])
        low, high = result["ci95"][name]
        assert 0 < low < result[name] < high  # every resample favours `better`
        assert high - low < first["ci95"][name][1] - first["ci95"][name][0]
    # Of the pairs `worse` changes, only Irrelevant ones (wrapped round to Exact) become over-estimates.
    over = result["over_estimate_share"]
    assert over == pytest.approx(first["over_estimate_share"] - second["over_estimate_share"])
    assert over < 0 and result["ci95"]["over_estimate_share"][1] <= 0


def test_paired_difference_needs_every_pair_and_resamples():
    gold, preds = six_pairs()
    with pytest.raises(DataError, match="1 of 6 gold record"):
        paired_difference(gold, preds, preds[:-1], "graded3")
    with pytest.raises(ValueError, match="bootstrap must be at least 1"):
        paired_difference(gold, preds, preds, "graded3", bootstrap=0)


def test_confusion_formulas_match_sklearn():
    rng = np.random.default_rng(3)
    for _ in range(20):
        y_true = rng.integers(0, 4, size=50)
        y_pred = np.where(rng.random(50) < 0.5, y_true, rng.integers(0, 3, size=50))  # label 3 never predicted
        cm = np.zeros((4, 4))
        np.add.at(cm, (y_true, y_pred), 1)
        scores = scores_from_confusion(cm)
        present = sorted(set(y_true) | set(y_pred))
        assert scores["accuracy"] == pytest.approx(np.mean(y_true == y_pred))
        assert scores["macro_f1"] == pytest.approx(
            f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)
        )
        assert scores["weighted_f1"] == pytest.approx(f1_score(y_true, y_pred, average="weighted", zero_division=0))


def test_missing_and_unmatched_ids_are_errors_unless_allowed():
    gold, preds = six_pairs()
    extra = preds[1:] + [Prediction("ghost", "Exact")]
    with pytest.raises(DataError) as error:
        evaluate(gold, extra, "graded3", bootstrap=0)
    message = str(error.value)
    assert "1 of 6 gold record(s) have no prediction ('r0')" in message
    assert "1 of 6 prediction(s) have no gold record ('ghost')" in message
    result = evaluate(gold, extra, "graded3", bootstrap=0, allow_missing=True)
    assert result["n"] == 5
    assert result["n_gold_without_prediction"] == 1 and result["n_predictions_without_gold"] == 1
    assert result["accuracy"] == pytest.approx(3 / 5)


def test_bad_labels_and_duplicates_are_named():
    gold, preds = six_pairs()
    with pytest.raises(DataError, match=r"prediction 'r2': label 'Perfect' is not in scheme 'graded3'"):
        evaluate(gold, preds[:2] + [Prediction("r2", "Perfect")] + preds[3:], "graded3", bootstrap=0)
    with pytest.raises(DataError, match=r"1 prediction id\(s\) occur more than once: 'r0'"):
        evaluate(gold, preds + [preds[0]], "graded3", bootstrap=0)
    unlabelled = [Record("r0", "query a", "t")] + gold[1:]
    with pytest.raises(DataError, match="gold record 'r0' has no label"):
        evaluate(unlabelled, preds, "graded3", bootstrap=0)


def test_band_breakdown_and_report():
    gold, preds = six_pairs()
    for record, band in zip(gold, ["head"] * 3 + ["tail"] * 3, strict=True):
        record.meta["query_band"] = band
    result = evaluate(gold, preds, "graded3", bootstrap=50)
    assert result["by_band"] == {
        "head": {"n": 3, "accuracy": pytest.approx(2 / 3), "macro_f1": pytest.approx(0.4)},
        "tail": {"n": 3, "accuracy": pytest.approx(2 / 3), "macro_f1": pytest.approx(2 / 3)},
    }
    from rich.console import Console

    console = Console(width=140, record=True)
    console.print(format_report(result, "graded3"))
    text = console.export_text()
    assert "majority floor 0.500 (always 'Exact')" in text
    assert "0.667" in text and "Per class" in text and "gold \\ pred" in text
    assert "by query band".lower() in text.lower()
