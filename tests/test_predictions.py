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
