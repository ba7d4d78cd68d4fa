"""Query-level splits and describe_records."""

import pytest

from lref.data import Record, describe_records, normalise_query, split_by_query
from lref.labels import LabelError


def make_records(n_queries, pairs_per_query=3):
    labels = ("Exact", "Partial", "Irrelevant")
    return [
        Record(id=f"{q}-{p}", query=f"query {q}", title=f"product {p}", label=labels[(q + p) % 3])
        for q in range(n_queries)
        for p in range(pairs_per_query)
    ]


def sides_of(splits):
    return {normalise_query(r.query): name for name, part in splits.items() for r in part}


def test_default_split_is_deterministic_and_keeps_queries_together():
    records = make_records(2000)
    # Variants of one query in case and spacing must land together.
    records += [Record("v1", "Query  7", "x", "Exact"), Record("v2", " QUERY 7 ", "y", "Exact")]
    splits = split_by_query(records)
    assert list(splits) == ["train", "dev", "test"]
    assert split_by_query(records) == splits
    assert sum(len(part) for part in splits.values()) == len(records)
    seen = {}
    for name, part in splits.items():
        for record in part:
            assert seen.setdefault(normalise_query(record.query), name) == name
    shares = {name: len({normalise_query(r.query) for r in part}) / 2000 for name, part in splits.items()}
    assert shares["train"] == pytest.approx(0.8, abs=0.04)
    assert shares["dev"] == pytest.approx(0.1, abs=0.03) and shares["test"] == pytest.approx(0.1, abs=0.03)


def test_order_within_a_split_follows_the_input():
    records = make_records(50)
    for part in split_by_query(records).values():
        positions = [records.index(r) for r in part]
        assert positions == sorted(positions)


def test_seed_changes_the_assignment_but_a_query_keeps_its_side_when_data_grows():
    records = make_records(300)
    base = sides_of(split_by_query(records, seed=0))
    assert sides_of(split_by_query(records, seed=1)) != base
    grown = sides_of(split_by_query(list(reversed(records)) + make_records(600)[900:], seed=0))
    assert all(grown[query] == side for query, side in base.items())


def test_custom_fractions_and_zero_width_split():
    splits = split_by_query(make_records(200), {"a": 0.5, "b": 0.5, "c": 0.0}, seed=3)
    assert list(splits) == ["a", "b", "c"] and splits["c"] == []
    assert splits["a"] and splits["b"]


@pytest.mark.parametrize(
    ("fractions", "message"),
    [
        ({"train": 0.8, "dev": 0.3}, "must sum to 1"),
        ({"train": 1.2, "dev": -0.2}, r"must lie in \[0, 1\]"),
        ({}, "at least one split"),
        ({"train": "most"}, "must be a number"),
        ({"": 1.0}, "non-empty strings"),
    ],
)
def test_bad_fractions_are_refused(fractions, message):
    with pytest.raises(ValueError, match=message):
        split_by_query(make_records(5), fractions)


def test_describe_records_counts_shares_and_floor():
    records = [
        Record("1", "drill", "a", "Partial", meta={"rater_disagreement": True, "label_noise": False}),
        Record("2", "drill", "b", "Partial", meta={"rater_disagreement": False, "label_noise": False}),
        Record("3", "Drill ", "c", "Exact", meta={"rater_disagreement": False, "label_noise": True}),
        Record("4", "hose", "d", "Partial", meta={"rater_disagreement": False}),
    ]
    summary = describe_records(records, "graded3")
    assert summary["pairs"] == 4 and summary["queries"] == 2 and summary["mean_pairs_per_query"] == 2.0
    assert list(summary["label_counts"].items()) == [("Exact", 1), ("Partial", 3), ("Irrelevant", 0)]  # scheme order
    assert summary["label_shares"] == {"Exact": 0.25, "Partial": 0.75, "Irrelevant": 0.0}
    assert (summary["majority_label"], summary["majority_floor"]) == ("Partial", 0.75)
    assert summary["rater_disagreement_rate"] == 0.25
    assert summary["label_noise_rate"] == pytest.approx(1 / 3)  # only records that carry the flag count


def test_describe_records_without_flags_or_labels():
    summary = describe_records([Record("1", "lamp", "desk lamp")], "graded3")
    assert summary["rater_disagreement_rate"] is None and summary["label_noise_rate"] is None
    assert (summary["labelled"], summary["unlabelled"], summary["majority_label"], summary["majority_floor"]) == (
        0,
        1,
        None,
        None,
    )
    empty = describe_records([], "esci4")
    assert empty["pairs"] == 0 and empty["mean_pairs_per_query"] is None


def test_describe_records_refuses_labels_outside_the_scheme():
    with pytest.raises(LabelError, match="'Substitute' is not in scheme 'graded3'"):
        describe_records([Record("1", "q", "t", "Substitute")], "graded3")
