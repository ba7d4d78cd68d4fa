import time
from collections import Counter

import pytest

from lref.data import load_records, write_records
from lref.data.synthetic import (
    FINE_GRADES,
    PRODUCT_TYPES,
    Product,
    Query,
    SyntheticCatalogConfig,
    fine_grade,
    generate_catalog,
    rule_label,
)
from lref.labels import LabelError, LabelScheme, get_scheme

SMALL = dict(n_pairs=1500)


@pytest.fixture(scope="module")
def default_catalog():
    start = time.perf_counter()
    records = generate_catalog(SyntheticCatalogConfig())
    return records, time.perf_counter() - start


def _drill(brand="DeWalt", model="DCD771C2", size="20V MAX", colour="Yellow", host=None, type_="drill"):
    return Product("p1", type_, "t", brand, model, {"size": size, "colour": colour}, host=host)


def _query_from(record):
    return Query(record.meta["query_id"], record.query, record.meta["query_type"], record.meta["query_modifiers"])


def _product_from(record):
    attributes = dict(record.attributes)
    model = attributes.pop("model")
    return Product(
        record.meta["product_id"],
        record.meta["product_type"],
        record.title,
        record.brand,
        model,
        attributes,
        host=record.meta["product_host"],
    )


def test_rules_on_constructed_pairs():
    by_brand = Query("q", "dewalt drill", "drill", {"brand": "DeWalt"})
    assert rule_label(by_brand, _drill(), "lref5") == "Exact"
    # same type, another brand: a major mismatch
    assert rule_label(by_brand, _drill(brand="Makita"), "lref5") == "Marginal"
    assert rule_label(by_brand, _drill(brand="Makita"), "graded3") == "Partial"
    assert rule_label(by_brand, _drill(brand="Makita"), "esci4") == "Substitute"
    assert rule_label(by_brand, _drill(brand="Makita"), "crowdflower4") == "2"
    # brand is matched case-insensitively; colour is not stated, so it does not matter
    assert fine_grade(Query("q", "", "drill", {"brand": "dewalt"}), _drill(colour="Red")) == "exact"

    brand_colour = Query("q", "dewalt yellow drill", "drill", {"brand": "DeWalt", "colour": "Yellow"})
    assert rule_label(brand_colour, _drill(colour="Red"), "lref5") == "Significant"  # minor mismatch only
    assert rule_label(brand_colour, _drill(brand="Bosch", colour="Red"), "lref5") == "Marginal"  # worst decides
    assert fine_grade(Query("q", "", "drill", {"size": "18V"}), _drill()) == "major"  # size is major
    assert fine_grade(Query("q", "", "drill", {"brand": "DeWalt", "model": "DCD999"}), _drill()) == "major"

    # accessory of the searched type, accessory of another type, another type
    bit_set = _drill(type_="drill bit set", host="drill")
    assert rule_label(by_brand, bit_set, "lref5") == "Trivial"
    assert rule_label(by_brand, bit_set, "esci4") == "Complement"
    assert rule_label(by_brand, bit_set, "graded3") == "Irrelevant"
    assert rule_label(by_brand, _drill(type_="replacement blade", host="circular saw"), "lref5") == "Irrelevant"
    assert rule_label(by_brand, _drill(type_="impact driver"), "lref5") == "Irrelevant"
    # a query that states no modifier is matched exactly by every product of its type
    assert rule_label(Query("q", "drill", "drill", {}), _drill(brand="Ryobi", colour="Green"), "lref5") == "Exact"


def test_generated_labels_follow_the_rules(default_catalog):
    records, _ = default_catalog
    scheme = get_scheme("graded3")
    for record in records:
        assert record.meta["true_label"] == rule_label(_query_from(record), _product_from(record), scheme)
        assert record.meta["match"] == fine_grade(_query_from(record), _product_from(record))
    # a query with a brand gives a lower grade to a product of another brand of the same type
    other_brand = [
        r
        for r in records
        if "brand" in r.meta["query_modifiers"]
        and r.meta["product_type"] == r.meta["query_type"]
        and r.brand != r.meta["query_modifiers"]["brand"]
    ]
    assert len(other_brand) > 100
    assert {r.label for r in other_brand} == {"Partial"}


def test_default_catalog_shape_and_grade_coverage(default_catalog):
    records, seconds = default_catalog
    assert len(records) == 20000
    assert seconds < 15  # loose bound; measured ~0.2-0.5 s
    ids = [r.id for r in records]
    assert len(set(ids)) == len(ids)
    shares = Counter(r.label for r in records)
    assert set(shares) == {"Exact", "Partial", "Irrelevant"}
    assert min(shares.values()) / len(records) >= 0.05
    assert set(Counter(r.meta["match"] for r in records)) == set(FINE_GRADES)
    assert len({r.meta["query_id"] for r in records}) == 2000
    appearances = Counter(r.meta["product_id"] for r in records)
    assert sum(appearances.values()) / len(appearances) > 4  # products recur under many queries
    assert len({r.meta["product_type"] for r in records if r.meta["product_host"] is None}) == len(PRODUCT_TYPES)
    sample = records[0]
    assert sample.brand and sample.description and "model" in sample.attributes
    assert all(r.meta["label_noise"] is False and r.label == r.meta["true_label"] for r in records)


@pytest.mark.parametrize("name", ["lref5", "esci4", "graded3", "crowdflower4"])
def test_every_preset_has_every_grade(name):
    records = generate_catalog(SyntheticCatalogConfig(scheme=name, **SMALL))
    counts = Counter(r.label for r in records)
    assert set(counts) == set(get_scheme(name).labels)
    assert min(counts.values()) / len(records) >= 0.05, counts


def test_same_config_same_records_and_seed_changes_them():
    first = [r.to_dict() for r in generate_catalog(SyntheticCatalogConfig(seed=3, label_noise=0.1, **SMALL))]
    second = [r.to_dict() for r in generate_catalog(SyntheticCatalogConfig(seed=3, label_noise=0.1, **SMALL))]
    other = [r.to_dict() for r in generate_catalog(SyntheticCatalogConfig(seed=4, label_noise=0.1, **SMALL))]
    assert first == second
    assert first != other
    assert len(first) == 1500


def test_label_noise_rate_and_flags():
    records = generate_catalog(SyntheticCatalogConfig(scheme="lref5", label_noise=0.2, n_pairs=6000))
    flagged = [r for r in records if r.meta["label_noise"]]
    assert all(isinstance(r.meta["label_noise"], bool) for r in records)
    # binomial sd at n=6000, p=0.2 is 0.005; allow 4 sd
    assert abs(len(flagged) / len(records) - 0.2) < 0.02
    assert all(r.label != r.meta["true_label"] for r in flagged)
    assert all(r.label == r.meta["true_label"] for r in records if not r.meta["label_noise"])
    scheme = get_scheme("lref5")
    distance = Counter(abs(scheme.index(r.label) - scheme.index(r.meta["true_label"])) for r in flagged)
    # neighbours favoured: weight 1/d^2, so one-step flips are the majority
    assert distance[1] > 0.5 * len(flagged)
    assert distance[1] > distance[2] > distance[4]


def test_query_bands_follow_cumulative_traffic():
    records = generate_catalog(SyntheticCatalogConfig(n_pairs=4000))
    exposure = {}
    band = {}
    for r in records:
        exposure[r.meta["query_id"]] = r.exposure
        band[r.meta["query_id"]] = r.meta["query_band"]
    assert set(band.values()) == {"head", "torso", "tail"}
    total = sum(exposure.values())
    for name, upper in (("head", 0.2), ("torso", 0.5)):
        # every query of a band is more frequent than every query of the later bands
        inside = [exposure[q] for q in band if band[q] == name]
        later = [exposure[q] for q in band if band[q] in ("torso", "tail")[("head", "torso").index(name) :]]
        assert min(inside) >= max(later)
        # a band ends once the traffic before its last query has reached the cut point
        up_to = sum(e for q, e in exposure.items() if band[q] in ("head", "torso")[: ("head", "torso").index(name) + 1])
        assert up_to - min(inside) < upper * total <= up_to + 1e-6 * total
    pairs = Counter(r.meta["query_id"] for r in records)
    head = [q for q in band if band[q] == "head"]
    assert min(pairs[q] for q in head) > sum(pairs.values()) / len(pairs)  # head queries get more pairs


def test_records_survive_the_canonical_writer(tmp_path):
    records = generate_catalog(SyntheticCatalogConfig(n_pairs=300, label_noise=0.3, seed=1))
    path = tmp_path / "synth.jsonl"
    assert write_records(path, records) == 300
    assert [r.to_dict() for r in load_records(path, scheme="graded3")] == [r.to_dict() for r in records]


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="too few for 500 queries"):
        generate_catalog(SyntheticCatalogConfig(n_pairs=1000, n_queries=500))
    with pytest.raises(ValueError, match="label_noise must be between 0 and 1"):
        generate_catalog(SyntheticCatalogConfig(n_pairs=100, label_noise=1.5))
    with pytest.raises(LabelError, match="unknown label scheme"):
        generate_catalog(SyntheticCatalogConfig(n_pairs=100, scheme="nope"))
    binary = LabelScheme("binary", ("Relevant", "Irrelevant"), ("relevant", "not relevant"))
    with pytest.raises(ValueError, match="give grade_map"):
        generate_catalog(SyntheticCatalogConfig(n_pairs=100, scheme=binary))
    with pytest.raises(ValueError, match="non-decreasing"):
        generate_catalog(SyntheticCatalogConfig(n_pairs=100, scheme=binary, grade_map=(1, 0, 0, 1, 1)))
    records = generate_catalog(SyntheticCatalogConfig(n_pairs=200, scheme=binary, grade_map=(0, 0, 1, 1, 1)))
    assert {r.label for r in records} == {"Relevant", "Irrelevant"}
    assert all((r.label == "Relevant") == (r.meta["match"] in ("exact", "minor")) for r in records)


def test_descriptions_and_attributes_can_be_left_out_without_changing_anything_else():
    full = generate_catalog(SyntheticCatalogConfig(n_pairs=300, seed=5))
    short = generate_catalog(SyntheticCatalogConfig(n_pairs=300, seed=5, descriptions=False, attributes=False))
    assert [(r.id, r.query, r.title, r.brand, r.label) for r in short] == [
        (r.id, r.query, r.title, r.brand, r.label) for r in full]
    assert all(r.description == "" and not r.attributes for r in short)
    assert any(r.description for r in full) and any(r.attributes for r in full)
