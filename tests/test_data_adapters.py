"""Dataset adapters: Home Depot, Amazon ESCI, Wayfair WANDS, CrowdFlower; fixtures are built per test."""

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lref.data import (
    DataError,
    default_scheme,
    describe_records,
    load_records,
    split_by_query,
)
from lref.data.adapters import homedepot_grade

HOMEDEPOT_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "homedepot"

# ---------------------------------------------------------------------------------------------------------------
# Home Depot


def write_homedepot(path, rows, header="id,product_uid,product_title,search_term,relevance", encoding="latin-1"):
    path.write_bytes((header + "\n" + "".join(row + "\n" for row in rows)).encode(encoding))
    return path


def test_default_schemes_follow_each_source():
    assert [default_scheme(f).name for f in ("homedepot", "esci", "wands", "crowdflower", "csv", "auto")] == [
        "graded3",
        "esci4",
        "graded3",
        "crowdflower4",
        "graded3",
        "graded3",
    ]
    with pytest.raises(DataError, match="unknown format"):
        default_scheme("amazon")


@pytest.mark.parametrize(
    ("mean", "label"),
    [(1.0, "Irrelevant"), (1.33, "Irrelevant"), (1.5, "Partial"), (2.33, "Partial"), (2.5, "Exact"), (3.0, "Exact")],
)
def test_homedepot_grade_thresholds(mean, label):
    assert homedepot_grade(mean) == label


def test_homedepot_latin1_file_maps_means_to_graded3(tmp_path):
    path = write_homedepot(
        tmp_path / "train.csv",
        [
            "2,100001,Simpson Strong-Tie 12-Gauge Angle,angle bracket,3.0",
            '3,100001,"Caf\u00e9 Angle, 90\u00b0",l bracket,2.33',
            "9,100002,Deck Screw,deck nails,1.33",
        ],
    )
    records = load_records(path, format="homedepot")
    assert [(r.id, r.label, r.raw_score) for r in records] == [
        ("2", "Exact", 3.0),
        ("3", "Partial", 2.33),
        ("9", "Irrelevant", 1.33),
    ]
    assert records[1].title == "Caf\u00e9 Angle, 90\u00b0"  # latin-1 bytes decoded
    assert records[1].query == "l bracket"
    assert [r.meta["rater_disagreement"] for r in records] == [False, True, True]
    assert records[0].meta["product_uid"] == "100001"


def test_homedepot_utf8_file_is_not_garbled(tmp_path):
    path = write_homedepot(tmp_path / "train.csv", ["5,100003,Heater 360\u00b0 Tank Top,heater,2.0"], encoding="utf-8")
    assert load_records(path, format="homedepot")[0].title == "Heater 360\u00b0 Tank Top"


def test_homedepot_without_relevance_loads_unlabelled(tmp_path):
    path = write_homedepot(
        tmp_path / "test.csv", ["1,100001,Angle,angle bracket"], header="id,product_uid,product_title,search_term"
    )
    (record,) = load_records(path, format="homedepot")
    assert record.label is None and record.raw_score is None and "rater_disagreement" not in record.meta


@pytest.mark.parametrize("value", ["high", "", "4.5"])
def test_homedepot_bad_relevance_names_row_and_column(tmp_path, value):
    path = write_homedepot(
        tmp_path / "train.csv", ["1,100001,Angle,angle bracket,3", f"2,100001,Angle,l bracket,{value}"]
    )
    with pytest.raises(DataError, match="relevance must be a number from 1 to 3") as info:
        load_records(path, format="homedepot")
    assert (info.value.path, info.value.row, info.value.column) == (str(path), 2, "relevance")


def test_homedepot_missing_column_and_empty_query(tmp_path):
    path = write_homedepot(tmp_path / "a.csv", ["1,100001,Angle,3"], header="id,product_uid,product_title,relevance")
    with pytest.raises(DataError, match="missing column 'search_term'"):
        load_records(path, format="homedepot")
    path = write_homedepot(tmp_path / "b.csv", ["1,100001,Angle, ,3"])
    with pytest.raises(DataError, match="empty query") as info:
        load_records(path, format="homedepot")
    assert (info.value.row, info.value.column) == (1, "search_term")


def test_adapters_refuse_column_mappings(tmp_path):
    path = write_homedepot(tmp_path / "train.csv", ["1,100001,Angle,angle bracket,3"])
    with pytest.raises(DataError, match="columns= applies to jsonl, csv and parquet"):
        load_records(path, format="homedepot", columns={"query": "search_term"})


def real_homedepot(name):
    path = HOMEDEPOT_DIR / name
    if not path.is_file():
        pytest.skip(f"real Home Depot data not present at {path} (it lives outside the repository)")
    return path


def test_real_homedepot_dev_matches_its_documented_size():
    records = load_records(real_homedepot("dev.csv"), format="homedepot")
    summary = describe_records(records, "graded3")
    assert (summary["pairs"], summary["queries"]) == (7523, 1186)
    assert summary["majority_label"] == "Partial" and 0.4 < summary["majority_floor"] < 0.5
    assert 0.0 < summary["rater_disagreement_rate"] < 1.0
    assert sum(summary["label_counts"].values()) == 7523


def test_real_homedepot_train_splits_without_shared_queries():
    records = load_records(real_homedepot("train.csv"), format="homedepot")
    assert len(records) == 52031
    splits = split_by_query(records)
    sides = [{r.query.casefold() for r in part} for part in splits.values()]
    assert not (sides[0] & sides[1]) and not (sides[0] & sides[2]) and not (sides[1] & sides[2])
    assert 0.75 < len(splits["train"]) / len(records) < 0.85


# ---------------------------------------------------------------------------------------------------------------
# ESCI

ESCI_EXAMPLES = {
    "example_id": [10, 11, 12, 13, 14],
    "query": ["usb cable", "usb cable", "sofa", "sofa", "cable usb"],
    "query_id": [1, 1, 2, 2, 3],
    "product_id": ["B01", "B02", "B03", "B01", "B01"],
    "product_locale": ["us", "us", "us", "us", "es"],
    "esci_label": ["E", "S", "I", "C", "E"],
    "small_version": [1, 1, 0, 1, 1],
    "large_version": [1, 1, 1, 1, 1],
    "split": ["train", "test", "train", "train", "train"],
}
ESCI_PRODUCTS = {
    "product_id": ["B01", "B02", "B03", "B01"],
    "product_locale": ["us", "us", "us", "es"],
    "product_title": ["Anker USB-C cable", "Belkin cable", "Grey sofa", "Cable Anker"],
    "product_description": ["Braided, 2 m", None, None, None],
    "product_bullet_point": ["Fast charging", None, None, None],
    "product_brand": ["Anker", "Belkin", None, "Anker"],
    "product_color": ["black", None, None, None],
}


def write_esci(folder, examples=None, products=None):
    folder.mkdir(exist_ok=True)
    pq.write_table(pa.table(examples or ESCI_EXAMPLES), folder / "shopping_queries_dataset_examples.parquet")
    pq.write_table(pa.table(products or ESCI_PRODUCTS), folder / "shopping_queries_dataset_products.parquet")
    return folder


def test_esci_joins_products_and_maps_labels(tmp_path):
    folder = write_esci(tmp_path / "esci")
    records = load_records(folder, format="esci")  # defaults: locale us, small version
    assert [(r.id, r.label) for r in records] == [("10", "Exact"), ("11", "Substitute"), ("13", "Complement")]
    first = records[0]
    assert (first.title, first.brand, first.description) == ("Anker USB-C cable", "Anker", "Braided, 2 m")
    assert first.attributes == {"color": "black", "bullet_points": "Fast charging"}
    assert first.meta == {"product_id": "B01", "locale": "us", "query_id": 1, "split": "train"}


def test_esci_filters_by_split_version_and_locale(tmp_path):
    examples_file = write_esci(tmp_path / "esci") / "shopping_queries_dataset_examples.parquet"
    assert [r.id for r in load_records(examples_file, format="esci", split="train", version="large")] == [
        "10",
        "12",
        "13",
    ]
    spanish = load_records(examples_file, format="esci", locale="es")
    assert [(r.id, r.title) for r in spanish] == [("14", "Cable Anker")]  # joined on locale as well as product_id
    assert len(load_records(examples_file, format="esci", locale=None, version=None)) == 5
    with pytest.raises(DataError, match="no examples match"):
        load_records(examples_file, format="esci", locale="jp")
    with pytest.raises(DataError, match="version must be"):
        load_records(examples_file, format="esci", version="medium")


def test_esci_wrong_schema_names_file_and_column(tmp_path):
    missing = {k: v for k, v in ESCI_EXAMPLES.items() if k != "esci_label"}
    folder = write_esci(tmp_path / "a", examples=missing)
    with pytest.raises(DataError, match="missing column 'esci_label'") as info:
        load_records(folder, format="esci")
    assert info.value.path.endswith("shopping_queries_dataset_examples.parquet")

    mistyped = {**ESCI_PRODUCTS, "product_title": [1, 2, 3, 4]}
    folder = write_esci(tmp_path / "b", products=mistyped)
    with pytest.raises(DataError, match="has type int64, expected string") as info:
        load_records(folder, format="esci")
    assert (
        info.value.path.endswith("shopping_queries_dataset_products.parquet") and info.value.column == "product_title"
    )


def test_esci_missing_product_and_bad_label_name_the_example_row(tmp_path):
    products = {k: v[1:] for k, v in ESCI_PRODUCTS.items()}  # drop B01/us
    folder = write_esci(tmp_path / "a", products=products)
    with pytest.raises(DataError, match="no product 'B01'") as info:
        load_records(folder, format="esci")
    assert (info.value.row, info.value.column) == (1, "product_id")

    examples = {**ESCI_EXAMPLES, "esci_label": ["E", "X", "I", "C", "E"]}
    folder = write_esci(tmp_path / "b", examples=examples)
    with pytest.raises(DataError, match="'X' is not in scheme 'esci4'") as info:
        load_records(folder, format="esci")
    assert (info.value.row, info.value.column) == (2, "esci_label")


def test_esci_without_products_file_is_reported(tmp_path):
    folder = tmp_path / "esci"
    folder.mkdir()
    pq.write_table(pa.table(ESCI_EXAMPLES), folder / "shopping_queries_dataset_examples.parquet")
    with pytest.raises(FileNotFoundError, match="shopping_queries_dataset_products.parquet"):
        load_records(folder, format="esci")


# ---------------------------------------------------------------------------------------------------------------
# WANDS


def write_wands(folder, labels=None):
    folder.mkdir(exist_ok=True)
    (folder / "query.csv").write_text(
        "query_id\tquery\tquery_class\n0\tsalon chair\tMassage Chairs\n1\tsmart coffee table\t\n"
    )
    (folder / "product.csv").write_text(
        "product_id\tproduct_name\tproduct_class\tcategory hierarchy\tproduct_description\tproduct_features\t"
        "rating_count\taverage_rating\treview_count\n"
        "0\tsolid wood platform bed\tBeds\tFurniture / Bedroom\tA sturdy bed\tcolor:brown|material:oak\t15\t4.5\t15\n"
        "1\tall-clad saucepan\tSaucepans\tKitchen / Cookware\t\t\t\t\t\n"
    )
    rows = labels or ["0\t0\t0\tIrrelevant", "1\t1\t0\tPartial", "2\t0\t1\tExact"]
    (folder / "label.csv").write_text("id\tquery_id\tproduct_id\tlabel\n" + "".join(r + "\n" for r in rows))
    return folder


def test_wands_joins_queries_products_and_labels(tmp_path):
    records = load_records(write_wands(tmp_path / "wands"), format="wands")
    assert [(r.id, r.query, r.title, r.label) for r in records] == [
        ("0", "salon chair", "solid wood platform bed", "Irrelevant"),
        ("1", "smart coffee table", "solid wood platform bed", "Partial"),
        ("2", "salon chair", "all-clad saucepan", "Exact"),
    ]
    bed = records[0]
    assert bed.attributes == {
        "color": "brown",
        "material": "oak",
        "product_class": "Beds",
        "category": "Furniture / Bedroom",
    }
    assert bed.description == "A sturdy bed"
    assert bed.meta == {"query_id": "0", "product_id": "0", "query_class": "Massage Chairs"}
    assert "query_class" not in records[1].meta


def test_wands_unknown_ids_and_labels_name_label_row(tmp_path):
    folder = write_wands(tmp_path / "a", labels=["0\t0\t0\tExact", "1\t7\t0\tExact"])
    with pytest.raises(DataError, match="query_id '7' is not in query.csv") as info:
        load_records(folder, format="wands")
    assert (Path(info.value.path).name, info.value.row, info.value.column) == ("label.csv", 2, "query_id")
    folder = write_wands(tmp_path / "b", labels=["0\t0\t0\tGood"])
    with pytest.raises(DataError, match="'Good' is not in scheme 'graded3'") as info:
        load_records(folder, format="wands")
    assert (info.value.row, info.value.column) == (1, "label")


def test_wands_needs_a_folder(tmp_path):
    with pytest.raises(DataError, match="expected the WANDS folder"):
        load_records(write_wands(tmp_path / "w") / "label.csv", format="wands")


# ---------------------------------------------------------------------------------------------------------------
# CrowdFlower

CROWDFLOWER_HEADER = "id,query,product_title,product_description,median_relevance,relevance_variance"


def test_crowdflower_train_and_unlabelled_test(tmp_path):
    train = tmp_path / "train.csv"
    train.write_text(
        CROWDFLOWER_HEADER
        + '\n1,bridal shower decorations,Accent Pillow,"Red, soft",1,0\n2,led christmas lights,LED Lights,,4,0.471\n'
    )
    records = load_records(train, format="crowdflower")
    assert [(r.label, r.raw_score, r.meta["relevance_variance"]) for r in records] == [
        ("1", 1.0, 0.0),
        ("4", 4.0, 0.471),
    ]
    assert records[0].description == "Red, soft" and records[1].description is None
    test = tmp_path / "test.csv"
    test.write_text("id,query,product_title,product_description\n3,lamp,Desk lamp,\n")
    (record,) = load_records(test, format="crowdflower")
    assert record.label is None and record.raw_score is None


@pytest.mark.parametrize("value", ["5", "2.5", "good"])
def test_crowdflower_label_outside_scale_is_an_error(tmp_path, value):
    path = tmp_path / "train.csv"
    path.write_text(CROWDFLOWER_HEADER + f"\n1,lamp,Desk lamp,,{value},0\n")
    with pytest.raises(DataError, match=f"'{value}' is not in scheme 'crowdflower4'") as info:
        load_records(path, format="crowdflower")
    assert (info.value.row, info.value.column) == (1, "median_relevance")


def test_self_referencing_adapter_is_refused_naming_the_chain(tmp_path, monkeypatch):
    import lref.data.adapters as adapters

    path = tmp_path / "pairs.csv"
    path.write_text("query,title\nlamp,desk lamp\n")
    monkeypatch.setitem(adapters.ADAPTERS, "loop", lambda p, *, scheme: load_records(p, "loop", scheme))
    with pytest.raises(DataError, match=r"adapter cycle: loop \(.*pairs.csv\) -> loop \(") as info:
        load_records(path, "loop", "graded3")
    assert info.value.path == str(path)


def test_mutually_referencing_adapters_are_refused_and_delegation_still_works(tmp_path, monkeypatch):
    import lref.data.adapters as adapters

    path = tmp_path / "pairs.csv"
    path.write_text("query,title\nlamp,desk lamp\n")
    monkeypatch.setitem(adapters.ADAPTERS, "ping", lambda p, *, scheme: load_records(p, "pong", scheme))
    monkeypatch.setitem(adapters.ADAPTERS, "pong", lambda p, *, scheme: load_records(p, "ping", scheme))
    monkeypatch.setitem(adapters.ADAPTERS, "wrap", lambda p, *, scheme: load_records(p, "csv", scheme))
    with pytest.raises(DataError, match=r"adapter cycle: ping \(.*\) -> pong \(.*\) -> ping"):
        load_records(path, "ping", "graded3")
    # an adapter that hands its file to another reader is not a cycle, and the chain is reset afterwards
    assert [r.title for r in load_records(path, "wrap", "graded3")] == ["desk lamp"]
    assert [r.title for r in load_records(path, "wrap", "graded3")] == ["desk lamp"]
