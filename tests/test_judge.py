"""`lref judge`: the committee average and flags, the review order, the writers, calibration, shards, resume, errors
and the command line, on hand-made probabilities and a lexical model trained on a few synthetic pairs."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from helpers import run_lref

from lref.data import write_records
from lref.data.records import DataError, Record, stable_id
from lref.data.synthetic import SyntheticCatalogConfig, generate_catalog
from lref.io import MANIFEST_NAME
from lref.judge import (
    JudgeConfig,
    committee_specs,
    grade,
    judge,
    judgements,
    partial_path,
    query_id,
    read_pool,
    review_order,
    select_for_review,
    write_labels,
)
from lref.labels import PRESETS, LabelError
from lref.models.zoo import ZooError
from lref.predictions import read_predictions, softmax
from lref.sharding import merge_shard_files, shard_info_path

GRADED3 = PRESETS["graded3"]
BIAS = {"Exact": 0.0, "Partial": 1.5, "Irrelevant": -0.5}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A lexical model, the same model with a label calibration (a second, different committee member) and a pool
    of 40 labelled synthetic pairs (the labels are to be ignored)."""
    from lref.baselines.lexical import LexicalConfig, LexicalModel

    root = tmp_path_factory.mktemp("judge")
    train = generate_catalog(SyntheticCatalogConfig(n_pairs=150, seed=1))
    plain = LexicalModel(LexicalConfig(classifier="logistic")).fit(train).save(root / "plain")
    calibrated = shutil.copytree(plain, root / "calibrated")
    (calibrated / "calibration.json").write_text(json.dumps({"bias": BIAS}))
    pool = generate_catalog(SyntheticCatalogConfig(n_pairs=40, seed=7))
    data = root / "pool.jsonl"
    write_records(data, pool)
    return {"plain": str(plain), "calibrated": str(calibrated), "data": data, "pool": pool}


def config(tmp_path, models, **changes) -> JudgeConfig:
    settings = dict(block_size=4, checkpoint_pairs=8, progress=False)
    return JudgeConfig(models=list(models), out=str(tmp_path / "labels.jsonl"), **{**settings, **changes})


# ------------------------------------------------------------------------------------- combining and flags
A = np.array([[0.7, 0.2, 0.1], [0.4, 0.35, 0.25], [0.1, 0.2, 0.7]])
B = np.array([[0.6, 0.3, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]])


def test_committee_average_labels_and_flags_on_hand_made_probabilities():
    rows = judgements(["p1", "p2", "p3"], GRADED3.labels, [A, B], [3, 1], min_confidence=0.5,
                      model_names=["a", "b"])
    # weights 3:1 -> 0.75 A + 0.25 B
    np.testing.assert_allclose([list(r["probs"].values()) for r in rows],
                               [[0.675, 0.225, 0.1], [0.325, 0.4625, 0.2125], [0.125, 0.2, 0.675]])
    assert [r["label"] for r in rows] == ["Exact", "Partial", "Irrelevant"]
    assert [r["confidence"] for r in rows] == pytest.approx([0.675, 0.4625, 0.675])
    assert [r["low_confidence"] for r in rows] == [False, True, False]
    assert [r["disagreement"] for r in rows] == [False, True, False]  # p2: a says Exact, b Partial
    assert rows[1]["models"] == {"a": "Exact", "b": "Partial"}
    assert rows[1]["topk"] == ["Partial", "Exact", "Irrelevant"]
    equal = judgements(["p1", "p2", "p3"], GRADED3.labels, [A, B], model_names=["a", "b"])
    assert list(equal[1]["probs"].values()) == pytest.approx([0.25, 0.575, 0.175])
    assert equal[1]["confidence"] == pytest.approx(0.575) and not equal[1]["low_confidence"]
    alone = judgements(["p1", "p2", "p3"], GRADED3.labels, [A], min_confidence=0.5)
    assert [r["disagreement"] for r in alone] == [False] * 3 and "models" not in alone[0]
    assert [r["low_confidence"] for r in alone] == [False, True, False] and alone[1]["label"] == "Exact"


def row(pair_id, probs, disagreement=False):
    probs = dict(zip(GRADED3.labels, probs))
    confidence = max(probs.values())
    return {"id": pair_id, "label": max(probs, key=probs.get), "confidence": confidence,
            "low_confidence": confidence < 0.5, "disagreement": disagreement, "probs": probs}


def test_review_order_puts_disagreement_first_then_low_confidence_then_small_margin():
    rows = [
        row("sure", [0.9, 0.05, 0.05]),
        row("split_sure", [0.8, 0.1, 0.1], disagreement=True),
        row("unsure_wide", [0.4, 0.3, 0.3]),  # margin 0.1
        row("unsure_tight", [0.4, 0.38, 0.22]),  # same confidence, margin 0.02: first of the two
        row("split_unsure", [0.45, 0.44, 0.11], disagreement=True),
        row("middling", [0.6, 0.3, 0.1]),
        row("unsure_tight_later", [0.4, 0.38, 0.22]),  # a full tie: input order
    ]
    order = [rows[i]["id"] for i in review_order(rows)]
    assert order == ["split_unsure", "split_sure", "unsure_tight", "unsure_tight_later", "unsure_wide", "middling",
                     "sure"]
    records = [Record(r["id"], f"query {i}", f"title {i}", brand="Acme" if i == 4 else None)
               for i, r in enumerate(rows)]
    picked = select_for_review(rows, records, 3)
    assert [(p["rank"], p["id"], p["reason"]) for p in picked] == [
        (1, "split_unsure", "models disagree"), (2, "split_sure", "models disagree"),
        (3, "unsure_tight", "low confidence")]
    assert picked[0]["query"] == "query 4" and picked[0]["brand"] == "Acme" and "brand" not in picked[1]


# ------------------------------------------------------------------------------------------------------ writers
def test_qrels_csv_and_jsonl_writers(tmp_path):
    records = [Record("d1", "Cordless  DRILL", "t1", meta={"query_id": "q7"}),
               Record("d2", " cordless drill ", "t2"), Record("d3", "hammer", "t3")]
    rows = judgements([r.id for r in records], GRADED3.labels, [A, B], model_names=["a", "b"])
    assert [grade(GRADED3, label) for label in GRADED3.labels] == [2, 1, 0]
    assert [grade(PRESETS["esci4"], label) for label in PRESETS["esci4"].labels] == [3, 2, 1, 0]
    drill = stable_id("cordless drill")
    assert query_id(records[0]) == "q7" and query_id(records[1]) == drill and query_id(records[2]) != drill
    assert write_labels(tmp_path / "l.qrels", rows, records, GRADED3, "qrels") == 3
    assert (tmp_path / "l.qrels").read_text() == f"q7 0 d1 2\n{drill} 0 d2 1\n{stable_id('hammer')} 0 d3 0\n"

    write_labels(tmp_path / "l.csv", rows, records, GRADED3, "csv")
    with open(tmp_path / "l.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert list(table[0]) == ["id", "query_id", "label", "grade", "confidence", "low_confidence", "disagreement",
                              "prob_Exact", "prob_Partial", "prob_Irrelevant", "label_a", "label_b"]
    assert [t["label"] for t in table] == ["Exact", "Partial", "Irrelevant"]
    assert table[1]["disagreement"] == "true" and table[1]["label_a"] == "Exact" and table[1]["grade"] == "1"
    assert float(table[1]["prob_Partial"]) == rows[1]["probs"]["Partial"]

    write_labels(tmp_path / "l.jsonl", rows, records, GRADED3, "jsonl")
    assert [json.loads(line) for line in (tmp_path / "l.jsonl").read_text().splitlines()] == rows
    predictions = read_predictions(tmp_path / "l.jsonl", GRADED3)  # a labels file is a prediction file too
    assert [p.label for p in predictions] == ["Exact", "Partial", "Irrelevant"]

    spaced = [Record("d 1", "q", "t")]
    with pytest.raises(DataError, match="doc_id 'd 1' .* whitespace"):
        write_labels(tmp_path / "bad.qrels", judgements(["d 1"], GRADED3.labels, [A[:1]]), spaced, GRADED3, "qrels")
    assert not (tmp_path / "bad.qrels").exists()


# -------------------------------------------------------------------------------------------- judging models
def test_each_models_calibration_is_applied_and_the_committee_averages_them(tmp_path, setup):
    from lref.baselines.lexical import LexicalModel

    report = judge(config(tmp_path, [setup["plain"], setup["calibrated"]], weights=[1.0, 3.0]), setup["pool"])
    rows = [json.loads(line) for line in (tmp_path / "labels.jsonl").read_text().splitlines()]
    raw = LexicalModel.load(setup["plain"]).score(setup["pool"]).logits.astype(np.float64)
    plain, shifted = softmax(raw), softmax(raw + np.array(list(BIAS.values())))
    expected = 0.25 * plain + 0.75 * shifted
    np.testing.assert_allclose([list(r["probs"].values()) for r in rows], expected, atol=1e-6)
    own = {setup["plain"]: plain.argmax(1), setup["calibrated"]: shifted.argmax(1)}
    assert [r["models"] for r in rows] == [
        {name: GRADED3.labels[own[name][i]] for name in own} for i in range(len(rows))]
    disagreements = int((plain.argmax(1) != shifted.argmax(1)).sum())
    assert disagreements > 0 and report.disagreements == disagreements
    assert report.low_confidence == int((expected.max(1) < 0.5).sum())
    assert [r["id"] for r in rows] == [r.id for r in setup["pool"]]
    cost = json.loads(report.cost_file.read_text())
    assert cost["pairs"] == 40 and [m["pairs_scored"] for m in cost["models"]] == [40, 40]
    assert cost["cpu_s_per_1000_pairs"] > 0 and cost["machine"]["logical_cpus"] >= 1
    assert not partial_path(tmp_path / "labels.jsonl").exists()


def test_sharded_and_merged_equals_unsharded(tmp_path, setup):
    models = [setup["plain"], setup["calibrated"]]
    judge(config(tmp_path, models), setup["pool"])
    whole = (tmp_path / "labels.jsonl").read_bytes()
    parts = []
    for i in range(3):
        part = config(tmp_path, models, shard=f"{i}/3")
        part.out = str(tmp_path / f"labels.{i}.jsonl")
        judge(part, setup["pool"])
        assert shard_info_path(part.out).is_file()
        parts.append(part.out)
    # 40 pairs in blocks of 4: shard 0 holds blocks 0, 3, 6, 9
    assert [len(open(p).read().splitlines()) for p in parts] == [16, 12, 12]
    merge_shard_files(parts, tmp_path / "merged.jsonl")
    assert (tmp_path / "merged.jsonl").read_bytes() == whole


class Killed(Exception):
    pass


def test_a_killed_run_resumes_from_its_partial_file_and_equals_an_uninterrupted_one(tmp_path, setup, monkeypatch):
    from lref.sharding import ScoringWorker

    models = [setup["plain"], setup["calibrated"]]
    reference = tmp_path / "reference"
    judge(config(reference, models, budget=5), setup["pool"])

    real_score, calls = ScoringWorker.score, []

    def dies_on_the_seventh_chunk(block):
        calls.append(1)
        if len(calls) == 13:  # blocks of 4, chunks of 8: 5 chunks for the first model, then the second's second
            raise Killed
        return real_score(block)

    monkeypatch.setattr(ScoringWorker, "score", dies_on_the_seventh_chunk)
    with pytest.raises(Killed):
        judge(config(tmp_path, models, budget=5), setup["pool"])
    partial = partial_path(tmp_path / "labels.jsonl")
    assert len(partial.read_text().splitlines()) == 1 + 6 and not (tmp_path / "labels.jsonl").exists()
    with open(partial, "a") as handle:
        handle.write('{"model": 1, "start": 8, "logits": [[0.1, ')  # torn by the kill
    monkeypatch.setattr(ScoringWorker, "score", real_score)
    report = judge(config(tmp_path, models, budget=5), setup["pool"])
    assert report.notes == [f"resuming from {partial}: 48 pair scores kept"]
    assert [(m["resumed_pairs"], m["pairs_scored"]) for m in report.cost["models"]] == [(40, 0), (8, 32)]
    for name in ("labels.jsonl", "labels.review.jsonl"):
        assert (tmp_path / name).read_bytes() == (reference / name).read_bytes()
    assert not partial.exists()

    # a partial file from other settings (another block size) is not trusted
    monkeypatch.setattr(ScoringWorker, "score", dies_on_the_seventh_chunk)
    calls.clear()
    with pytest.raises(Killed):
        judge(config(tmp_path, models), setup["pool"])
    monkeypatch.setattr(ScoringWorker, "score", real_score)
    other = config(tmp_path, models)
    other.block_size = 8
    report = judge(other, setup["pool"])
    assert "comes from another run" in report.notes[0]
    assert [m["resumed_pairs"] for m in report.cost["models"]] == [0, 0]


def test_workers_stay_up_across_checkpoints_and_equal_one_worker(tmp_path, setup, monkeypatch):
    """Two worker processes, 10 chunks per model: one pool per model (not per chunk), the same bytes as one worker."""
    from lref.sharding import ScoringPool

    models = [setup["plain"], setup["calibrated"]]
    judge(config(tmp_path / "one", models, budget=5), setup["pool"])
    real_enter, pools = ScoringPool.__enter__, []

    def counted(pool):
        pools.append(pool.workers)
        return real_enter(pool)

    monkeypatch.setattr(ScoringPool, "__enter__", counted)
    report = judge(config(tmp_path / "two", models, budget=5, workers=2, checkpoint_pairs=2), setup["pool"])
    assert pools == [2, 2]
    assert [m["pairs_scored"] for m in report.cost["models"]] == [40, 40]
    for name in ("labels.jsonl", "labels.review.jsonl"):
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes()


# ------------------------------------------------------------------------------------------------------ errors
def test_errors_and_the_budget_clip(tmp_path, setup):
    esci = tmp_path / "esci_model"
    esci.mkdir()
    (esci / MANIFEST_NAME).write_text(json.dumps({"kind": "lexical", "scheme": {"name": "esci4"}}))
    with pytest.raises(LabelError, match=r"schemes differ: .*plain labels in 'graded3' .*esci_model in 'esci4'"):
        committee_specs(config(tmp_path, [setup["plain"], str(esci)]))
    with pytest.raises(ZooError, match="neither a zoo name nor a local folder"):
        committee_specs(config(tmp_path, [str(tmp_path / "missing")]))
    with pytest.raises(DataError, match="no pairs to judge"):
        judge(config(tmp_path, [setup["plain"]]), [])
    for bad, message in [({"weights": [1.0]}, "1 weights for 2 models"), ({"weights": [0.0, 0.0]}, "not all 0"),
                         ({"output_format": "xml"}, "output_format must be"), ({"budget": -1}, "budget must be"),
                         ({"shard": "0/2", "output_format": "qrels"}, "--shard writes JSONL"),
                         ({"shard": "2/2"}, "index must lie in 0..1")]:
        with pytest.raises(ValueError, match=message):
            config(tmp_path, [setup["plain"], setup["calibrated"]], **bad)
    with pytest.raises(ValueError, match="named twice"):
        config(tmp_path, [setup["plain"], setup["plain"]])

    report = judge(config(tmp_path, [setup["plain"]], budget=100), setup["pool"][:6])
    assert report.notes == ["--budget 100 is more than the 6 pairs judged: all 6 go to review"]
    assert report.reviewed == 6 and len(report.review.read_text().splitlines()) == 6


def test_a_label_column_in_another_scheme_is_ignored(tmp_path):
    path = tmp_path / "pool.jsonl"
    path.write_text("".join(json.dumps({"id": f"p{i}", "query": "drill", "title": "dewalt drill", "label": label})
                            + "\n" for i, label in enumerate(["Substitute", "Complement"])))
    records = read_pool(path, "auto", "graded3")
    assert [(r.id, r.label) for r in records] == [("p0", None), ("p1", None)]
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="empty.jsonl: no pairs to judge"):
        read_pool(tmp_path / "empty.jsonl")


# ------------------------------------------------------------------------------------------ the command line
def test_cli_judges_with_an_llm_and_lexical_committee_end_to_end(tmp_path, setup, monkeypatch, capsys):
    from lref.testing import build_tiny_causal_lm

    llm = build_tiny_causal_lm(tmp_path / "llm", embedding_scale=10)
    out = tmp_path / "labels.jsonl"
    code, _, err = run_lref(monkeypatch, capsys, "judge", "-m", str(llm), "-m", setup["plain"], "-d",
                            str(setup["data"]), "-o", str(out), "--budget", "5", "--batch-size", "8",
                            "--min-confidence", "0.6", "--block-size", "16")
    assert code == 0, err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 40 and all(set(r["models"]) == {str(llm), setup["plain"]} for r in rows)
    assert all(r["low_confidence"] == (r["confidence"] < 0.6) for r in rows)
    low, split = sum(r["low_confidence"] for r in rows), sum(r["disagreement"] for r in rows)
    assert f"judged 40 pairs (graded3, 2 models): {low} low-confidence, {split} disagreements" in err
    review = [json.loads(line) for line in (tmp_path / "labels.review.jsonl").read_text().splitlines()]
    assert [r["id"] for r in review] == [rows[i]["id"] for i in review_order(rows)[:5]]
    cost = json.loads((tmp_path / "labels.cost.json").read_text())
    assert [m["kind"] for m in cost["models"]] == ["llm", "lexical"] and cost["pairs"] == 40
    assert "cost: 40 pairs in" in err and "CPU-s per 1,000 pairs" in err

    code, _, err = run_lref(monkeypatch, capsys, "judge", "-m", setup["plain"], "-d", str(setup["data"]), "-o",
                            str(tmp_path / "labels.qrels"), "--weight", "1", "--weight", "2")
    assert code == 2 and "2 weights for 1 models" in err
