"""Generic readers (CSV, JSONL, Parquet), the canonical writer and their error reporting."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lref.data import DataError, Record, load_records, stable_id, write_records
from lref.labels import get_scheme


def write_text(path, text, encoding="utf-8"):
    path.write_text(text, encoding=encoding)
    return path


def test_csv_with_column_mapping_loads_canonical_records(tmp_path):
    path = write_text(
        tmp_path / "pairs.csv",
        "search_term,product_title,grade,shop\n"
        "cordless drill,DeWalt 20V drill,exact,north\n"
        "garden hose,Flexzilla 50 ft hose,Partial,\n",
    )
    records = load_records(path, columns={"query": "search_term", "title": "product_title", "label": "grade"})
    assert [r.label for r in records] == ["Exact", "Partial"]  # canonical names from graded3
    assert records[0].query == "cordless drill" and records[0].title == "DeWalt 20V drill"
    assert records[0].id == stable_id("cordless drill", "DeWalt 20V drill", 1)
    assert records[0].meta == {"shop": "north"}  # unmapped columns are kept
    assert records[1].meta == {}  # ...unless empty


def test_tsv_is_detected_by_extension_and_esci_scheme_validates(tmp_path):
    path = write_text(tmp_path / "pairs.tsv", "id\tquery\ttitle\tlabel\nA1\tsofa\tgrey sofa bed\tsubstitute\n")
    (record,) = load_records(path, scheme="esci4")
    assert (record.id, record.label) == ("A1", "Substitute")


def test_file_without_label_column_is_an_unlabelled_pool(tmp_path):
    path = write_text(tmp_path / "pool.csv", "query,title\nlamp,desk lamp\nrug,wool rug\n")
    assert [r.label for r in load_records(path)] == [None, None]


def test_empty_label_cell_in_a_labelled_file_is_an_error(tmp_path):
    path = write_text(tmp_path / "pairs.csv", "query,title,label\nlamp,desk lamp,Exact\nrug,wool rug,\n")
    with pytest.raises(DataError, match="empty label") as info:
        load_records(path)
    assert (info.value.path, info.value.row, info.value.column) == (str(path), 2, "label")


def test_missing_column_is_named(tmp_path):
    path = write_text(tmp_path / "pairs.csv", "query,name,label\nlamp,desk lamp,Exact\n")
    with pytest.raises(DataError, match="missing column 'title'") as info:
        load_records(path)
    assert info.value.column == "title" and str(path) in str(info.value)


def test_explicitly_mapped_column_must_exist(tmp_path):
    path = write_text(tmp_path / "pairs.csv", "query,title\nlamp,desk lamp\n")
    with pytest.raises(DataError, match="missing column 'grade'"):
        load_records(path, columns={"label": "grade"})
    with pytest.raises(DataError, match="unknown field 'colour'"):
        load_records(path, columns={"colour": "title"})


@pytest.mark.parametrize(
    ("body", "row", "column", "message"),
    [
        ("lamp,desk lamp,Exact\n  ,wool rug,Exact\n", 2, "search", "empty query"),
        ("lamp,,Exact\n", 1, "title", "empty title"),
        ("lamp,desk lamp,Exact\nrug,wool rug,Perfect\n", 2, "label", "'Perfect' is not in scheme 'graded3'"),
    ],
)
def test_bad_cells_name_file_row_and_mapped_column(tmp_path, body, row, column, message):
    path = write_text(tmp_path / "pairs.csv", "search,title,label\n" + body)
    with pytest.raises(DataError, match=message) as info:
        load_records(path, columns={"query": "search"})
    assert (info.value.path, info.value.row, info.value.column) == (str(path), row, column)


def test_non_numeric_raw_score_is_an_error(tmp_path):
    path = write_text(tmp_path / "pairs.csv", "query,title,label,raw_score\nlamp,desk lamp,Exact,high\n")
    with pytest.raises(DataError, match="expected a number, got 'high'") as info:
        load_records(path)
    assert (info.value.row, info.value.column) == (1, "raw_score")


def test_duplicate_ids_are_refused(tmp_path):
    path = write_text(tmp_path / "pairs.csv", "id,query,title\n7,lamp,desk lamp\n8,rug,rug\n7,sofa,sofa\n")
    with pytest.raises(DataError, match=r"duplicate id '7' \(first seen in row 1\)") as info:
        load_records(path)
    assert info.value.row == 3


def test_invalid_utf8_in_csv_names_row_and_column(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_bytes(b"query,title,label\nlamp,desk lamp,Exact\nrug,caf\xe9 rug,Exact\n")
    with pytest.raises(DataError, match=r"not valid utf-8: byte 0xe9 .*\(line 3\)") as info:
        load_records(path)
    assert (info.value.path, info.value.row, info.value.column) == (str(path), 2, "title")
    # The same file reads once its real encoding is given.
    assert load_records(path, encoding="latin-1")[1].title == "café rug"


def test_invalid_utf8_in_jsonl_names_line_and_field(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(b'{"query": "lamp", "title": "desk lamp"}\n\n{"query": "rug", "title": "caf\xe9"}\n')
    with pytest.raises(DataError, match="not valid utf-8") as info:
        load_records(path)
    assert (info.value.row, info.value.column) == (3, "title")


def test_invalid_json_line_names_the_line(tmp_path):
    path = write_text(tmp_path / "pairs.jsonl", '{"query": "lamp", "title": "desk lamp"}\n{"query": "rug", title}\n')
    with pytest.raises(DataError, match="invalid JSON") as info:
        load_records(path)
    assert (info.value.path, info.value.row) == (str(path), 2)


def test_jsonl_row_that_is_not_an_object_is_an_error(tmp_path):
    path = write_text(tmp_path / "pairs.jsonl", '{"query": "lamp", "title": "desk lamp"}\n[1, 2]\n')
    with pytest.raises(DataError, match="expected a JSON object") as info:
        load_records(path)
    assert info.value.row == 2


def full_records():
    return [
        Record(
            id="p1",
            query="cordless drill",
            title="DeWalt 20V MAX drill",
            label="Exact",
            brand="DeWalt",
            description="Compact drill – 2 batteries\u2028line separator kept raw by the writer",
            attributes={"voltage": "20 V", "colour": "yellow"},
            raw_score=2.67,
            exposure=1234.0,
            meta={"rater_disagreement": True, "product_uid": "100001", "scores": [3, 2, 3]},
        ),
        Record(id="p2", query="garden hose", title="Flexzilla hose", label="Irrelevant", raw_score=1.0),
    ]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_written_records_read_back_equal(tmp_path, suffix):
    records = full_records()
    path = tmp_path / f"records{suffix}"
    assert write_records(path, records) == 2
    assert load_records(path) == records


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_unlabelled_records_read_back_unlabelled(tmp_path, suffix):
    records = [
        Record(id="u1", query="lamp", title="desk lamp"),
        Record(id="u2", query="rug", title="rug", exposure=0.0),
    ]
    path = tmp_path / f"pool{suffix}"
    write_records(path, records)
    assert load_records(path) == records


def test_empty_jsonl_reads_as_no_records(tmp_path):
    path = tmp_path / "empty.jsonl"
    write_records(path, [])
    assert path.read_text() == "" and load_records(path) == []


def test_mixing_labelled_and_unlabelled_records_is_refused_and_writes_nothing(tmp_path):
    path = tmp_path / "mixed.jsonl"
    with pytest.raises(DataError, match="mix labelled and unlabelled"):
        write_records(path, [Record("a", "q", "t", label="Exact"), Record("b", "q", "t")])
    assert not path.exists()


def test_failed_write_leaves_no_file(tmp_path):
    path = tmp_path / "out.jsonl"
    unserialisable = Record("a", "q", "t", label="Exact", meta={"when": object()})
    with pytest.raises(TypeError):
        write_records(path, [Record("b", "q", "t", label="Exact"), unserialisable])
    assert list(tmp_path.iterdir()) == []


def test_jsonl_accepts_a_json_array_and_numeric_ids(tmp_path):
    path = write_text(
        tmp_path / "pairs.json", json.dumps([{"id": 5, "query": "lamp", "title": "desk lamp", "label": "Exact"}])
    )
    (record,) = load_records(path)
    assert (record.id, record.label) == ("5", "Exact")


def test_parquet_with_mapped_columns_and_integer_labels(tmp_path):
    path = tmp_path / "pairs.parquet"
    table = pa.table({"q": ["lamp", "rug"], "product": ["desk lamp", "wool rug"], "grade": [4, 1], "views": [10, None]})
    pq.write_table(table, path)
    records = load_records(
        path, scheme="crowdflower4", columns={"query": "q", "title": "product", "label": "grade", "exposure": "views"}
    )
    assert [(r.label, r.exposure) for r in records] == [("4", 10.0), ("1", None)]


def test_parquet_missing_column_is_named(tmp_path):
    path = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"query": ["lamp"], "label": ["Exact"]}), path)
    with pytest.raises(DataError, match="missing column 'title'") as info:
        load_records(path)
    assert (info.value.path, info.value.column) == (str(path), "title")


def test_parquet_wrong_type_is_named(tmp_path):
    path = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"query": ["lamp"], "title": [3.5]}), path)
    with pytest.raises(DataError, match="has type double, expected string") as info:
        load_records(path)
    assert info.value.column == "title"


def test_not_a_parquet_file_is_a_data_error(tmp_path):
    path = write_text(tmp_path / "pairs.parquet", "query,title\n")
    with pytest.raises(DataError, match="not a readable Parquet file"):
        load_records(path)


def test_unknown_format_extension_and_option_are_refused(tmp_path):
    path = write_text(tmp_path / "pairs.txt", "query,title\nlamp,lamp\n")
    with pytest.raises(DataError, match="cannot tell the format"):
        load_records(path)
    with pytest.raises(DataError, match="unknown format 'excel'"):
        load_records(path, format="excel")
    with pytest.raises(DataError, match="option 'locale' is not understood by format 'csv'"):
        load_records(path, format="csv", locale="us")
    with pytest.raises(FileNotFoundError):
        load_records(tmp_path / "absent.csv")


def test_scheme_name_is_resolved_and_unknown_scheme_refused(tmp_path):
    path = write_text(tmp_path / "pairs.csv", "query,title,label\nlamp,desk lamp,3\n")
    assert load_records(path, scheme=get_scheme("crowdflower4"))[0].label == "3"
    with pytest.raises(Exception, match="unknown label scheme 'five'"):
        load_records(path, scheme="five")


def test_generic_file_without_query_column_lists_the_file_columns(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text("search_term,product_title,label\ndrill,DeWalt drill,Exact\n")
    with pytest.raises(DataError, match=r"missing column 'query' \(file columns: 'search_term'"):
        load_records(path)
    records = load_records(path, columns={"query": "search_term", "title": "product_title"})
    assert records[0].query == "drill" and records[0].label == "Exact"


def test_utf8_bom_is_dropped_even_when_reading_as_latin1(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_bytes(b"\xef\xbb\xbfquery,title,label\ncaf\xe9 table,bistro table,Partial\n")
    (record,) = load_records(path, encoding="latin-1")
    assert record.query == "café table" and record.label == "Partial"


@pytest.mark.parametrize("name", ["pairs.csv", "pairs.tsv"])
def test_nul_byte_in_a_csv_cell_is_refused_naming_row_and_column(tmp_path, name):
    sep = "\t" if name.endswith(".tsv") else ","
    path = tmp_path / name
    path.write_bytes(sep.join(["query", "title", "note"]).encode() + b"\n"
                     + sep.join(["lamp", "desk lamp", "ok"]).encode() + b"\n"
                     + sep.join(["rug", "wool rug", "bad\x00cell"]).encode() + b"\n")
    with pytest.raises(DataError, match="NUL byte") as info:
        load_records(path)
    assert (info.value.path, info.value.row, info.value.column) == (str(path), 2, "note")


def test_nul_byte_in_a_csv_header_is_refused_naming_the_column(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_bytes(b"query,ti\x00tle\nlamp,desk lamp\n")
    with pytest.raises(DataError, match="NUL byte in the header") as info:
        load_records(path)
    assert info.value.column == "ti\x00tle"


def test_escaped_nul_in_a_jsonl_text_field_is_refused(tmp_path):
    path = write_text(tmp_path / "pairs.jsonl", '{"query": "lamp", "title": "desk\\u0000lamp"}\n')
    with pytest.raises(DataError, match="NUL byte") as info:
        load_records(path)
    assert (info.value.row, info.value.column) == (1, "title")


@pytest.mark.parametrize("encoding", ["no-such-codec", "base64", "rot13"])
@pytest.mark.parametrize("name, fmt", [("pairs.csv", "auto"), ("pairs.jsonl", "auto"), ("train.csv", "homedepot"),
                                       ("cf.csv", "crowdflower")])
def test_unknown_encoding_is_a_data_error_naming_it_and_the_file(tmp_path, encoding, name, fmt):
    path = write_text(tmp_path / name, "query,title\nlamp,desk lamp\n")
    with pytest.raises(DataError, match=f"unknown text encoding '{encoding}'") as info:
        load_records(path, fmt, encoding=encoding)
    assert info.value.path == str(path)


@pytest.mark.parametrize("line", ['{"query": "a", "title": ' + "[" * 100_000 + "]" * 100_000 + "}",
                                  '{"query": "a", "title": "b", "raw_score": 1' + "0" * 5000 + "}",
                                  '{"query": "a", "title": "b", "raw_score": "1e999"}'])
def test_pathological_json_is_a_data_error_naming_the_line(tmp_path, line):
    path = write_text(tmp_path / "pairs.jsonl", '{"query": "lamp", "title": "desk lamp"}\n' + line + "\n")
    with pytest.raises(DataError) as info:
        load_records(path)
    assert info.value.row == 2
