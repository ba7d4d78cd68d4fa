"""Property tests (hypothesis): whatever bytes a data file or a prediction file holds, lref either reads it or
raises its DataError naming the file and where in it; never another exception, and `lref eval` never shows a
traceback."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from lref.data import DataError, Record, load_records, write_records  # noqa: E402
from lref.labels import get_scheme  # noqa: E402
from lref.metrics import evaluate  # noqa: E402
from lref.predictions import read_predictions  # noqa: E402

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
SCHEME = get_scheme("graded3")

# Pieces that reach the readers' corners: separators, quotes, unicode line breaks, NUL, BOMs, bad UTF-8, numbers
# JSON cannot hold, labels in and out of the scheme.
ATOMS = ["query", "title", "label", "id", "raw_score", "exposure", "attributes", "meta", "brand", "Exact", "partial",
         "Perfect", ",", "\t", '"', "'", "\n", "\r\n", "\r", "\u2028", "\u0085", "\x00", "\ufeff", "{", "}", "[", "]",
         ":", "NaN", "Infinity", "1e999", "-0", "4.0", "null", "true", " ", "é", "\udcff"]


def as_bytes(pieces: list[str], raw: bytes) -> bytes:
    return "".join(pieces).encode("utf-8", errors="surrogateescape") + raw


text_pieces = st.lists(st.one_of(st.sampled_from(ATOMS), st.text(max_size=6)), max_size=40)
any_bytes = st.one_of(
    st.binary(max_size=300),
    st.builds(as_bytes, text_pieces, st.binary(max_size=8)),
    # a valid header, then anything
    st.builds(lambda body, sep: ("query" + sep + "title" + sep + "label\n").encode() + body,
              st.builds(as_bytes, text_pieces, st.just(b"")), st.sampled_from([",", "\t"])),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8) | st.sampled_from(ATOMS),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(ATOMS) | st.text(max_size=5), inner,
                                                                max_size=4),
    max_leaves=10,
)
json_rows = st.lists(
    st.dictionaries(st.sampled_from(["id", "query", "title", "label", "probs", "topk", "raw_score", "attributes",
                                     "meta", "extra"]), json_values, max_size=7)
    | json_values,
    max_size=4,
)


def jsonl_bytes(rows: list, tail: bytes) -> bytes:
    return "\n".join(json.dumps(row, ensure_ascii=False, allow_nan=True) for row in rows).encode(
        "utf-8", errors="surrogateescape") + tail


any_jsonl = st.one_of(any_bytes, st.builds(jsonl_bytes, json_rows, st.sampled_from([b"", b"\n", b"\n\n{", b"\xff"])))


@pytest.fixture(scope="module")
def workdir():
    with tempfile.TemporaryDirectory(prefix="lref-properties-") as folder:
        yield Path(folder)


def names_where(error: DataError, path: Path) -> bool:
    """The message names the file, and the row/line or column when the problem is in one."""
    message = str(error)
    if error.path != str(path) or str(path) not in message:
        return False
    return (error.row is not None and f"row {error.row}" in message) or error.column is not None \
        or "line" in message or "empty" in message


def check_load(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    try:
        records = load_records(path, scheme=SCHEME)
    except DataError as error:
        assert names_where(error, path), str(error)
        return
    assert all(isinstance(r, Record) and r.query and r.title for r in records)


@pytest.mark.parametrize("suffix", [".csv", ".tsv"])
@SETTINGS
@given(data=any_bytes)
def test_any_bytes_as_a_csv_or_tsv_file_load_or_raise_a_data_error(workdir, suffix, data):
    check_load(workdir / f"pairs{suffix}", data)


@SETTINGS
@given(data=any_jsonl)
def test_any_bytes_as_a_jsonl_file_load_or_raise_a_data_error(workdir, data):
    check_load(workdir / "pairs.jsonl", data)


GOLD = [Record("a", "cordless drill", "DeWalt drill", label="Exact"),
        Record("b", "garden hose", "hose reel", label="Partial"),
        Record("c", "ceiling fan", "light kit", label="Irrelevant")]


def prediction_lines(rows: list) -> bytes:
    return "\n".join(json.dumps(row, ensure_ascii=False) for row in rows).encode("utf-8", errors="surrogateescape")


prediction_rows = st.lists(
    st.fixed_dictionaries(
        {"id": st.sampled_from(["a", "b", "c", "d"]) | json_values,
         "label": st.sampled_from(SCHEME.labels) | json_values},
        optional={"probs": st.dictionaries(st.sampled_from([*SCHEME.labels, "Perfect"]), st.floats() | json_values,
                                           max_size=3) | json_values,
                  "topk": st.lists(st.sampled_from([*SCHEME.labels, "x"]), max_size=3) | json_values}),
    max_size=4,
)
any_predictions = st.one_of(any_bytes, st.builds(prediction_lines, prediction_rows))


@SETTINGS
@given(data=any_predictions)
def test_any_prediction_file_evaluates_or_raises_a_data_error(workdir, data):
    """What `lref eval` does with a prediction file: read it against the scheme, then score it against gold."""
    path = workdir / "predictions.jsonl"
    path.write_bytes(data)
    try:
        predictions = read_predictions(path, SCHEME)
    except DataError as error:
        assert names_where(error, path), str(error)
        return
    try:
        evaluate(GOLD, predictions, SCHEME, bootstrap=0, allow_missing=True)
    except DataError as error:  # ids that match no gold record, or occur twice: named by id
        assert "id" in str(error), str(error)


@pytest.fixture(scope="module")
def gold_file(workdir):
    path = workdir / "gold.jsonl"
    write_records(path, GOLD)
    return path


def run_eval(*args: str) -> tuple[int, str, str]:
    """`lref ARGS` through lref.cli.main, in-process, inside typer's CliRunner isolation (its stdout and stderr)."""
    from typer.testing import CliRunner

    from lref.cli import main

    runner = CliRunner()
    argv = sys.argv
    with runner.isolation(env={"COLUMNS": "200"}) as (out, err, *_):
        sys.argv = ["lref", *args]
        try:
            main()
            code = 0
        except SystemExit as done:
            code = done.code
        finally:
            sys.argv = argv
        return code, out.getvalue().decode(errors="replace"), err.getvalue().decode(errors="replace")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
@given(data=any_predictions)
def test_lref_eval_on_any_prediction_file_exits_cleanly(workdir, gold_file, data):
    path = workdir / "cli-predictions.jsonl"
    path.write_bytes(data)
    code, out, err = run_eval("eval", "--pred", str(path), "--gold", str(gold_file), "--bootstrap", "0",
                              "--allow-missing")
    assert "Traceback" not in out + err
    if code == 0:
        assert "accuracy" in out.lower()
    else:
        assert code == 2 and err.startswith("error: "), (code, err)


def test_lref_eval_names_the_file_and_line_of_a_bad_probability(workdir, gold_file):
    path = workdir / "nan.jsonl"
    path.write_text('{"id": "a", "label": "Exact", "probs": {"Exact": 1.0}}\n'
                    '{"id": "b", "label": "Exact", "probs": {"Exact": NaN}}\n')
    code, _, err = run_eval("eval", "--pred", str(path), "--gold", str(gold_file), "--bootstrap", "0")
    assert code == 2 and f"file {path}, row 2, column 'probs'" in err and "finite" in err
