"""Distillation: the soft-label loss, unlabelled rows in cross-encoder training, the pool, the cached teacher scores,
the `distill` entry point end to end on tiny models, and `lref distill`."""

from __future__ import annotations

import functools
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

import torch.nn.functional as F  # noqa: E402
from helpers import run_lref  # noqa: E402

from lref.data.records import DataError, Record  # noqa: E402
from lref.labels import LabelError, get_scheme  # noqa: E402
from lref.models.loading import MANIFEST_NAME  # noqa: E402
from lref.stages.distill import (  # noqa: E402
    CANDIDATE_TAG,
    SCORES_NAME,
    DistillConfig,
    build_pool,
    calibrated_probs,
    candidate_pairs,
    distill,
    pair_hash,
    scores_path,
    teacher_identity,
)
from lref.teachers.base import TeacherError, TeacherRefusal  # noqa: E402
from lref.teachers.cache import default_cache_root, read_skipped, skipped_path  # noqa: E402
from lref.training.losses import IGNORE_LABEL, soft_label_loss  # noqa: E402

SCHEME = get_scheme("graded3")
E, P, I = SCHEME.labels


# -- the loss ---------------------------------------------------------------------------------------------------------


def _batch(n=5, k=3, seed=0, labels=None):
    g = torch.Generator().manual_seed(seed)
    targets = torch.softmax(torch.randn(n, k, generator=g) * 2, dim=-1)
    labels = torch.tensor(labels if labels is not None else [i % k for i in range(n)])
    return torch.randn(n, k, generator=g) * 2, {"targets": targets, "labels": labels}


def test_loss_is_zero_when_the_student_is_the_teacher_and_no_pair_is_labelled():
    _, batch = _batch(labels=[IGNORE_LABEL] * 5)
    student = torch.log(batch["targets"]) + 3.0  # a shift leaves the softmax unchanged
    for temperature in (0.5, 1.0, 4.0):
        loss = soft_label_loss(student, batch, temperature=temperature, ce_weight=1.0)
        assert float(loss) == pytest.approx(0, abs=1e-6)


def test_loss_matches_a_hand_computation():
    logits, batch = _batch(labels=[0, IGNORE_LABEL, 2, 1, IGNORE_LABEL])
    T, lam = 2.0, 0.7
    teacher_t = batch["targets"] ** (1 / T)
    teacher_t = teacher_t / teacher_t.sum(dim=1, keepdim=True)
    student_t = torch.softmax(logits / T, dim=1)
    kl = (teacher_t * (teacher_t.log() - student_t.log())).sum(dim=1).mean()
    rows = [0, 2, 3]
    ce = -torch.log_softmax(logits, dim=1)[rows, batch["labels"][rows]].mean()
    expected = T**2 * kl + lam * ce
    loss = soft_label_loss(logits, batch, temperature=T, ce_weight=lam)
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)


def test_kl_term_scales_with_t_squared():
    logits, batch = _batch()
    for T in (1.0, 2.0, 5.0):
        teacher_log_t = F.log_softmax(batch["targets"].log() / T, dim=1)
        kl = F.kl_div(F.log_softmax(logits / T, dim=1), teacher_log_t, log_target=True, reduction="batchmean")
        loss = soft_label_loss(logits, batch, temperature=T, ce_weight=0.0)
        assert float(loss) == pytest.approx(T**2 * float(kl), rel=1e-5)


def test_zero_ce_weight_ignores_labels_and_unlabelled_rows_add_no_ce():
    logits, batch = _batch()
    other = {**batch, "labels": torch.tensor([2, 2, 0, 0, 1])}
    assert float(soft_label_loss(logits, batch, ce_weight=0.0)) == float(soft_label_loss(logits, other, ce_weight=0.0))
    # the CE is averaged over the labelled rows only: dropping a row's label removes exactly its CE
    partial = {**batch, "labels": torch.tensor([0, IGNORE_LABEL, IGNORE_LABEL, IGNORE_LABEL, IGNORE_LABEL])}
    kl_only = soft_label_loss(logits, batch, ce_weight=0.0)
    ce_row0 = F.cross_entropy(logits[:1], torch.tensor([0]))
    assert float(soft_label_loss(logits, partial, ce_weight=1.0)) == pytest.approx(float(kl_only + ce_row0), rel=1e-5)
    none = {**batch, "labels": torch.full((5,), IGNORE_LABEL)}
    assert float(soft_label_loss(logits, none, ce_weight=1.0)) == pytest.approx(float(kl_only), rel=1e-6)


def test_gradient_flows_and_moves_the_student_toward_the_teacher():
    logits, batch = _batch(labels=[IGNORE_LABEL] * 5)
    logits.requires_grad_(True)
    soft_label_loss(logits, batch, temperature=1.0).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    # at T=1 the gradient of batch-mean KL is (student - teacher) / N
    expected = (torch.softmax(logits.detach(), dim=1) - batch["targets"]) / 5
    assert torch.allclose(logits.grad, expected, atol=1e-6)


def test_loss_checks_its_inputs():
    logits, batch = _batch()
    with pytest.raises(ValueError, match="temperature"):
        soft_label_loss(logits, batch, temperature=0)
    with pytest.raises(ValueError, match="ce_weight"):
        soft_label_loss(logits, batch, ce_weight=-1)
    with pytest.raises(KeyError, match="targets"):
        soft_label_loss(logits, {"labels": batch["labels"]})
    with pytest.raises(ValueError, match="targets are"):
        soft_label_loss(logits, {**batch, "targets": batch["targets"][:, :2]})


# -- the pool ---------------------------------------------------------------------------------------------------------


def pool_records(n: int = 12) -> list[Record]:
    words = {E: "drill", P: "hose", I: "fan"}
    return [
        Record(id=f"r{i}", query=f"{words[SCHEME.labels[i % 3]]} {i % 4}", title=f"white steel pack {i}",
               label=SCHEME.labels[i % 3], meta={"product_id": f"p{i}"})
        for i in range(n)
    ]


def test_candidate_pairs_pair_each_query_with_new_products_deterministically():
    pool = pool_records()
    candidates = candidate_pairs(pool, 3, seed=1)
    queries = {r.query for r in pool}
    assert len(candidates) == 3 * len(queries)
    paired = {(r.query, r.meta["product_id"]) for r in pool}
    assert all((c.query, c.meta["product_id"]) not in paired for c in candidates)
    assert all(c.label is None and c.meta[CANDIDATE_TAG] for c in candidates)
    assert [c.id for c in candidate_pairs(pool, 3, seed=1)] == [c.id for c in candidates]
    assert [c.id for c in candidate_pairs(pool, 3, seed=2)] != [c.id for c in candidates]
    assert len(candidate_pairs(pool, 100)) == sum(12 - sum(r.query == q for r in pool) for q in queries)


def test_build_pool_counts_drops_unlabelled_labels_and_rejects_bad_input():
    pool, counts = build_pool(pool_records(6), [Record(id="u1", query="fan", title="x", label=E)], SCHEME, 1)
    assert counts == {"labelled": 6, "unlabelled": 1, "candidates": counts["candidates"], "total": len(pool)}
    assert counts["candidates"] > 0 and next(r for r in pool if r.id == "u1").label is None
    with pytest.raises(DataError, match="nothing to distil"):
        build_pool([], None, SCHEME)
    with pytest.raises(DataError, match="occurs twice"):
        build_pool(pool_records(3), [Record(id="r0", query="q", title="t")], SCHEME)
    with pytest.raises(DataError, match="r0"):
        build_pool([Record(id="r0", query="q", title="t", label="Perfect-ish")], None, SCHEME)


def test_config_is_validated():
    with pytest.raises(ValueError, match="teacher"):
        DistillConfig()
    for bad, match in [({"temperature": 0}, "temperature"), ({"ce_weight": -0.1}, "ce_weight"),
                       ({"candidates_per_query": -1}, "candidates_per_query"), ({"batch_size": 0}, "batch_size"),
                       ({"scheme": "nope"}, "nope"), ({"encoder_layers": 0}, "encoder_layers"),
                       ({"encoder_layers": True}, "encoder_layers")]:
        with pytest.raises((ValueError, LabelError), match=match):
            DistillConfig(teacher="t", **bad)


# -- unlabelled rows in cross-encoder training ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory):
    from lref.testing import build_tiny_encoder

    torch.set_num_threads(1)
    return build_tiny_encoder(tmp_path_factory.mktemp("encoder"))


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    from lref.testing import build_tiny_causal_lm

    return build_tiny_causal_lm(tmp_path_factory.mktemp("teacher"), embedding_scale=10.0)


def test_student_learns_unlabelled_pairs_from_soft_targets(tmp_path, tiny_encoder):
    """Two students on the same unlabelled pairs, taught by teachers that disagree everywhere: each follows its own."""
    from lref.models.cross_encoder import CrossEncoderScorer
    from lref.training.cross_encoder import CrossEncoderConfig, train_cross_encoder

    records = [Record(id=r.id, query=r.query, title="white steel pack") for r in pool_records(24)]  # no labels
    word_class = np.arange(24) % 3
    loss_fn = functools.partial(soft_label_loss, temperature=1.0, ce_weight=0.5)
    predicted = {}
    for name, teacher in {"a": word_class, "b": (word_class + 1) % 3}.items():
        targets = np.full((24, 3), 0.05)
        targets[np.arange(24), teacher] = 0.9
        config = CrossEncoderConfig(model=str(tiny_encoder), output_dir=str(tmp_path / name), learning_rate=5e-3,
                                    max_steps=80, batch_size=8, warmup_ratio=0.0, progress=False, threads=1)
        folder = train_cross_encoder(config, records, targets=targets, loss_fn=loss_fn)
        manifest = json.loads((folder / MANIFEST_NAME).read_text())
        assert manifest["n_unlabelled"] == 24 and manifest["label_counts"] == {}
        predicted[name] = CrossEncoderScorer.from_pretrained(folder).score(records).probs.argmax(axis=1)
    b_teacher = (word_class + 1) % 3
    assert np.mean(predicted["a"] == word_class) >= 0.6 and np.mean(predicted["b"] == b_teacher) >= 0.6  # chance 1/3
    assert np.mean(predicted["a"] == b_teacher) <= 0.4 and np.mean(predicted["b"] == word_class) <= 0.4
    with pytest.raises(DataError, match="no label"):  # without targets a pair still needs its label
        train_cross_encoder(CrossEncoderConfig(**{**config.__dict__, "output_dir": str(tmp_path / "x")}), records)


def test_cross_encoder_soft_labels_learn_the_raters_spread(tmp_path, tiny_encoder):
    """Same pairs and labels: trained on raw scores the encoder splits its probability as the raters did."""
    from dataclasses import replace

    from lref.models.cross_encoder import CrossEncoderScorer
    from lref.training.cross_encoder import CrossEncoderConfig, rating_targets, train_cross_encoder
    from lref.training.losses import rating_loss

    scheme = get_scheme("graded3")
    records = [Record(id=f"s{i}", query="white drill", title="white steel pack", label="Exact", raw_score=2.67)
               for i in range(16)]
    assert rating_targets(records[:1] + [replace(records[0], raw_score=None)], scheme) == pytest.approx(
        np.array([[0.67, 0.33, 0.0], [1.0, 0.0, 0.0]]))
    probs = {}
    for soft in (False, True):
        config = CrossEncoderConfig(model=str(tiny_encoder), output_dir=str(tmp_path / str(soft)), learning_rate=5e-3,
                                    max_steps=60, batch_size=8, warmup_ratio=0.0, progress=False, threads=1,
                                    soft_labels=soft)
        folder = train_cross_encoder(config, records, eval_records=records[:4])
        manifest = json.loads((folder / MANIFEST_NAME).read_text())
        assert manifest["config"]["soft_labels"] is soft and "eval_loss" in manifest["train_metrics"]
        probs[soft] = CrossEncoderScorer.from_pretrained(folder).score(records[:1]).probs[0]
    assert probs[False][0] > 0.9  # hard labels: all Exact
    assert abs(probs[True][0] - 0.67) < 0.1 and abs(probs[True][1] - 0.33) < 0.1
    with pytest.raises(ValueError, match="soft_labels sets the targets"):
        train_cross_encoder(config, records, loss_fn=rating_loss)
    with pytest.raises(DataError, match="record 'odd': raw_score 1.0 does not sit beside its label 'Exact'"):
        train_cross_encoder(replace(config, output_dir=str(tmp_path / "odd")),
                            [replace(records[0], id="odd", raw_score=1.0)])


# -- distill end to end -----------------------------------------------------------------------------------------------


def distill_config(tmp_path, teacher, student, **overrides) -> DistillConfig:
    settings = dict(teacher=str(teacher), student=str(student), output_dir=str(tmp_path / "student"), max_steps=3,
                    batch_size=4, learning_rate=1e-3, teacher_batch_size=8, progress=False, threads=1)
    return DistillConfig(**{**settings, **overrides})


def test_distill_writes_a_loadable_student_and_caches_teacher_scores(tmp_path, tiny_teacher, tiny_encoder, monkeypatch):
    from lref.models.cross_encoder import CrossEncoderScorer
    from lref.models.loading import load_causal_lm
    from lref.models.scorer import LabelScorer

    records = pool_records(8)
    unlabeled = [Record(id=f"u{i}", query="garden fan", title=f"ceiling fan {i}") for i in range(3)]
    config = distill_config(tmp_path, tiny_teacher, tiny_encoder, candidates_per_query=1)
    folder = distill(config, records, unlabeled)

    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    info = manifest["distill"]
    assert manifest["stage"] == "distill" and manifest["scheme"]["name"] == "graded3"
    total = info["pairs"]["total"]
    assert info["pairs"]["labelled"] == 8 and info["pairs"]["unlabelled"] == 3
    assert info["pairs"]["candidates"] == 9  # one per query
    assert total == 20 and manifest["n_train"] == 20 and manifest["n_unlabelled"] == 12
    assert info["teacher_cache"]["hits"] == 0 and info["teacher_cache"]["scored"] == total
    assert info["config"]["temperature"] == 2.0 and info["teacher"]["key"] == teacher_identity(config)["key"]

    # the cache holds exactly the teacher's probabilities, outside the student folder (beside it, by default)
    cache_file = scores_path(default_cache_root(config.output_dir), teacher_identity(config))
    assert info["teacher_cache"]["path"] == str(cache_file) and cache_file.name == SCORES_NAME
    assert cache_file.parent.parent == tmp_path / "teacher_cache" and not (folder / SCORES_NAME).exists()
    rows = [json.loads(line) for line in cache_file.read_text().splitlines()]
    assert len(rows) == total and len({(r["id"], r["pair"]) for r in rows}) == total
    lm, tokenizer, _ = load_causal_lm(tiny_teacher)
    direct = LabelScorer(lm, tokenizer, SCHEME).score(records)
    cached = {r["id"]: r["probs"] for r in rows}
    assert np.allclose([cached[r.id] for r in records], direct.probs, atol=1e-5)
    assert next(r for r in rows if r["id"] == "r0")["pair"] == pair_hash(records[0])

    result = CrossEncoderScorer.from_pretrained(folder).score(records)
    assert result.probs.shape == (8, 3) and np.isfinite(result.probs).all()

    # a resumed run never loads (let alone runs) the teacher again
    def no_teacher(*args, **kwargs):
        raise AssertionError("the teacher was loaded although every score was cached")

    monkeypatch.setattr("lref.models.loading.load_causal_lm", no_teacher)
    with pytest.raises(FileExistsError, match="resume"):
        distill(config, records, unlabeled)
    distill(DistillConfig(**{**config.__dict__, "resume": True}), records, unlabeled)
    info = json.loads((folder / MANIFEST_NAME).read_text())["distill"]
    assert info["teacher_cache"]["hits"] == total and info["teacher_cache"]["scored"] == 0


def test_distill_learns_from_a_labels_file_without_running_a_teacher(tmp_path, tiny_encoder, monkeypatch):
    from lref.predictions import Prediction, write_predictions
    from lref.stages.distill import labels_from_file

    records = pool_records(6)
    probs = [{"Exact": 0.6, "Partial": 0.3, "Irrelevant": 0.1}, {"exact": 2.0, "partial": 1.0, "irrelevant": 1.0}]
    labels = tmp_path / "committee.jsonl"
    write_predictions(labels, [Prediction(r.id, "Exact", probs[i % 2]) for i, r in enumerate(records)])
    targets, stats = labels_from_file(labels, records, SCHEME)
    assert np.allclose(targets[0], [0.6, 0.3, 0.1]) and np.allclose(targets[1], [0.5, 0.25, 0.25])  # renormalised
    assert stats["scored"] == 0 and len(stats["sha256"]) == 64

    def no_teacher(*args, **kwargs):
        raise AssertionError("a teacher model was loaded although the labels were given")

    monkeypatch.setattr("lref.models.loading.load_causal_lm", no_teacher)
    config = distill_config(tmp_path, "", tiny_encoder, teacher_labels=str(labels))
    folder = distill(config, records)
    info = json.loads((folder / MANIFEST_NAME).read_text())["distill"]
    assert info["teacher"] == {"labels_file": str(labels), "sha256": stats["sha256"]} and info["teacher_bias"] is None
    assert info["teacher_label_shares"] == {"Exact": 1.0, "Partial": 0.0, "Irrelevant": 0.0}

    with pytest.raises(DataError, match=r"1 of 7 pool pairs have no probabilities here \('extra'\)"):
        labels_from_file(labels, [*records, Record(id="extra", query="q", title="t", label="Exact")], SCHEME)
    write_predictions(labels, [Prediction(r.id, "Exact", {"Exact": 0.0}) for r in records])
    with pytest.raises(DataError, match="positive sum"):
        labels_from_file(labels, records, SCHEME)
    with pytest.raises(ValueError, match="teacher_labels"):
        DistillConfig(teacher="", teacher_labels="")


def test_encoder_layers_keeps_the_first_layers_of_the_student(tmp_path, tiny_encoder):
    """A 1-layer student from the 2-layer encoder: its first layer's weights, half the layers, and it reloads and
    scores; asking for more layers than the encoder has names both counts."""
    from safetensors.torch import load_file

    from lref.models.cross_encoder import CrossEncoderScorer
    from lref.predictions import Prediction, write_predictions

    records = pool_records(6)
    labels = tmp_path / "labels.jsonl"
    write_predictions(labels, [Prediction(r.id, "Exact", {"Exact": 0.6, "Partial": 0.3, "Irrelevant": 0.1})
                               for r in records])
    folder = distill(distill_config(tmp_path, "", tiny_encoder, teacher_labels=str(labels), encoder_layers=1,
                                    learning_rate=1e-9), records)
    assert json.loads((folder / "config.json").read_text())["num_hidden_layers"] == 1
    assert json.loads((folder / MANIFEST_NAME).read_text())["config"]["encoder_layers"] == 1
    weights, source = load_file(folder / "model.safetensors"), load_file(tiny_encoder / "model.safetensors")
    assert not [k for k in weights if ".layer.1." in k]
    key = next(k for k in weights if k.endswith("encoder.layer.0.attention.self.query.weight"))
    source_key = next(k for k in source if k.endswith("encoder.layer.0.attention.self.query.weight"))
    assert torch.allclose(weights[key], source[source_key], atol=1e-5)  # lr 1e-9: the first layer is the encoder's
    assert CrossEncoderScorer.from_pretrained(folder).score(records).probs.shape == (6, 3)
    with pytest.raises(ValueError, match="encoder_layers is 3, but the encoder in .* has only 2 layers"):
        distill(distill_config(tmp_path, "", tiny_encoder, teacher_labels=str(labels), encoder_layers=3,
                               output_dir=str(tmp_path / "deep")), records)


def test_calibrated_probs_add_the_bias_to_the_log_probabilities():
    probs = np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
    assert np.allclose(calibrated_probs(probs, [0.0, 0.0, 0.0]), probs)
    shifted = calibrated_probs(probs, [0.0, np.log(2.0), 0.0])  # Partial's odds double
    assert np.allclose(shifted[0], np.array([0.5, 0.6, 0.2]) / 1.3)
    assert np.allclose(shifted.sum(axis=1), 1.0)


def test_teacher_calibration_shifts_the_soft_labels_by_the_stored_bias(tmp_path, tiny_teacher, tiny_encoder):
    from lref.calibration import calibration_path

    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_teacher, teacher)
    bias = {E: 0.0, P: 0.0, I: 30.0}  # large enough to make Irrelevant every pair's top label
    calibration_path(teacher).write_text(json.dumps({"scheme": "graded3", "bias": bias}))
    records = pool_records(8)
    shares, cached = {}, {}
    for use in (False, True):
        config = distill_config(tmp_path, teacher, tiny_encoder, output_dir=str(tmp_path / f"student_{use}"),
                                teacher_calibration=use)
        folder = distill(config, records, teacher_cache=tmp_path / f"cache_{use}")  # each run scores for itself
        info = json.loads((folder / MANIFEST_NAME).read_text())["distill"]
        assert info["teacher_bias"] == (bias if use else None) and info["teacher_cache"]["scored"] == 8
        shares[use] = info["teacher_label_shares"]
        rows = Path(info["teacher_cache"]["path"]).read_text().splitlines()
        cached[use] = {row["id"]: row["probs"] for row in map(json.loads, rows)}
    assert shares[True] == {E: 0.0, P: 0.0, I: 1.0} and shares[False][I] < 1.0
    # the bias is applied once, after the cache: both runs cached the same raw teacher scores
    assert cached[True].keys() == cached[False].keys()
    assert all(np.allclose(cached[True][key], cached[False][key], atol=1e-6) for key in cached[True])
    assert max(probs[2] for probs in cached[True].values()) < 0.99


def test_killed_run_keeps_its_scores_and_a_changed_teacher_invalidates_them(tmp_path, tiny_teacher, tiny_encoder):
    from lref.testing import build_tiny_causal_lm

    records = pool_records(10)
    first = distill_config(tmp_path / "a", tiny_teacher, tiny_encoder)
    distill(first, records)
    first_cache = scores_path(tmp_path / "a" / "teacher_cache", teacher_identity(first))
    rows = first_cache.read_text().splitlines()

    # a run killed mid-write: six whole rows and half a line
    second = distill_config(tmp_path / "b", tiny_teacher, tiny_encoder)
    cache = scores_path(tmp_path / "b" / "teacher_cache", teacher_identity(second))
    cache.parent.mkdir(parents=True)
    cache.write_text("\n".join(rows[:6]) + "\n" + rows[6][:20])
    info = json.loads((distill(second, records) / MANIFEST_NAME).read_text())["distill"]["teacher_cache"]
    assert (info["hits"], info["scored"], info["dropped"]) == (6, 4, 1)
    rescored = sorted(cache.read_text().splitlines())
    assert len(rescored) == 10 and all(json.loads(r) for r in rescored)

    # another teacher (same architecture, other weights) gets a cache of its own and scores everything; the first
    # teacher's answers stay
    other = build_tiny_causal_lm(tmp_path / "other", seed=1, embedding_scale=10.0)
    third = distill_config(tmp_path / "a", other, tiny_encoder, output_dir=str(tmp_path / "a" / "other_student"))
    info = json.loads((distill(third, records) / MANIFEST_NAME).read_text())["distill"]["teacher_cache"]
    assert (info["hits"], info["scored"], info["dropped"]) == (0, 10, 0)
    assert Path(info["path"]) != first_cache and first_cache.read_text().splitlines() == rows
    new = {json.loads(r)["id"]: json.loads(r)["probs"] for r in Path(info["path"]).read_text().splitlines()}
    old = {json.loads(r)["id"]: json.loads(r)["probs"] for r in rows}
    assert len(new) == 10 and not np.allclose(new["r0"], old["r0"])


def _refusing_scorer(monkeypatch, refuse, calls):
    """LabelScorer whose `score` raises TeacherRefusal for a batch holding a pair `refuse(record)` names (as an
    endpoint refusing one over-long prompt would) and counts the pairs it is asked to score."""
    import lref.stages.distill as stage

    class Refusing(stage.LabelScorer):
        def score(self, records):
            calls.extend(r.id for r in records)
            bad = [r.id for r in records if refuse(r)]
            if bad:
                raise TeacherRefusal(f"HTTP 400: prompt of {bad[0]} is over the context length")
            return super().score(records)

    monkeypatch.setattr(stage, "LabelScorer", Refusing)


def test_a_refused_pair_is_skipped_counted_and_never_asked_again(tmp_path, tiny_teacher, tiny_encoder, monkeypatch):
    records = pool_records(10)
    calls: list[str] = []
    _refusing_scorer(monkeypatch, lambda r: r.id == "r3", calls)
    config = distill_config(tmp_path, tiny_teacher, tiny_encoder)
    manifest = json.loads((distill(config, records) / MANIFEST_NAME).read_text())
    info = manifest["distill"]["teacher_cache"]
    # the stage went on: the refused pair has no soft label and is left out of training; the others were scored
    assert info["skipped"] == 1 and manifest["distill"]["pairs"]["teacher_skipped"] == 1
    assert info["scored"] == 9 and manifest["n_train"] == 9
    skip_file = skipped_path(info["path"])
    assert info["skipped_file"] == str(skip_file)
    assert [row["id"] for row in read_skipped(skip_file).values()] == ["r3"]
    assert "context length" in next(iter(read_skipped(skip_file).values()))["error"]

    # a re-run (a reset stage: another output folder, same cache root) asks the teacher for nothing
    calls.clear()
    again = distill_config(tmp_path, tiny_teacher, tiny_encoder, output_dir=str(tmp_path / "student2"))
    info = json.loads((distill(again, records) / MANIFEST_NAME).read_text())["distill"]["teacher_cache"]
    assert calls == [] and (info["hits"], info["scored"], info["skipped"]) == (9, 0, 1)


def test_many_refusals_are_a_systemic_failure_and_are_not_recorded(tmp_path, tiny_teacher, tiny_encoder,
                                                                   monkeypatch):
    _refusing_scorer(monkeypatch, lambda r: True, [])
    config = distill_config(tmp_path, tiny_teacher, tiny_encoder)
    with pytest.raises(TeacherError, match="refused 10 of 10 pairs"):
        distill(config, pool_records(10))
    assert not skipped_path(scores_path(tmp_path / "teacher_cache", teacher_identity(config))).exists()
    # a limit given as a number of pairs
    with pytest.raises(TeacherError, match="more than the 2"):
        distill(distill_config(tmp_path, tiny_teacher, tiny_encoder, teacher_max_skips=2), pool_records(10))


def test_scheme_mismatch_and_unlabelled_only(tmp_path, tiny_teacher, tiny_encoder):
    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_teacher, teacher)
    esci4 = {"scheme": {"name": "esci4", "labels": list(get_scheme("esci4").labels)}}
    (teacher / MANIFEST_NAME).write_text(json.dumps(esci4))
    with pytest.raises(LabelError, match="esci4"):
        distill(distill_config(tmp_path, teacher, tiny_encoder), pool_records(4))
    assert not (tmp_path / "teacher_cache").exists()  # refused before scoring anything

    unlabeled = [Record(id=r.id, query=r.query, title=r.title) for r in pool_records(6)]
    folder = distill(distill_config(tmp_path, tiny_teacher, tiny_encoder, ce_weight=0.5), [], unlabeled)
    info = json.loads((folder / MANIFEST_NAME).read_text())["distill"]
    assert info["pairs"]["labelled"] == 0 and info["pairs"]["unlabelled"] == 6


def test_cli_distill(tmp_path, tiny_teacher, tiny_encoder, monkeypatch, capsys):
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in pool_records(6)))
    out = tmp_path / "student"
    code, stdout, stderr = run_lref(
        monkeypatch, capsys, "distill", "--teacher", str(tiny_teacher), "--train", str(train), "--output-dir", str(out),
        "--student", str(tiny_encoder), "--max-steps", "2", "--batch-size", "3", "--ce-weight", "0.25",
        "--candidates-per-query", "1", "--threads", "1",
    )
    assert code == 0, stderr
    assert stdout.strip().splitlines()[-1] == str(out)
    info = json.loads((out / MANIFEST_NAME).read_text())["distill"]
    assert info["config"]["ce_weight"] == 0.25 and info["pairs"]["candidates"] > 0
    code, _, stderr = run_lref(monkeypatch, capsys, "distill", "--teacher", str(tiny_teacher), "--output-dir", str(out))
    assert code != 0 and "--train" in stderr
    code, _, stderr = run_lref(monkeypatch, capsys, "distill", "--teacher", str(tiny_teacher), "--train", str(train),
                               "--output-dir", str(tmp_path / "x"), "--temperature", "0")
    assert code != 0 and "temperature" in stderr
