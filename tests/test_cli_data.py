"""`lref data inspect | convert | split`, run through lref.cli.main as the installed script runs it."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import run_lref

from lref.data import load_records


@pytest.fixture
def homedepot_csv(tmp_path):
    rows = [
        "1,100001,Angle bracket 90,angle bracket,3.0",
        "2,100001,Angle bracket 90,l bracket,2.33",
        "3,100002,Deck screw,deck nails,1.0",
        "4,100003,Garden hose 50 ft,garden hose,2.67",
    ]
    path = tmp_path / "train.csv"
    path.write_text("id,product_uid,product_title,search_term,relevance\n" + "\n".join(rows) + "\n", encoding="latin-1")
    return path


def test_inspect_prints_counts_floor_and_disagreement(monkeypatch, capsys, homedepot_csv, tmp_path):
    summary_path = tmp_path / "summary.json"
    code, out, _ = run_lref(
        monkeypatch, capsys, "data", "inspect", str(homedepot_csv), "--format", "homedepot", "--json", str(summary_path)
    )
    assert code == 0
    assert "4 pairs, 4 queries" in out
    assert any(line.split()[:3] == ["Exact", "2", "0.500"] for line in out.splitlines())
    assert any(line.split()[:3] == ["Irrelevant", "1", "0.250"] for line in out.splitlines())
    assert "majority floor: 0.500 (always Exact)" in out
    assert "rater disagreement rate: 0.500" in out
    summary = json.loads(summary_path.read_text())
    assert summary["label_counts"] == {"Exact": 2, "Partial": 1, "Irrelevant": 1} and summary["queries"] == 4


def test_convert_writes_canonical_jsonl_with_column_mapping(monkeypatch, capsys, tmp_path):
    source = tmp_path / "pairs.csv"
    source.write_text("term,name,grade\ndrill,DeWalt drill,Substitute\nsofa,Grey sofa,exact\n")
    out = tmp_path / "out" / "pairs.jsonl"
    code, stdout, _ = run_lref(
        monkeypatch,
        capsys,
        "data",
        "convert",
        str(source),
        "--out",
        str(out),
        "--scheme",
        "esci4",
        "--column",
        "query=term",
        "--column",
        "title=name",
        "--column",
        "label=grade",
    )
    assert code == 0 and "wrote 2 records" in stdout
    assert [json.loads(line)["label"] for line in out.read_text().splitlines()] == ["Substitute", "Exact"]
    assert load_records(out, scheme="esci4") == load_records(
        source, scheme="esci4", columns={"query": "term", "title": "name", "label": "grade"}
    )


def test_convert_failure_exits_2_names_the_row_and_writes_nothing(monkeypatch, capsys, tmp_path):
    source = tmp_path / "pairs.csv"
    source.write_text("query,title,label\ndrill,DeWalt drill,Exact\nsofa,Grey sofa,Perfect\n")
    out = tmp_path / "pairs.jsonl"
    code, _, err = run_lref(monkeypatch, capsys, "data", "convert", str(source), "--out", str(out))
    assert code == 2
    assert f"error: file {source}, row 2, column 'label'" in err and "'Perfect'" in err
    assert list(tmp_path.iterdir()) == [source]  # no output and no temporary left behind


def test_split_writes_one_file_per_split_without_shared_queries(monkeypatch, capsys, tmp_path):
    source = tmp_path / "pairs.jsonl"
    source.write_text(
        "".join(json.dumps({"query": f"q{i % 40}", "title": f"t{i}", "label": "Exact"}) + "\n" for i in range(200))
    )
    out_dir = tmp_path / "splits"
    code, out, _ = run_lref(
        monkeypatch,
        capsys,
        "data",
        "split",
        str(source),
        "--out-dir",
        str(out_dir),
        "--fractions",
        "train=0.5,test=0.5",
        "--seed",
        "4",
    )
    assert code == 0
    parts = {name: load_records(out_dir / f"{name}.jsonl") for name in ("train", "test")}
    assert sorted(p.name for p in out_dir.iterdir()) == ["test.jsonl", "train.jsonl"]
    assert sum(len(p) for p in parts.values()) == 200
    assert not {r.query for r in parts["train"]} & {r.query for r in parts["test"]}
    assert f"{len(parts['train'])}" in out and "train.jsonl" in out


def test_split_rejects_bad_fractions(monkeypatch, capsys, homedepot_csv, tmp_path):
    code, _, err = run_lref(
        monkeypatch,
        capsys,
        "data",
        "split",
        str(homedepot_csv),
        "-f",
        "homedepot",
        "--out-dir",
        str(tmp_path / "s"),
        "--fractions",
        "train=0.9,dev=0.2",
    )
    assert code == 2 and "must sum to 1" in err
    assert not (tmp_path / "s").exists()


def test_reader_options_pass_through(monkeypatch, capsys, tmp_path):
    source = tmp_path / "pairs.csv"
    source.write_bytes(b"query,title\ncaf\xe9,mug\n")
    code, _, err = run_lref(monkeypatch, capsys, "data", "inspect", str(source))
    assert code == 2 and "not valid utf-8" in err and "row 1, column 'query'" in err
    code, out, _ = run_lref(monkeypatch, capsys, "data", "inspect", str(source), "--option", "encoding=latin-1")
    assert code == 0 and "1 pairs, 1 queries" in out and "unlabelled pairs: 1" in out


def test_installed_script_reports_data_errors_with_exit_2(tmp_path):
    script = Path(sys.executable).with_name("lref")
    if not script.exists():
        pytest.skip(f"console script not installed beside {sys.executable}")
    source = tmp_path / "pairs.jsonl"
    source.write_text('{"query": "drill", "title": "drill"}\n{"query": "sofa", title}\n')
    done = subprocess.run(
        [str(script), "data", "convert", str(source), "--out", str(tmp_path / "o.jsonl")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert f"error: file {source}, row 2: invalid JSON" in done.stderr
    assert not (tmp_path / "o.jsonl").exists()
