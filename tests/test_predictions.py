import json

import pytest

from lref.data import DataError
from lref.labels import get_scheme
from lref.predictions import Prediction, read_predictions, write_predictions


def test_round_trip_canonicalises_labels(tmp_path):
    path = tmp_path / "p.jsonl"
    write_predictions(path, [Prediction("a", "exact", {"exact": 0.7, "partial": 0.2, "irrelevant": 0.1}, ["exact"])])
    (read,) = read_predictions(path, get_scheme("graded3"))
    assert read.label == "Exact"
    assert read.probs == {"Exact": 0.7, "Partial": 0.2, "Irrelevant": 0.1}
    assert read.topk == ["Exact"]


@pytest.mark.parametrize(
    "line, column, message",
    [
        ({"id": "a"}, "label", "missing or empty"),
        ({"id": "a", "label": "Perfect"}, "label", "not in scheme"),
        ({"id": "a", "label": "Exact", "probs": {"Exact": "high"}}, "probs", "numbers"),
    ],
)
def test_bad_prediction_lines_name_file_row_and_column(tmp_path, line, column, message):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"id": "ok", "label": "Exact"}) + "\n" + json.dumps(line) + "\n")
    with pytest.raises(DataError, match=message) as error:
        read_predictions(path, get_scheme("graded3"))
    assert (error.value.path, error.value.row, error.value.column) == (str(path), 2, column)


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\u0085"])
def test_ids_holding_unicode_line_separators_read_back_whole(tmp_path, separator):
    # write_predictions writes these characters raw (ensure_ascii=False); str.splitlines would cut the line there
    path = tmp_path / "p.jsonl"
    pid = f"a{separator}b"
    write_predictions(path, [Prediction(pid, "Exact", {"Exact": 1.0}, ["Exact"]), Prediction("c", "Partial")])
    assert separator in path.read_text(encoding="utf-8")
    assert [p.id for p in read_predictions(path, get_scheme("graded3"))] == [pid, "c"]
    assert [p.id for p in read_predictions(path)] == [pid, "c"]


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize("with_scheme", [True, False])
def test_non_finite_probabilities_are_refused_naming_file_and_line(tmp_path, value, with_scheme):
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": "ok", "label": "Exact", "probs": {"Exact": 1.0}}\n\n'
                    f'{{"id": "b", "label": "Exact", "probs": {{"Exact": {value}, "Partial": 0.0}}}}\n')
    with pytest.raises(DataError, match="finite") as error:
        read_predictions(path, get_scheme("graded3") if with_scheme else None)
    assert (error.value.path, error.value.row, error.value.column) == (str(path), 3, "probs")
    assert f"file {path}, row 3, column 'probs'" in str(error.value)


@pytest.mark.parametrize(
    "line, column",
    [
        ({"id": {"x": 1}, "label": "Exact"}, "id"),
        ({"id": "a", "label": ["Exact"]}, "label"),
        ({"id": "a", "label": "Exact", "probs": [0.5, 0.5]}, "probs"),
        ({"id": "a", "label": "Exact", "probs": {"Exact": True}}, "probs"),
        ({"id": "a", "label": "Exact", "probs": {"Perfect": 0.5}}, "probs"),
        ({"id": "a", "label": "Exact", "topk": "Exact"}, "topk"),
        ({"id": "a", "label": "Exact", "topk": [1]}, "topk"),
        ({"id": "a", "label": "Exact", "topk": ["Perfect"]}, "topk"),
    ],
)
def test_badly_typed_fields_name_their_column(tmp_path, line, column):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(line) + "\n")
    with pytest.raises(DataError) as error:
        read_predictions(path, get_scheme("graded3"))
    assert (error.value.row, error.value.column) == (1, column)


def test_read_jsonl_lines_splits_on_newline_only_and_numbers_lines(tmp_path):
    from lref.io import read_jsonl_lines, split_jsonl_lines

    assert split_jsonl_lines('{"a": "x\u2028y"}\n\n  \n{"b": 1}\r\n') == [(1, '{"a": "x\u2028y"}'), (4, '{"b": 1}\r')]
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}\r{"b": "\xc2\x85"}\n')
    assert read_jsonl_lines(path) == [(1, '{"a": 1}\r{"b": "\x85"}')]
