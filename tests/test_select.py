"""Stage 1 data selection: bands, confusion, the rule, out-of-fold scoring, the funnel report, the flagged pairs,
the cleanlab method, checkpoint reuse, bad input, both real backbones on tiny models, the cross-encoder module and
`lref select`."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

from lref.data import load_records  # noqa: E402
from lref.data.records import Record  # noqa: E402
from lref.data.synthetic import SyntheticCatalogConfig, generate_catalog  # noqa: E402
from lref.labels import get_scheme  # noqa: E402
from lref.models.scorer import ScoreResult  # noqa: E402
from lref.prompts import MATCH_HINT  # noqa: E402
from lref.stages.select import (  # noqa: E402
    FLAGGED_NAME,
    REPORT_NAME,
    SCORES_NAME,
    SELECTED_NAME,
    SelectConfig,
    SelectionError,
    apply_rule,
    balanced_sample,
    clean_mask,
    confident_learning_flags,
    confusion_map,
    fill_to_fraction,
    floor_labels,
    make_folds,
    noise_audit,
    ordinal_neighbour,
    query_bands,
    select,
)

SCHEME = get_scheme("graded3")
E, P, I = SCHEME.labels


@pytest.fixture(scope="module")
def pool() -> list[Record]:
    return generate_catalog(SyntheticCatalogConfig(n_pairs=600, label_noise=0.15, seed=3))


class FakeBackbone:
    """Trains nothing: remembers each model's training ids and answers with `predict(role, record, trained_label)`,
    logging every (model, scored id) so tests can check who scored what."""

    name = "fake"

    def __init__(self, predict):
        self.predict = predict
        self.fits: list[Path] = []
        self.scored: list[tuple[Path, set[str], list[str]]] = []

    def settings(self):
        return {"backbone": "fake"}

    def fit(self, records, out_dir, seed):
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "trained.json").write_text(json.dumps({r.id: r.label for r in records}))
        self.fits.append(out_dir)
        return out_dir

    def score(self, model_dir, records):
        trained = json.loads((Path(model_dir) / "trained.json").read_text())
        role = Path(model_dir).parent.name
        self.scored.append((Path(model_dir), set(trained), [r.id for r in records]))
        logits = np.full((len(records), len(SCHEME)), -5.0)
        for row, record in enumerate(records):
            logits[row, SCHEME.index(self.predict(role, record, trained))] = 5.0
        return ScoreResult([r.id for r in records], SCHEME.labels, logits)


def truthful(role, record, trained):
    """IM and CI answer the true label; MS answers the label confusable with the true one (neighbour)."""
    true = record.meta["true_label"]
    return ordinal_neighbour(SCHEME)[true] if role == "ms" else true


def small_config(tmp_path, **overrides) -> SelectConfig:
    settings = dict(output_dir=str(tmp_path / "select"), im_sample=120, ci_sample=90, ms_sample=120,
                    confusion_slice=100, progress=False, examples=2)
    settings.update(overrides)
    return SelectConfig(**settings)


# -- pure parts -------------------------------------------------------------------------------------------------------


def test_apply_rule_each_condition_and_switches():
    labels = [E, E, P, I]
    preds = {"ci": [E, P, P, I], "im": [P, E, E, I], "ms": [P, P, P, I]}
    passes, kept = apply_rule(labels, preds)
    assert passes["ci"].tolist() == [True, False, True, True]
    assert passes["im"].tolist() == [True, False, True, False]
    assert passes["ms"].tolist() == [True, True, False, False]
    assert kept.tolist() == [True, False, False, False]
    _, kept_agrees = apply_rule(labels, preds, ms_rule="agrees")
    assert kept_agrees.tolist() == [False, False, True, False]
    passes, kept = apply_rule(labels, {"ci": preds["ci"]}, use_im=False, use_ms=False)
    assert set(passes) == {"ci"} and kept.tolist() == [True, False, True, True]


def test_query_bands_match_the_synthetic_catalog_and_fall_back_to_query_frequency(pool):
    bands, source = query_bands(pool)
    assert source == "exposure"
    assert bands == [r.meta["query_band"] for r in pool]
    records = [Record(id=f"{q}{i}", query=q, title="t", label=E) for q, n in (("a", 10), ("B ", 6), ("c", 4))
               for i in range(n)]
    records.append(Record(id="b-upper", query="b", title="t", label=E))  # same normalised query as "B "
    bands, source = query_bands(records, head_share=0.2, torso_share=0.4)
    assert source == "query_frequency"
    assert dict(zip((r.query for r in records), bands)) == {"a": "head", "B ": "torso", "b": "torso", "c": "tail"}


def test_confusion_map_takes_the_most_frequent_error_and_falls_back_to_the_neighbour():
    gold = [E, E, E, E, P, P, I, I]
    pred = [P, I, I, E, E, P, I, I]  # Exact mostly confused with Irrelevant; Irrelevant never wrong
    mapping, fallbacks, counts = confusion_map(gold, pred, SCHEME)
    assert mapping == {E: I, P: E, I: P}
    assert fallbacks == [I] and counts[E][I] == 2
    assert ordinal_neighbour(SCHEME) == {E: P, P: I, I: P}


def test_balanced_sample_and_folds():
    import random

    bands = ["head"] * 10 + ["torso"] * 10 + ["tail"] * 5
    chosen = balanced_sample(bands, 13, random.Random(0))
    assert [bands[i] for i in chosen].count("tail") == 4 and [bands[i] for i in chosen].count("head") == 5
    with pytest.raises(SelectionError, match="tail pairs but the pool has only 5"):
        balanced_sample(bands, 18, random.Random(0))
    repeated = balanced_sample(bands, 18, random.Random(0), oversample=True)
    tail = [i for i in repeated if bands[i] == "tail"]
    assert len(tail) == 6 and set(tail) == set(range(20, 25))  # all five tail pairs, one of them twice
    with pytest.raises(SelectionError, match="0 torso|only 0"):
        balanced_sample(["head"] * 6 + ["tail"] * 6, 6, random.Random(0), oversample=True)
    folds = make_folds(range(11), 3, random.Random(0))
    assert sorted(i for fold in folds for i in fold) == list(range(11)) and {len(f) for f in folds} == {3, 4}


def test_label_floor_adds_the_hardest_pairs_of_a_dropped_label():
    labels = ["Exact"] * 4 + ["Partial"] * 4 + ["Irrelevant"] * 2
    kept = np.array([True, True, True, False, False, False, False, False, True, True])  # no Partial kept
    clean = np.array([True] * 4 + [False, True, True, True] + [True, True])
    im_probs = np.full((10, 3), 1 / 3)
    im_probs[5:8, 1] = [0.9, 0.2, 0.5]  # IM's probability of Partial: pair 6 is hardest, then 7
    # ceil(0.4 * 5) = 2 per label: Exact (3) and Irrelevant (2) have enough; Partial gets its 2 hardest clean pairs
    assert floor_labels(labels, kept, 0.4, clean, im_probs, SCHEME).nonzero()[0].tolist() == [6, 7]
    # ceil(0.7 * 5) = 4: all four Partial pairs, the one not clean last; one more Exact and two more Irrelevant
    # are wanted, but only one Exact pair is left and no Irrelevant one
    assert floor_labels(labels, kept, 0.7, clean, im_probs, SCHEME).nonzero()[0].tolist() == [3, 4, 5, 6, 7]
    assert not floor_labels(labels, kept, 0.0, clean, im_probs, SCHEME).any()
    assert not floor_labels(labels, np.zeros(10, dtype=bool), 0.4, clean, im_probs, SCHEME).any()
    with pytest.raises(ValueError, match="label_floor must lie in"):
        SelectConfig(label_floor=1.0)


def test_fill_to_fraction_adds_the_hardest_pairs_in_the_pool_label_mix():
    labels = ["Exact"] * 10 + ["Partial"] * 8 + ["Irrelevant"] * 2
    kept = np.zeros(20, dtype=bool)
    kept[[0, 1, 2, 3, 10]] = True  # 4 Exact, 1 Partial: Exact-heavy against a pool of 50/40/10 %
    clean = np.ones(20, dtype=bool)
    clean[11] = False
    im_probs = np.full((20, 3), 1 / 3)
    im_probs[11:18, 1] = [0.1, 0.9, 0.8, 0.2, 0.7, 0.6, 0.5]  # IM's probability of Partial
    # Target round(0.5 * 20) = 10: Exact 5 (has 4, +1), Partial 4 (has 1, +3 hardest clean pairs: 14, 17, 16; pair 11
    # has the lowest probability but is not clean), Irrelevant 1 (+1)
    added = fill_to_fraction(labels, kept, 0.5, clean, im_probs, SCHEME)
    assert added.nonzero()[0].tolist() == [4, 14, 16, 17, 18]
    # already at the target: nothing
    assert not fill_to_fraction(labels, kept, 0.25, clean, im_probs, SCHEME).any()
    assert not fill_to_fraction(labels, kept, 0.0, clean, im_probs, SCHEME).any()
    # target 6: Exact (4 against a share of 3) keeps its extra pairs; Partial gets 1, Irrelevant 1
    assert fill_to_fraction(labels, kept, 0.3, clean, im_probs, SCHEME).nonzero()[0].tolist() == [14, 18]
    with pytest.raises(ValueError, match="min_fraction must lie in"):
        SelectConfig(min_fraction=1.0)
    # clean = passes CI and MS, over the conditions that ran
    passes = {"ci": np.array([True, True, False]), "im": np.array([True, False, False]),
              "ms": np.array([True, False, True])}
    assert clean_mask(passes, 3).tolist() == [True, False, False]
    assert clean_mask({"im": passes["im"]}, 3).tolist() == [True, True, True]


def test_noise_audit_precision_and_recall():
    audit = noise_audit([True, True, False, False, True], np.array([True, False, True, False, True]))
    assert audit["precision"] == pytest.approx(2 / 3, abs=1e-4) and audit["recall"] == pytest.approx(2 / 3, abs=1e-4)


# -- the stage with a fake backbone -----------------------------------------------------------------------------------


def test_each_condition_reads_its_own_selector(tmp_path, pool):
    """IM = CI = the true label, MS = its neighbour: CI passes the clean pairs, IM the noisy ones, so the rule keeps
    nothing; the per-pair scores file shows which selector fed which condition."""
    with pytest.raises(SelectionError, match="kept nothing"):
        select(small_config(tmp_path), pool, backbone=FakeBackbone(truthful))
    neighbour = ordinal_neighbour(SCHEME)
    rows = [json.loads(line) for line in (tmp_path / "select" / SCORES_NAME).read_text().splitlines()]
    noisy = [r.meta["label_noise"] for r in pool]
    assert [row["id"] for row in rows] == [r.id for r in pool]
    assert [row["pass_ci"] for row in rows] == [not n for n in noisy]
    assert [row["pass_im"] for row in rows] == noisy
    assert [row["pass_ms"] for row in rows] == [r.label != neighbour[r.meta["true_label"]] for r in pool]
    report = json.loads((tmp_path / "select" / REPORT_NAME).read_text())
    assert report["selected"] == 0 and 0 < report["noise_audit"]["recall"] < 1.0


def test_select_writes_selected_pairs_report_and_scores(tmp_path, pool):
    def predict(role, record, trained):
        true = record.meta["true_label"]
        if role == "ci":
            return record.label  # CI fits every human label
        if role == "im":
            return E  # IM always says Exact: the non-Exact pairs are "not easy"
        return ordinal_neighbour(SCHEME)[true]

    result = select(small_config(tmp_path), pool, backbone=FakeBackbone(predict))
    out = tmp_path / "select"
    expected = [r.id for r in pool if r.label != E and r.label != ordinal_neighbour(SCHEME)[r.meta["true_label"]]]
    assert [r.id for r in result.selected] == expected and expected
    assert [r.id for r in load_records(out / SELECTED_NAME)] == expected
    report = json.loads((out / REPORT_NAME).read_text())
    assert report["pool_size"] == len(pool) and report["selected"] == len(expected)
    assert [step["remaining"] for step in report["funnel"]] == [
        len(pool), len(pool), sum(r.label != E for r in pool), len(expected)]
    assert report["label_distribution"]["selected"][E]["count"] == 0
    assert sum(c["count"] for c in report["band_mix"]["selected"].values()) == len(expected)
    assert report["band_source"] == "exposure" and report["samples"] == {"im": 120, "ci": 90, "ms": 120}
    for name in ("ci", "im", "ms"):
        assert len(report["examples"][name]["kept"]) == 2
    assert all(example["label"] == E for example in report["examples"]["im"]["dropped"])
    noise_rate = np.mean([r.meta["label_noise"] for r in pool])
    assert report["noise_audit"]["noise_rate"] == pytest.approx(noise_rate, abs=1e-3)
    rows = [json.loads(line) for line in (out / SCORES_NAME).read_text().splitlines()]
    assert len(rows) == len(pool) and sum(row["kept"] for row in rows) == len(expected)


def test_label_floor_restores_a_grade_the_rule_dropped(tmp_path, pool):
    def predict(role, record, trained):
        return record.label if role == "ci" else E  # the rule keeps no Exact pair

    result = select(small_config(tmp_path, use_ms=False, label_floor=0.1), pool, backbone=FakeBackbone(predict))
    by_rule = sum(r.label != E for r in pool)
    floor = math.ceil(0.1 * by_rule)
    assert sum(r.label == E for r in result.selected) == floor and len(result.selected) == by_rule + floor
    report = result.report
    assert report["label_floor"] == {"floor": 0.1, "added": {E: floor}}
    assert report["funnel"][-1] == {"step": "+ label floor 0.1", "remaining": by_rule + floor}
    assert report["label_distribution"]["selected"][E]["count"] == floor
    rows = [json.loads(line) for line in (tmp_path / "select" / SCORES_NAME).read_text().splitlines()]
    added = [row for row in rows if row["added_by_floor"]]
    assert len(added) == floor and all(row["kept"] and row["label"] == E for row in added)
    assert report["min_fraction"] == {"fraction": 0.0, "added": {}} and not any(row["added_by_fill"] for row in rows)


def test_min_fraction_fills_the_selection_to_a_share_of_the_pool(tmp_path, pool):
    def predict(role, record, trained):
        return record.label if role == "ci" else E  # the rule keeps no Exact pair

    result = select(small_config(tmp_path, use_ms=False, min_fraction=0.8), pool, backbone=FakeBackbone(predict))
    by_rule = sum(r.label != E for r in pool)
    target = round(0.8 * len(pool))
    exact_share = round(target * sum(r.label == E for r in pool) / len(pool))
    assert by_rule < target
    assert sum(r.label == E for r in result.selected) == exact_share  # Exact filled to its pool share
    report = result.report
    assert report["funnel"][-2]["remaining"] == by_rule
    assert report["funnel"][-1] == {"step": "+ fill to 0.8 of the pool", "remaining": len(result.selected)}
    assert report["min_fraction"]["added"].get(E) == exact_share
    rows = [json.loads(line) for line in (tmp_path / "select" / SCORES_NAME).read_text().splitlines()]
    assert sum(row["added_by_fill"] for row in rows) == len(result.selected) - by_rule


def test_out_of_fold_no_model_scores_its_own_training_pairs(tmp_path, pool):
    backbone = FakeBackbone(truthful)
    with pytest.raises(SelectionError):
        select(small_config(tmp_path, folds=3, ci_sample=120), pool, backbone=backbone)
    assert len(backbone.fits) == 9  # 3 roles x 3 folds
    scored_ids = set()
    for model_dir, trained, scored in backbone.scored:
        assert not trained & set(scored), model_dir
        scored_ids |= set(scored)
    assert scored_ids == {r.id for r in pool}
    ci_train = [json.loads((d / "trained.json").read_text()) for d in backbone.fits if d.parent.name == "ci"]
    # 40 head pairs wanted, 30 exist: repeats of a pair share its id and its fold, so the 3 models (2/3 of the
    # sample each) hold fewer distinct ids than 2 x 120
    assert len(ci_train) == 3 and sum(len(t) for t in ci_train) < 2 * 120
    # folds=1 is the in-sample reading: the one model scores its own training pairs too
    backbone = FakeBackbone(truthful)
    with pytest.raises(SelectionError):
        select(small_config(tmp_path / "one", folds=1), pool, backbone=backbone)
    assert all(trained <= set(scored) for _, trained, scored in backbone.scored)


def test_ms_is_trained_on_confusable_labels(tmp_path, pool):
    backbone = FakeBackbone(truthful)
    with pytest.raises(SelectionError):
        select(small_config(tmp_path, confusion_source="neighbour", folds=1), pool, backbone=backbone)
    ms_dir = next(d for d in backbone.fits if d.parent.name == "ms")
    trained = json.loads((ms_dir / "trained.json").read_text())
    gold = {r.id: r.label for r in pool}
    assert trained and all(label == ordinal_neighbour(SCHEME)[gold[i]] for i, label in trained.items())


def test_empty_selection_explains_the_condition_and_writes_no_training_set(tmp_path, pool):
    stale = tmp_path / "select" / SELECTED_NAME
    stale.parent.mkdir(parents=True)
    stale.write_text("{}\n")
    easy = FakeBackbone(lambda role, record, trained: record.label if role != "ms" else E)
    with pytest.raises(SelectionError, match=r"kept nothing.*IM\(x\) ≠ L\(x\) removed the last pairs"):
        select(small_config(tmp_path, confusion_source="neighbour"), pool, backbone=easy)
    assert not stale.exists() and (tmp_path / "select" / REPORT_NAME).is_file()


def test_selectors_are_reused_on_rerun_and_retrained_when_their_inputs_change(tmp_path, pool):
    backbone = FakeBackbone(truthful)
    config = small_config(tmp_path, use_ci=False, confusion_source="neighbour", ms_rule="agrees")
    select(config, pool, backbone=backbone)
    assert len(backbone.fits) == 4
    select(small_config(tmp_path, use_ci=False, confusion_source="neighbour", ms_rule="agrees"), pool,
           backbone=backbone)
    assert len(backbone.fits) == 4 and len(backbone.scored) == 4  # scores came from the cache
    select(small_config(tmp_path, use_ci=False, confusion_source="neighbour", ms_rule="agrees", seed=1), pool,
           backbone=backbone)
    assert len(backbone.fits) == 8


def test_bad_input_gets_clear_errors(tmp_path, pool):
    backbone = FakeBackbone(truthful)
    with pytest.raises(SelectionError, match="IM sample needs 5000 pairs but the pool has only 600"):
        select(small_config(tmp_path, im_sample=5000), pool, backbone=backbone)
    no_partial = [r for r in pool if r.label != P]
    with pytest.raises(SelectionError, match="'Partial' of scheme 'graded3' has no pair in the pool"):
        select(small_config(tmp_path), no_partial, backbone=backbone)
    with pytest.raises(SelectionError, match="confusion source 'teacher' is not configured"):
        select(small_config(tmp_path, confusion_source="teacher"), pool, backbone=backbone)
    with pytest.raises(SelectionError, match="confusion slice needs 590 pairs"):
        select(small_config(tmp_path, confusion_slice=590), pool, backbone=backbone)
    with pytest.raises(ValueError, match="ms_rule must be one of"):
        SelectConfig(ms_rule="maybe")


def test_teacher_hook_supplies_confusable_labels_and_is_checked(tmp_path, pool):
    calls = []

    def teacher(records, scheme):
        calls.append(len(records))
        return [I if r.label != I else P for r in records]

    backbone = FakeBackbone(truthful)
    with pytest.raises(SelectionError, match="kept nothing"):
        select(small_config(tmp_path, confusion_source="teacher"), pool, backbone=backbone, teacher=teacher)
    report = json.loads((tmp_path / "select" / REPORT_NAME).read_text())
    assert calls == [120] and set(report["confusion"]["teacher_pairs"]) <= {"Exact -> Irrelevant",
                                                                          "Partial -> Irrelevant",
                                                                          "Irrelevant -> Partial"}
    with pytest.raises(SelectionError, match="named the pair's own label"):
        select(small_config(tmp_path, confusion_source="teacher"), pool, backbone=backbone,
               teacher=lambda records, scheme: [r.label for r in records])


# -- flagged pairs and the cleanlab method ----------------------------------------------------------------------------


def test_confident_learning_flags_an_obviously_flipped_label():
    """30 pairs whose out-of-sample model is sure of their label; one is relabelled against it: cleanlab flags that
    pair alone, and nothing when no label is flipped."""
    true = [E, P, I] * 10
    probs = np.array([[0.9 if label == name else 0.05 for name in SCHEME.labels] for label in true])
    given = list(true)
    given[4] = I  # the model gives Partial 0.9, Irrelevant 0.05
    assert np.flatnonzero(confident_learning_flags(given, probs, SCHEME)).tolist() == [4]
    assert not confident_learning_flags(true, probs, SCHEME).any()
    with pytest.raises(ValueError, match=r"expected \(30, 3\)"):
        confident_learning_flags(given, probs[:, :2], SCHEME)


def test_ms_method_is_validated_and_defaults_to_the_supervisor():
    assert SelectConfig().ms_method == "supervisor"
    with pytest.raises(ValueError, match="ms_method must be one of supervisor, cleanlab, not 'oracle'"):
        SelectConfig(ms_method="oracle")


def test_flagged_jsonl_holds_the_pairs_ms_flags_even_when_nothing_is_kept(tmp_path, pool):
    """MS names each pair's neighbour of the true label; a pair whose human label is that neighbour fails
    MS(x) ≠ L(x) and is flagged, in pool order, with its gold label and meta kept and MS's answer added."""
    out = tmp_path / "select"
    with pytest.raises(SelectionError, match="kept nothing"):
        select(small_config(tmp_path), pool, backbone=FakeBackbone(truthful))
    neighbour = ordinal_neighbour(SCHEME)
    expected = [r for r in pool if r.label == neighbour[r.meta["true_label"]]]
    flagged = load_records(out / FLAGGED_NAME)
    assert expected and [r.id for r in flagged] == [r.id for r in expected]
    for record, original in zip(flagged, expected):
        assert (record.label, record.query, record.title) == (original.label, original.query, original.title)
        assert record.meta == {**original.meta, "ms_label": original.label, "flagged_by": "mislabeled_supervisor"}
    rows = [json.loads(line) for line in (out / SCORES_NAME).read_text().splitlines()]
    assert [row["id"] for row in rows if not row["pass_ms"]] == [r.id for r in expected]
    assert json.loads((out / REPORT_NAME).read_text())["flagged"] == len(expected)

    # the 'agrees' reading flags the pairs whose label MS does not name; ms_label is MS's other answer
    with pytest.raises(SelectionError):
        select(small_config(tmp_path, ms_rule="agrees"), pool, backbone=FakeBackbone(truthful))
    flagged = load_records(out / FLAGGED_NAME)
    assert [r.id for r in flagged] == [r.id for r in pool if r.label != neighbour[r.meta["true_label"]]]
    assert all(r.meta["ms_label"] == neighbour[r.meta["true_label"]] != r.label for r in flagged)

    # MS off: the file is still written, empty, replacing the last run's
    with pytest.raises(SelectionError):
        select(small_config(tmp_path, use_ms=False), pool, backbone=FakeBackbone(truthful))
    assert (out / FLAGGED_NAME).read_text() == "" and load_records(out / FLAGGED_NAME) == []


def test_cleanlab_method_flags_the_flipped_labels_and_trains_no_ms(tmp_path, pool):
    """IM answers the true label with confidence: confident learning on its out-of-fold probabilities flags
    exactly the pairs whose human label was replaced, and no MS model is trained."""

    def predict(role, record, trained):
        return record.meta["true_label"] if role == "im" else record.label  # CI fits every human label

    backbone = FakeBackbone(predict)
    result = select(small_config(tmp_path, ms_method="cleanlab", use_im=False), pool, backbone=backbone)
    noisy = [r for r in pool if r.label != r.meta["true_label"]]
    assert noisy and [r.id for r in result.flagged] == [r.id for r in noisy]
    assert all(r.meta["ms_label"] == r.meta["true_label"] and r.meta["flagged_by"] == "cleanlab"
               for r in result.flagged)
    assert [r.id for r in result.selected] == [r.id for r in pool if r.label == r.meta["true_label"]]
    assert [r.id for r in load_records(tmp_path / "select" / FLAGGED_NAME)] == [r.id for r in noisy]
    assert {d.parent.name for d in backbone.fits} == {"im", "ci"}  # IM trained for cleanlab alone, no MS
    report = result.report
    assert report["ms_method"] == "cleanlab" and report["conditions"]["ms"]["rule"] == "cleanlab keeps L(x)"
    assert report["confusion"]["probs"] == "im" and report["confusion"]["out_of_sample"] is True
    assert report["noise_audit"]["precision"] == 1.0 and report["noise_audit"]["recall"] == 1.0
    assert result.probs["im"].shape == (len(pool), 3) and "ms" not in result.probs


def test_pipeline_select_runner_copies_the_flagged_pairs(tmp_path, pool, monkeypatch):
    import lref.stages.select as select_module
    from lref.pipeline.runners import RUNNERS, StageContext

    monkeypatch.setattr(select_module, "make_backbone", lambda config: FakeBackbone(truthful))
    config = small_config(tmp_path, use_im=False)  # CI passes the clean pairs, MS flags those labelled its answer
    stage_dir = tmp_path / "stage"
    stage_dir.mkdir()
    outputs = RUNNERS["select"](StageContext("select", config, None, stage_dir, pool, {}, False))["outputs"]
    copied = load_records(outputs["flagged"])
    assert Path(outputs["flagged"]) == stage_dir / FLAGGED_NAME and outputs["flagged_pairs"] == len(copied) > 0
    assert copied == load_records(tmp_path / "select" / FLAGGED_NAME)
    neighbour = ordinal_neighbour(SCHEME)
    assert [r.id for r in copied] == [r.id for r in pool if r.label == neighbour[r.meta["true_label"]]]
    assert load_records(outputs["records"]) == load_records(tmp_path / "select" / SELECTED_NAME)


# -- real backbones on tiny models ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory):
    from lref.testing import build_tiny_encoder

    torch.set_num_threads(1)
    return build_tiny_encoder(tmp_path_factory.mktemp("encoder"))


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    from lref.testing import build_tiny_causal_lm

    folder = build_tiny_causal_lm(tmp_path_factory.mktemp("lm"))
    model = AutoModelForCausalLM.from_pretrained(str(folder))
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(10.0)  # as in test_sft: lets the tiny model learn
    model.save_pretrained(str(folder))
    return folder


def separable(n: int) -> list[Record]:
    words = {E: "drill", P: "hose", I: "fan"}
    return [Record(id=f"s{i}", query=f"{words[SCHEME.labels[i % 3]]} {i}", title="white steel pack",
                   label=SCHEME.labels[i % 3]) for i in range(n)]


def test_cross_encoder_learns_saves_manifest_and_scores(tmp_path, tiny_encoder):
    from lref.fingerprint import data_hash
    from lref.models.cross_encoder import CrossEncoderScorer
    from lref.models.loading import MANIFEST_NAME
    from lref.training.cross_encoder import CrossEncoderConfig, train_cross_encoder

    records = separable(24)
    config = CrossEncoderConfig(model=str(tiny_encoder), output_dir=str(tmp_path / "ce"), learning_rate=5e-3,
                                max_steps=40, batch_size=8, warmup_ratio=0.0, progress=False, threads=1)
    before = CrossEncoderScorer.from_pretrained(train_cross_encoder(
        CrossEncoderConfig(**{**config.__dict__, "output_dir": str(tmp_path / "ce0"), "max_steps": 1,
                              "learning_rate": 1e-9}), records)).score(records)
    folder = train_cross_encoder(config, records)
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    assert manifest["kind"] == "cross-encoder" and manifest["scheme"]["labels"] == list(SCHEME.labels)
    assert manifest["data_hash"] == data_hash(records) and manifest["n_train"] == 24
    result = CrossEncoderScorer.from_pretrained(folder).score(records)
    assert result.probs.shape == (24, 3) and np.allclose(result.probs.sum(axis=1), 1.0)
    accuracy = np.mean([p == r.label for p, r in zip(result.predicted, records)])
    assert accuracy > np.mean([p == r.label for p, r in zip(before.predicted, records)]) and accuracy >= 0.6
    assert [list(row) for row in result.topk_indices][:1] and result.ids == [r.id for r in records]


def test_cross_encoder_loss_is_pluggable_and_receives_targets(tmp_path, tiny_encoder):
    from lref.training.cross_encoder import CrossEncoderConfig, train_cross_encoder
    from lref.training.losses import label_loss

    seen = []

    def loss_fn(logits, batch):
        seen.append(batch["targets"].shape)
        return label_loss(logits, batch)

    records = separable(6)
    targets = np.full((6, 3), 1 / 3)
    config = CrossEncoderConfig(model=str(tiny_encoder), output_dir=str(tmp_path / "ce"), max_steps=2, batch_size=3,
                                progress=False, threads=1)
    train_cross_encoder(config, records, targets=targets, loss_fn=loss_fn)
    assert seen and seen[0] == (3, 3)
    with pytest.raises(ValueError, match="targets must be 6 x 3"):
        train_cross_encoder(CrossEncoderConfig(**{**config.__dict__, "output_dir": str(tmp_path / "x")}), records,
                            targets=targets[:2])


def test_encoder_backbone_select_end_to_end_and_model_reuse(tmp_path, tiny_encoder, pool):
    config = small_config(tmp_path, backbone="encoder", model=str(tiny_encoder), max_steps=3, batch_size=8,
                          learning_rate=1e-3, threads=1, score_batch_size=64)
    try:
        result = select(config, pool)
    except SelectionError as error:  # a tiny random model may keep nothing; the report must still exist
        assert "kept nothing" in str(error)
        result = None
    report = json.loads((tmp_path / "select" / REPORT_NAME).read_text())
    assert report["backbone"] == "encoder" and set(report["timings"]) == {"im", "ci", "ms"}
    weights = tmp_path / "select" / "selectors" / "im" / "fold0" / "model.safetensors"
    assert weights.is_file()
    if result is not None:
        assert len(result.selected) == report["selected"]
    # models are reused even when the score cache is gone
    stamp = weights.stat().st_mtime_ns
    for cache in (tmp_path / "select" / "selectors").glob("*/scores.npz"):
        cache.unlink()
    try:
        select(config, pool)
    except SelectionError:
        pass
    assert weights.stat().st_mtime_ns == stamp


def test_llm_backbone_select_end_to_end(tmp_path, tiny_lm, pool):
    config = small_config(tmp_path, backbone="llm", model=str(tiny_lm), max_steps=2, batch_size=8,
                          learning_rate=1e-2, threads=1, score_batch_size=64, max_length=256, lora_r=4)
    try:
        select(config, pool[:300])
    except SelectionError as error:
        assert "kept nothing" in str(error)
    report = json.loads((tmp_path / "select" / REPORT_NAME).read_text())
    assert report["backbone"] == "llm" and report["pool_size"] == 300
    assert (tmp_path / "select" / "selectors" / "ms" / "fold1" / "adapter_config.json").is_file()
    assert all(not t["reused"] for t in report["timings"].values())
    adapter = tmp_path / "select" / "selectors" / "ms" / "fold1" / "adapter_model.safetensors"
    stamp = adapter.stat().st_mtime_ns
    (tmp_path / "select" / "selectors" / "ms" / "scores.npz").unlink()
    try:
        select(config, pool[:300])
    except SelectionError:
        pass
    report = json.loads((tmp_path / "select" / REPORT_NAME).read_text())
    assert report["timings"]["im"]["reused"] and not report["timings"]["ms"]["reused"]
    assert adapter.stat().st_mtime_ns == stamp  # the adapter was reused, only the scores recomputed


def test_cli_select(tmp_path, tiny_encoder, pool):
    from typer.testing import CliRunner

    from lref.cli import app
    from lref.data import write_records

    data = tmp_path / "pool.jsonl"
    write_records(data, pool)
    out = tmp_path / "run"
    common = ["select", "--pool", str(data), "--out-dir", str(out), "--backbone", "encoder", "--model",
              str(tiny_encoder), "--im-sample", "120", "--ci-sample", "90", "--ms-sample", "120",
              "--confusion-slice", "100", "--max-steps", "2", "--threads", "1", "--score-batch-size", "64"]
    result = CliRunner().invoke(app, common + ["--no-ms", "--lr", "1e-3"])
    report = json.loads((out / REPORT_NAME).read_text())
    if result.exit_code == 0:
        assert "selection:" in result.output and (out / SELECTED_NAME).is_file()
    else:
        assert isinstance(result.exception, SelectionError)
    assert set(report["conditions"]) == {"ci", "im"}
    taught = CliRunner().invoke(app, common + ["--confusion-source", "teacher"])
    assert taught.exit_code == 0 or isinstance(taught.exception, SelectionError)
    report = json.loads((out / REPORT_NAME).read_text())
    confusion = report["confusion"]
    assert confusion["source"] == "teacher" and sum(confusion["teacher_pairs"].values()) == 120  # the MS sample
    flagged = load_records(out / FLAGGED_NAME)  # written beside the report
    assert len(flagged) == report["flagged"] and all(r.meta["flagged_by"] == "mislabeled_supervisor" for r in flagged)

    # --match-hints: the selectors read the hint line, and the selected pairs keep it for the SFT stage after them.
    hinted = CliRunner().invoke(app, common + ["--match-hints", "--min-fraction", "0.2"])
    assert hinted.exit_code == 0, hinted.output
    selected = load_records(out / SELECTED_NAME)
    assert selected and all(MATCH_HINT in record.meta for record in selected)


@pytest.mark.smoke
def test_smoke_real_minilm_cross_encoder(tmp_path):
    """Real all-MiniLM-L6-v2: a few training steps and scoring through the selector backbone."""
    from lref.models.zoo import resolve_model
    from lref.stages.select import make_backbone

    records = generate_catalog(SyntheticCatalogConfig(n_pairs=200, seed=1))
    config = SelectConfig(backbone="encoder", model=str(resolve_model("minilm-l6")), max_steps=4, batch_size=16,
                          progress=False, threads=2)
    backbone = make_backbone(config)
    folder = backbone.fit(records[:64], tmp_path / "m", seed=0)
    result = backbone.score(folder, records[64:128])
    assert result.probs.shape == (64, 3) and np.isfinite(result.probs).all()


def test_lexical_backbone_selects_in_seconds_and_reuses_its_selectors(tmp_path, pool):
    from lref.stages.select import make_backbone
    from lref.training.backbones import LexicalBackbone

    config = small_config(tmp_path, backbone="lexical")
    assert isinstance(make_backbone(config), LexicalBackbone) and config.model_name == "lexical"
    result = select(config, pool)
    assert 0 < len(result.selected) < len(pool)
    report = json.loads((tmp_path / "select" / REPORT_NAME).read_text())
    assert report["backbone"] == "lexical"
    models = sorted((tmp_path / "select").glob("selectors/*/fold*/lref_manifest.json"))
    assert models and all(json.loads(m.read_text())["selector_settings"]["backbone"] == "lexical" for m in models)
    stamps = {m: m.stat().st_mtime_ns for m in models}
    again = select(small_config(tmp_path, backbone="lexical"), pool)
    assert [r.id for r in again.selected] == [r.id for r in result.selected]
    assert {m: m.stat().st_mtime_ns for m in models} == stamps  # the finished selectors were kept, not refitted
