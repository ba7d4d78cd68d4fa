import pytest

from lref.labels import PRESETS, LabelError, LabelScheme, get_scheme


def test_presets_are_ordered_most_relevant_first():
    assert get_scheme("lref5").labels == ("Exact", "Significant", "Marginal", "Trivial", "Irrelevant")
    assert get_scheme("esci4").labels == ("Exact", "Substitute", "Complement", "Irrelevant")
    assert get_scheme("graded3").labels == ("Exact", "Partial", "Irrelevant")
    assert get_scheme("crowdflower4").labels == ("4", "3", "2", "1")
    for scheme in PRESETS.values():
        assert len(scheme.definitions) == len(scheme.labels)
        assert list(scheme.ratings) == sorted(scheme.ratings, reverse=True)


def test_parse_is_case_insensitive_and_rejects_unknown_labels():
    scheme = get_scheme("graded3")
    assert scheme.parse(" exact ") == "Exact"
    assert scheme.index("Irrelevant") == 2
    assert scheme.rating("Partial") == 2.0
    with pytest.raises(LabelError, match="'Perfect' is not in scheme 'graded3'"):
        scheme.parse("Perfect")


def test_bad_schemes_are_refused():
    with pytest.raises(ValueError, match="duplicate"):
        LabelScheme("x", ("A", "A"), ("a", "b"))
    with pytest.raises(ValueError, match="definitions"):
        LabelScheme("x", ("A", "B"), ("a",))
    with pytest.raises(LabelError, match="unknown label scheme"):
        get_scheme("nope")


def test_words_default_to_names_and_numeric_schemes_get_words():
    graded = get_scheme("graded3")
    assert graded.words == graded.labels and "- Exact: " in graded.describe()
    crowdflower = get_scheme("crowdflower4")
    assert crowdflower.word("4") == "Excellent" and crowdflower.word("1") == "Poor"
    assert "- Excellent (4): " in crowdflower.describe()
    with pytest.raises(ValueError, match="distinct words"):
        LabelScheme("x", ("A", "B"), ("a", "b"), words=("same", "same"))


def test_rating_split_shares_a_rating_between_the_grades_beside_it():
    scheme = get_scheme("graded3")
    assert scheme.rating_split(2.67) == pytest.approx({"Exact": 0.67, "Partial": 0.33})
    assert scheme.rating_split(1.33) == pytest.approx({"Irrelevant": 0.67, "Partial": 0.33})
    assert scheme.rating_split(2.0) == {"Partial": 1.0}
    assert scheme.rating_split(3.4) == {"Exact": 1.0} and scheme.rating_split(0.2) == {"Irrelevant": 1.0}
    split = scheme.rating_split(2.33)
    assert sum(split.values()) == pytest.approx(1.0)
    assert sum(weight * scheme.rating(label) for label, weight in split.items()) == pytest.approx(2.33)
