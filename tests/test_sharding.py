"""Sharded and multi-process scoring: deterministic partitions, byte-identical merges, clear errors."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
from helpers import run_lref

from lref.data.records import DataError
from lref.sharding import (
    merge_shard_files,
    parse_shard,
    select_shard,
    shard_info_path,
    shard_positions,
    write_shard_info,
)

pytest.importorskip("torch")


# ------------------------------------------------------------------------------------------------- partitions
@pytest.mark.parametrize("spec, expected", [("0/1", (0, 1)), ("2/3", (2, 3)), (" 0/4 ", (0, 4))])
def test_parse_shard(spec, expected):
    assert parse_shard(spec) == expected


@pytest.mark.parametrize(
    "spec, message",
    [
        ("3/3", "index must lie in 0..2"),
        ("-1/3", "index must lie in 0..2"),
        ("1/0", "N must be at least 1"),
        ("1", "must look like i/N"),
        ("a/b", "must look like i/N"),
        ("1/3/4", "must look like i/N"),
        ("", "must look like i/N"),
    ],
)
def test_parse_shard_rejects_bad_specs(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_shard(spec)


@pytest.mark.parametrize("block_size", [1, 3, 8])
@pytest.mark.parametrize("num_shards", [1, 2, 3, 7])
def test_shards_partition_the_input_in_order(block_size, num_shards):
    items = list(range(23))
    shards = [select_shard(items, f"{i}/{num_shards}", block_size) for i in range(num_shards)]
    assert sorted(x for shard in shards for x in shard) == items
    for shard in shards:
        assert shard == sorted(shard)
    # Whole blocks go round-robin: block b belongs to shard b % N.
    for i, shard in enumerate(shards):
        assert all((x // block_size) % num_shards == i for x in shard)


def test_block_size_one_is_plain_round_robin():
    items = list("abcdefghij")
    assert select_shard(items, "1/3") == items[1::3]
    assert select_shard(items, None) == items
    assert shard_positions(10, "2/3", 2) == [4, 5]


# ---------------------------------------------------------------------------------------------- merge checks
def _write_shards(tmp_path, ids, num_shards, block_size=1):
    paths = []
    for i in range(num_shards):
        path = tmp_path / f"part{i}.jsonl"
        rows = select_shard(ids, f"{i}/{num_shards}", block_size)
        path.write_text("".join(json.dumps({"id": r, "label": "Exact"}) + "\n" for r in rows))
        write_shard_info(path, f"{i}/{num_shards}", ids, block_size)
        paths.append(path)
    return paths


def test_merge_restores_input_order(tmp_path):
    ids = [f"id{i}" for i in range(10)]
    paths = _write_shards(tmp_path, ids, 3, block_size=2)
    out = tmp_path / "merged.jsonl"
    assert merge_shard_files(list(reversed(paths)), out) == 10
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ids


def test_merge_refuses_missing_shard(tmp_path):
    paths = _write_shards(tmp_path, [f"id{i}" for i in range(10)], 3)
    with pytest.raises(DataError, match=r"incomplete merge: shard\(s\) 1/3 missing \(2 of 3 given\)"):
        merge_shard_files([paths[0], paths[2]], tmp_path / "merged.jsonl")
    assert not (tmp_path / "merged.jsonl").exists()


def test_merge_refuses_shard_given_twice(tmp_path):
    paths = _write_shards(tmp_path, [f"id{i}" for i in range(10)], 2)
    with pytest.raises(DataError, match="shard 0/2 given twice"):
        merge_shard_files([paths[0], paths[0], paths[1]], tmp_path / "merged.jsonl")


def test_merge_refuses_truncated_shard(tmp_path):
    paths = _write_shards(tmp_path, [f"id{i}" for i in range(10)], 3)
    lines = paths[0].read_text().splitlines(keepends=True)
    paths[0].write_text("".join(lines[:-1]))
    with pytest.raises(DataError, match=r"part0.jsonl: shard 0/3 has 3 rows, expected 4 of 10 input records"):
        merge_shard_files(paths, tmp_path / "merged.jsonl")


def test_merge_refuses_shards_of_different_splits(tmp_path):
    ids = [f"id{i}" for i in range(10)]
    paths = _write_shards(tmp_path, ids, 2)
    (tmp_path / "other").mkdir()
    other = _write_shards(tmp_path / "other", ids, 3)
    with pytest.raises(DataError, match=r"comes from another split .*num_shards 3 != 2"):
        merge_shard_files([paths[0], other[1]], tmp_path / "merged.jsonl")
    changed = _write_shards(tmp_path / "other", ids[:-1] + ["x"], 2)
    with pytest.raises(DataError, match=r"comes from another split .*ids_sha1"):
        merge_shard_files([paths[0], changed[1]], tmp_path / "merged.jsonl")


def test_merge_refuses_duplicate_ids_and_unsharded_files(tmp_path):
    paths = _write_shards(tmp_path, [f"id{i}" for i in range(4)], 2)
    paths[1].write_text(paths[1].read_text().replace('"id1"', '"id0"'))
    with pytest.raises(DataError, match="duplicate id 'id0'"):
        merge_shard_files(paths, tmp_path / "merged.jsonl")
    shard_info_path(paths[1]).unlink()
    with pytest.raises(DataError, match=r"part1.jsonl: no shard sidecar part1.jsonl.shard.json"):
        merge_shard_files(paths, tmp_path / "merged.jsonl")


# --------------------------------------------------------------------------------- real scoring through the CLI
@pytest.fixture(scope="module")
def scoring_setup(tmp_path_factory):
    from lref.data import write_records
    from lref.data.synthetic import SyntheticCatalogConfig, generate_catalog
    from lref.testing import build_tiny_causal_lm

    root = tmp_path_factory.mktemp("sharded_scoring")
    model = build_tiny_causal_lm(root / "model", embedding_scale=10)
    data = root / "pairs.jsonl"
    write_records(data, generate_catalog(SyntheticCatalogConfig(n_pairs=45, seed=3)))
    return model, data


def _predict(monkeypatch, capsys, model, data, out, *extra):
    code, _, err = run_lref(
        monkeypatch, capsys, "predict", "-m", str(model), "-d", str(data), "-o", str(out), "--scheme", "graded3",
        "--batch-size", "4", "--block-size", "8", *extra,
    )
    assert code == 0, err
    return err


def test_sharded_and_merged_equals_unsharded_byte_for_byte(tmp_path, monkeypatch, capsys, scoring_setup):
    model, data = scoring_setup
    whole = tmp_path / "whole.jsonl"
    _predict(monkeypatch, capsys, model, data, whole)
    assert len(whole.read_text().splitlines()) == 45
    assert not shard_info_path(whole).exists()
    parts = []
    for i in range(3):
        part = tmp_path / f"part{i}.jsonl"
        err = _predict(monkeypatch, capsys, model, data, part, "--shard", f"{i}/3")
        assert f"shard {i}/3 of 45 pairs" in err
        parts.append(str(part))
    # 45 pairs in blocks of 8: blocks 0..5, shard 0 holds blocks 0 and 3 (16 rows), shard 2 blocks 2 and 5 (13).
    assert [len(open(p).read().splitlines()) for p in parts] == [16, 16, 13]
    merged = tmp_path / "merged.jsonl"
    code, _, err = run_lref(monkeypatch, capsys, "merge", str(merged), *parts)
    assert code == 0, err
    assert "merged 3 shards (45 rows)" in err
    assert merged.read_bytes() == whole.read_bytes()

    code, _, err = run_lref(monkeypatch, capsys, "merge", str(tmp_path / "bad.jsonl"), parts[0], parts[2])
    assert code == 2
    assert "incomplete merge: shard(s) 1/3 missing" in err


def test_two_workers_equal_one_worker(tmp_path, monkeypatch, capsys, scoring_setup):
    model, data = scoring_setup
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    _predict(monkeypatch, capsys, model, data, one)
    _predict(monkeypatch, capsys, model, data, two, "--workers", "2")
    assert two.read_bytes() == one.read_bytes()


def test_predict_rejects_bad_shard_spec(tmp_path, monkeypatch, capsys, scoring_setup):
    model, data = scoring_setup
    code, _, err = run_lref(
        monkeypatch, capsys, "predict", "-m", str(model), "-d", str(data), "-o", str(tmp_path / "p.jsonl"),
        "--scheme", "graded3", "--shard", "3/3",
    )
    assert code == 2
    assert "shard spec '3/3': the index must lie in 0..2" in err
    assert not (tmp_path / "p.jsonl").exists()
