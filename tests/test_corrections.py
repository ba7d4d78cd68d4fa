"""Label corrections: the file, the merge, applying them, and their way into the pipeline's data, its fingerprints and
the CLI (no Label Studio needed)."""

import json
from pathlib import Path

import pytest
import yaml
from helpers import other_label, run_lref, write_train_eval

from lref.data import Record, load_records
from lref.data.corrections import (
    CORRECTED_FROM,
    Correction,
    apply_corrections,
    file_sha256,
    load_and_apply,
    merge_corrections,
    read_corrections,
    write_corrections,
)
from lref.data.records import DataError
from lref.fingerprint import data_hash
from lref.labels import get_scheme
from lref.pipeline import ConfigError, load_data, parse_config

GRADED3 = get_scheme("graded3")


def records():
    return [Record(id=f"p{i}", query="red drill", title=f"drill {i}", label=label)
            for i, label in enumerate(["Exact", "Partial", "Irrelevant", "Exact"])]


def write_lines(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_apply_overrides_labels_by_id_and_counts_changes():
    corrections = [Correction("p0", "Irrelevant", "Exact", "ann", "2026-01-01T00:00:00+00:00"),
                   Correction("p1", "Partial", "Partial"),  # a confirmation: no change
                   Correction("p2", "Exact", "Partial")]  # p2 is Irrelevant now: relabelled since the review
    out, summary = apply_corrections(records(), corrections)
    assert [r.label for r in out] == ["Irrelevant", "Partial", "Exact", "Exact"]
    assert out[0].meta[CORRECTED_FROM] == "Exact" and CORRECTED_FROM not in out[1].meta
    assert (summary.count, summary.changed, summary.stale) == (3, 2, 1)
    assert [r.label for r in records()] == ["Exact", "Partial", "Irrelevant", "Exact"]  # inputs untouched


def test_unknown_ids_are_refused_naming_them():
    with pytest.raises(DataError, match=r"2 corrected ids are not in the data \(e\.g\. 'x1', 'x2'\)"):
        apply_corrections(records(), [Correction("x2", "Exact"), Correction("p0", "Exact"), Correction("x1", "Exact")])


@pytest.mark.parametrize("row, message", [
    ({"id": "p0"}, r"row 1, column 'new_label'"),
    ({"id": "p0", "new_label": "Great"}, r"row 1, column 'new_label': label 'Great' is not in scheme 'graded3'"),
    ({"id": "p0", "new_label": "Exact", "time": "yesterday"}, r"column 'time': not an ISO 8601 time"),
    ({"id": "", "new_label": "Exact"}, r"column 'id'"),
])
def test_bad_rows_name_the_file_line_and_field(tmp_path, row, message):
    path = write_lines(tmp_path / "c.jsonl", [row])
    with pytest.raises(DataError, match=message) as error:
        read_corrections(path, GRADED3)
    assert str(path) in str(error.value)


def test_a_second_row_for_an_id_is_refused(tmp_path):
    path = write_lines(tmp_path / "c.jsonl", [{"id": "p0", "new_label": "Exact"}, {"id": "p0", "new_label": "Partial"}])
    with pytest.raises(DataError, match=r"row 2, column 'id': id 'p0' also on line 1"):
        read_corrections(path)


def test_merge_keeps_the_later_annotation_and_is_idempotent(tmp_path):
    early = Correction("b", "Exact", "Partial", "ann", "2026-01-01T10:00:00+00:00")
    late = Correction("b", "Irrelevant", "Partial", "ann2", "2026-01-01T09:30:00-01:00")  # 10:30 UTC
    other = Correction("a", "Partial", "Exact", "ann", "2026-01-01T08:00:00Z")
    assert merge_corrections([late], [early, other]) == [other, late]
    assert merge_corrections([early], [late]) == [late]
    path = tmp_path / "c.jsonl"
    write_corrections(path, merge_corrections([], [early, other]))
    first = path.read_bytes()
    write_corrections(path, merge_corrections(read_corrections(path), [early, other]))
    assert path.read_bytes() == first
    assert [json.loads(line)["id"] for line in first.decode().splitlines()] == ["a", "b"]


def test_load_and_apply_spans_several_record_lists(tmp_path):
    path = write_lines(tmp_path / "c.jsonl", [{"id": "p0", "new_label": "partial"}, {"id": "e1", "new_label": "Exact"}])
    held_out = [Record(id="e1", query="q", title="t", label="Irrelevant")]
    (train, evaluation), summary = load_and_apply(path, [records(), held_out], GRADED3)
    assert train[0].label == "Partial" and evaluation[0].label == "Exact"  # names parse case-insensitively
    assert (summary.count, summary.changed, summary.sha256) == (2, 2, file_sha256(path))
    with pytest.raises(DataError, match="'e1'"):
        load_and_apply(path, [records()], GRADED3)


# ------------------------------------------------------------------------------------------- pipeline and CLI
@pytest.fixture
def pool(tmp_path):
    return write_train_eval(tmp_path, 200, 3, 150)



def pipeline_config(tmp_path, **data) -> dict:
    return {"run_dir": str(tmp_path / "run"), "data": {"format": "jsonl", "train": "train.jsonl",
                                                       "eval": "eval.jsonl", **data},
            "eval": {"bootstrap": 0, "progress": False}, "stages": {"lexical": {"max_iter": 20}}}


def test_pipeline_data_takes_the_corrections_and_hashes_the_file(tmp_path, pool):
    train_pick, eval_pick = pool[5], pool[160]
    rows = [{"id": r.id, "old_label": r.label, "new_label": other_label(r.label)} for r in (train_pick, eval_pick)]
    write_lines(tmp_path / "c.jsonl", rows)
    plain = load_data(parse_config(pipeline_config(tmp_path), tmp_path / "run.yaml"))
    config = parse_config(pipeline_config(tmp_path, corrections="c.jsonl"), tmp_path / "run.yaml")
    assert config.data.corrections == str(tmp_path / "c.jsonl")  # relative to the config file
    data = load_data(config)
    train = {r.id: r.label for r in data.train}
    assert train[train_pick.id] == other_label(train_pick.label)
    assert {r.id: r.label for r in data.eval}[eval_pick.id] == other_label(eval_pick.label)
    changed = sum(a.label != b.label for a, b in zip(plain.train, data.train))
    assert changed == 1 and data.corrections.count == 2 and data.corrections.changed == 2
    assert data.train_hash != plain.train_hash and data.eval_hash != plain.eval_hash
    # the same labels from a different file (a confirmation added): the fingerprint still moves
    write_lines(tmp_path / "c.jsonl", [*rows, {"id": pool[7].id, "new_label": pool[7].label}])
    again = load_data(config)
    assert data_hash(again.train) == data_hash(data.train) and again.train_hash != data.train_hash


def test_pipeline_refuses_missing_files_and_foreign_ids(tmp_path, pool):
    with pytest.raises(ConfigError, match="data.corrections: no such file"):
        parse_config(pipeline_config(tmp_path, corrections="nope.jsonl"), tmp_path / "run.yaml")
    write_lines(tmp_path / "c.jsonl", [{"id": "not-a-pair", "new_label": "Exact"}])
    with pytest.raises(DataError, match=r"c\.jsonl: 1 corrected ids are not in the data \(e\.g\. 'not-a-pair'\)"):
        load_data(parse_config(pipeline_config(tmp_path, corrections="c.jsonl"), tmp_path / "run.yaml"))


def test_lref_run_corrections_reruns_what_depends_on_the_data(tmp_path, pool, monkeypatch, capsys):
    config_path = tmp_path / "run.yaml"
    config_path.write_text(yaml.safe_dump(pipeline_config(tmp_path)))
    target = pool[5]
    write_lines(tmp_path / "c.jsonl", [{"id": target.id, "new_label": other_label(target.label)}])
    code, out, err = run_lref(monkeypatch, capsys, "run", str(config_path))
    assert code == 0, err
    manifest = tmp_path / "run" / "stages" / "lexical" / "manifest.json"
    before = json.loads(manifest.read_text())["fingerprint"]
    code, out, err = run_lref(monkeypatch, capsys, "run", str(config_path), "--corrections", str(tmp_path / "c.jsonl"))
    assert code == 0, err
    assert "lexical: running" in out
    after = json.loads(manifest.read_text())["fingerprint"]
    assert after != before
    code, out, err = run_lref(monkeypatch, capsys, "run", str(config_path), "--corrections", str(tmp_path / "x"))
    assert code == 2 and "--corrections: no such file" in err


def test_train_sft_and_select_apply_corrections_before_training(tmp_path, pool, monkeypatch, capsys):
    import lref.stages.select as select_module
    import lref.stages.sft as sft_module

    seen = {}
    monkeypatch.setattr(sft_module, "train_sft", lambda config, train, eval_records=None: seen.update(sft=train))

    def select(config, records, teacher=None):
        seen["select"] = records
        raise SystemExit(0)  # the funnel table would need a real selection

    monkeypatch.setattr(select_module, "select", select)
    target = pool[5]
    write_lines(tmp_path / "c.jsonl", [{"id": target.id, "new_label": other_label(target.label)}])
    code, out, err = run_lref(monkeypatch, capsys, "train", "sft", "--train", str(tmp_path / "train.jsonl"),
                              "--out", str(tmp_path / "m"), "--corrections", str(tmp_path / "c.jsonl"))
    assert code == 0, err
    assert "1 reviewed pairs" in out and "1 labels changed" in out
    assert {r.id: r.label for r in seen["sft"]}[target.id] == other_label(target.label)
    code, out, err = run_lref(monkeypatch, capsys, "select", "--pool", str(tmp_path / "train.jsonl"), "-o",
                              str(tmp_path / "sel"), "--corrections", str(tmp_path / "c.jsonl"))
    assert {r.id: r.label for r in seen["select"]}[target.id] == other_label(target.label)
    code, out, err = run_lref(monkeypatch, capsys, "train", "sft", "--train", str(tmp_path / "eval.jsonl"),
                              "--out", str(tmp_path / "m"), "--corrections", str(tmp_path / "c.jsonl"))
    assert code == 2 and repr(target.id) in err
    assert load_records(tmp_path / "train.jsonl")[5].label == target.label  # the data file is never rewritten
