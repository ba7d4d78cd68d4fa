"""`lref data synth` and `lref eval`, run through lref.cli.main as the installed script runs it."""

import json
import re
from collections import Counter

import pytest
from helpers import run_lref

from lref.data import load_records

REQUIRED_KEYS = {
    "n",
    "accuracy",
    "macro_f1",
    "weighted_f1",
    "majority_floor",
    "majority_label",
    "per_class",
    "confusion",
    "labels",
    "mean_abs_grade_error",
    "over_estimate_share",
    "under_estimate_share",
    "over_share_of_errors",
    "rmse",
    "ci95",
    "cohen_kappa",
    "quadratic_weighted_kappa",
    "spearman",
    "spearman_against",
    "ndcg@5",
    "ndcg@10",
    "krippendorff_alpha_raters",
    "krippendorff_alpha_with_judge",
}


@pytest.fixture
def catalog(tmp_path, monkeypatch, capsys):
    path = tmp_path / "synth.jsonl"
    code, out, err = run_lref(
        monkeypatch, capsys, "data", "synth", "--out", str(path), "--pairs", "400", "--noise", "0.25", "--seed", "5"
    )
    assert code == 0, err
    assert f"wrote 400 records (40 queries, scheme graded3) to {path}" in out
    return path


def test_synth_writes_a_loadable_deterministic_catalog(catalog, tmp_path, monkeypatch, capsys):
    records = load_records(catalog, scheme="graded3")
    assert len(records) == 400
    assert {r.label for r in records} == {"Exact", "Partial", "Irrelevant"}
    noisy = [r for r in records if r.meta["label_noise"]]
    assert 0.15 < len(noisy) / 400 < 0.35
    assert all(r.label != r.meta["true_label"] for r in noisy)
    again = tmp_path / "again.jsonl"
    assert (
        run_lref(
            monkeypatch,
            capsys,
            "data",
            "synth",
            "--out",
            str(again),
            "--pairs",
            "400",
            "--noise",
            "0.25",
            "--seed",
            "5",
        )[0]
        == 0
    )
    assert again.read_bytes() == catalog.read_bytes()
    lref5 = tmp_path / "lref5.jsonl"
    code = run_lref(monkeypatch, capsys, "data", "synth", "--out", str(lref5), "--pairs", "300", "--scheme", "lref5")[0]
    assert code == 0
    assert {r.label for r in load_records(lref5, scheme="lref5")} == {
        "Exact",
        "Significant",
        "Marginal",
        "Trivial",
        "Irrelevant",
    }


def test_synth_refuses_impossible_sizes(tmp_path, monkeypatch, capsys):
    code, _, err = run_lref(
        monkeypatch, capsys, "data", "synth", "--out", str(tmp_path / "x.jsonl"), "--pairs", "100", "--queries", "50"
    )
    assert code == 2
    assert "n_pairs=100 is too few for 50 queries" in err
    assert not (tmp_path / "x.jsonl").exists()


def _write_predictions(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def test_eval_end_to_end(catalog, tmp_path, monkeypatch, capsys):
    gold = load_records(catalog, scheme="graded3")
    order = ["Exact", "Partial", "Irrelevant"]
    # predict the gold label, except every fifth pair is predicted Exact
    predicted = ["Exact" if i % 5 == 0 else r.label for i, r in enumerate(gold)]
    rows = [{"id": r.id, "label": p, "probs": {}, "topk": [p]} for r, p in zip(gold, predicted, strict=True)]
    _write_predictions(tmp_path / "pred.jsonl", list(reversed(rows)))  # joined by id, not by position
    metrics_path = tmp_path / "out" / "metrics.json"
    code, out, err = run_lref(
        monkeypatch,
        capsys,
        "eval",
        "--pred",
        str(tmp_path / "pred.jsonl"),
        "--gold",
        str(catalog),
        "--out",
        str(metrics_path),
        "--bootstrap",
        "200",
    )
    assert code == 0, err
    result = json.loads(metrics_path.read_text())
    assert REQUIRED_KEYS <= set(result)

    wrong = sum(1 for r, p in zip(gold, predicted, strict=True) if p != r.label)
    counts = Counter(r.label for r in gold)
    majority, majority_count = counts.most_common(1)[0]
    assert wrong > 0
    assert result["n"] == 400
    assert result["labels"] == order
    assert result["accuracy"] == pytest.approx(1 - wrong / 400)
    # every error predicts Exact for a less relevant gold label: all over-estimates
    assert result["over_estimate_share"] == pytest.approx(wrong / 400)
    assert result["under_estimate_share"] == 0
    assert result["over_share_of_errors"] == 1.0
    assert result["majority_label"] == majority and result["majority_floor"] == pytest.approx(majority_count / 400)
    assert [sum(row) for row in result["confusion"]] == [counts[label] for label in order]
    assert [result["confusion"][i][i] for i in range(3)] == [
        sum(1 for r, p in zip(gold, predicted, strict=True) if r.label == p == label) for label in order
    ]
    assert result["per_class"]["Exact"]["recall"] == 1.0
    assert result["per_class"]["Partial"]["precision"] == 1.0
    assert result["rmse"] is None  # the synthetic catalog has no raw scores
    assert set(result["ci95"]) == {"accuracy", "macro_f1", "weighted_f1", "over_estimate_share", "cohen_kappa",
                                   "quadratic_weighted_kappa", "spearman", "ndcg@5", "ndcg@10"}
    assert result["spearman_against"] == "label_rating" and result["krippendorff_alpha_raters"] is None
    low, high = result["ci95"]["accuracy"]
    assert low <= result["accuracy"] <= high
    assert f"majority floor {majority_count / 400:.3f} (always '{majority}')" in out
    assert f"metrics written to {metrics_path}" in out


def test_eval_against_a_baseline_prints_the_paired_margin(catalog, tmp_path, monkeypatch, capsys):
    gold = load_records(catalog, scheme="graded3")
    _write_predictions(tmp_path / "perfect.jsonl", [{"id": r.id, "label": r.label} for r in gold])
    # wrong on every fifth pair: each query resample has the perfect baseline ahead
    rows = [{"id": r.id, "label": "Exact" if i % 5 == 0 and r.label != "Exact" else r.label}
            for i, r in enumerate(gold)]
    _write_predictions(tmp_path / "pred.jsonl", rows)
    wrong = sum(1 for r, row in zip(gold, rows, strict=True) if row["label"] != r.label)
    args = ["eval", "--pred", str(tmp_path / "pred.jsonl"), "--gold", str(catalog), "--bootstrap", "200"]
    code, out, err = run_lref(monkeypatch, capsys, *args, "--baseline", str(tmp_path / "perfect.jsonl"),
                              "--out", str(tmp_path / "metrics.json"))
    assert code == 0, err
    paired = json.loads((tmp_path / "metrics.json").read_text())["paired"]
    assert paired["accuracy"] == pytest.approx(-wrong / 400)
    assert paired["ci95"]["weighted_f1"][1] < 0
    assert f"margin over {tmp_path / 'perfect.jsonl'}: weighted_f1 {100 * paired['weighted_f1']:+.1f} pts" in out
    assert paired["cohen_kappa"] < 0 and paired["ci95"]["cohen_kappa"][1] < 0  # against a perfect judge (κ = 1)
    assert f"cohen_kappa {paired['cohen_kappa']:+.3f} [paired 95% CI" in out
    code, _, err = run_lref(monkeypatch, capsys, *args, "--allow-missing", "--baseline",
                            str(tmp_path / "perfect.jsonl"))
    assert code == 2 and "--baseline" in err and "every pair predicted" in err


def test_eval_reports_a_bad_prediction_label_with_file_and_row(catalog, tmp_path, monkeypatch, capsys):
    gold = load_records(catalog, scheme="graded3")
    rows = [{"id": r.id, "label": r.label} for r in gold]
    rows[2]["label"] = "Perfect"
    pred = tmp_path / "pred.jsonl"
    _write_predictions(pred, rows)
    metrics_path = tmp_path / "metrics.json"
    code, _, err = run_lref(
        monkeypatch, capsys, "eval", "--pred", str(pred), "--gold", str(catalog), "--out", str(metrics_path)
    )
    assert code == 2
    assert err.startswith("error: ")
    assert f"file {pred}, row 3, column 'label'" in err
    assert "'Perfect' is not in scheme 'graded3'" in err
    assert not metrics_path.exists()


def test_eval_missing_ids(catalog, tmp_path, monkeypatch, capsys):
    gold = load_records(catalog, scheme="graded3")
    pred = tmp_path / "pred.jsonl"
    _write_predictions(pred, [{"id": r.id, "label": r.label} for r in gold[:-3]])
    code, _, err = run_lref(monkeypatch, capsys, "eval", "--pred", str(pred), "--gold", str(catalog),
                            "--bootstrap", "0")
    assert code == 2
    assert f"3 of 400 gold record(s) have no prediction ('{gold[-3].id}'" in err
    code, out, _ = run_lref(
        monkeypatch, capsys, "eval", "--pred", str(pred), "--gold", str(catalog), "--bootstrap", "0", "--allow-missing"
    )
    assert code == 0
    assert "397 pairs" in out


def test_eval_prints_agreement_with_the_raters_on_home_depot_rows(tmp_path, monkeypatch, capsys):
    from sklearn.metrics import cohen_kappa_score

    means = [3.0, 2.67, 2.33, 2.0, 1.67, 1.33, 1.0]
    rows = ["id,product_uid,product_title,search_term,relevance"]
    predictions = []
    for i in range(70):
        mean = means[(i * 3) % 7]
        rows.append(f"{i},{100000 + i},title {i},query {i // 5},{mean}")
        exact = min(0.9, max(0.05, (mean - 1) / 2 + (0.2 if i % 4 == 0 else 0)))
        probs = {"Exact": exact, "Partial": (1 - exact) * 0.7, "Irrelevant": (1 - exact) * 0.3}
        predictions.append({"id": str(i), "label": max(probs, key=probs.get), "probs": probs})
    (tmp_path / "hd.csv").write_text("\n".join(rows) + "\n")
    _write_predictions(tmp_path / "pred.jsonl", predictions)
    code, out, err = run_lref(monkeypatch, capsys, "eval", "--pred", str(tmp_path / "pred.jsonl"), "--gold",
                              str(tmp_path / "hd.csv"), "--format", "homedepot", "--bootstrap", "100",
                              "--out", str(tmp_path / "metrics.json"))
    assert code == 0, err
    result = json.loads((tmp_path / "metrics.json").read_text())
    grade = {"Exact": 0, "Partial": 1, "Irrelevant": 2}
    gold = [r.label for r in load_records(tmp_path / "hd.csv", format="homedepot")]
    assert result["cohen_kappa"] == pytest.approx(
        cohen_kappa_score([grade[g] for g in gold], [grade[p["label"]] for p in predictions]))
    assert result["spearman_against"] == "raw_score" and result["ndcg_queries"] == 14
    split = result["by_rater_agreement"]
    assert split["agreed"]["n"] == 30 and split["disagreed"]["n"] == 40  # 3 of the 7 means are whole numbers
    low, high = result["ci95"]["quadratic_weighted_kappa"]
    assert re.search(rf"quadratic-weighted κ │ {result['quadratic_weighted_kappa']:.3f} │ +\[{low:.3f}, {high:.3f}\]",
                     out)
    assert f"NDCG@10              │ {result['ndcg@10']:.3f}" in out
    assert "By rater agreement" in out and f"disagreed │    40 │    {split['disagreed']['accuracy']:.3f}" in out
