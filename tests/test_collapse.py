"""The collapse check of a judge (lref.collapse) and the pipeline's refusal to distil from a collapsed teacher."""

import math

import pytest

from lref.collapse import CollapseConfig, check_collapse, collapse_summary

GOLD = ["Exact"] * 6 + ["Partial"] * 3 + ["Irrelevant"] * 1


def test_a_judge_that_answers_only_the_majority_grade_is_collapsed():
    check = check_collapse(GOLD, ["Exact"] * 10, "graded3")
    # always Exact: F1(Exact) = 2*0.6/(1+0.6) = 0.75, the other two 0, averaged over the 3 grades present in gold
    assert check["macro_f1"] == pytest.approx(0.25)
    assert check["majority_label"] == "Exact" and check["majority_macro_f1"] == pytest.approx(0.25)
    assert check["prediction_entropy"] == 0.0
    assert check["collapsed"] and len(check["reasons"]) == 2
    assert check["per_class_recall"] == {"Exact": 1.0, "Partial": 0.0, "Irrelevant": 0.0}
    assert check["silent_labels"] == []  # Partial has 3 gold pairs, Irrelevant 1: both under min_support 5
    assert collapse_summary(check).startswith("COLLAPSED: macro-F1 0.250")


def test_a_judge_that_separates_the_grades_is_not_collapsed():
    predicted = ["Exact"] * 5 + ["Partial"] * 4 + ["Irrelevant"] * 1
    check = check_collapse(GOLD, predicted, "graded3")
    shares = [0.5, 0.4, 0.1]
    assert check["prediction_entropy"] == pytest.approx(-sum(p * math.log(p) for p in shares) / math.log(3), abs=1e-4)
    assert check["macro_f1"] > check["majority_macro_f1"] + 0.05
    assert not check["collapsed"] and collapse_summary(check) is None


def test_a_silent_grade_is_listed_without_calling_the_judge_collapsed():
    gold = ["Exact"] * 10 + ["Partial"] * 10 + ["Irrelevant"] * 6
    predicted = ["Exact"] * 10 + ["Partial"] * 10 + ["Partial"] * 6
    check = check_collapse(gold, predicted, "graded3")
    assert not check["collapsed"]
    assert check["silent_labels"] == ["Irrelevant"]
    assert collapse_summary(check) == "never or almost never answers Irrelevant (recall 0.00)"


def test_thresholds_are_checked_and_inputs_must_match():
    with pytest.raises(ValueError, match="min_entropy"):
        CollapseConfig(min_entropy=1.5)
    with pytest.raises(ValueError, match="2 gold labels but 1 predictions"):
        check_collapse(["Exact", "Partial"], ["Exact"], "graded3")
    near_constant = ["Exact"] * 9 + ["Partial"]
    assert not check_collapse(GOLD, near_constant, "graded3", CollapseConfig(min_entropy=0.0,
                                                                             min_macro_f1_gain=0.0))["collapsed"]
