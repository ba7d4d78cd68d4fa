"""The hybrid student (`lref.models.hybrid`): a tiny cross-encoder joined with the lexical match features trains,
resumes, saves, loads, distils, exports to one ONNX graph that agrees with PyTorch, and serves over real HTTP."""

from __future__ import annotations

import json
import os

import httpx
import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning", "ignore::DeprecationWarning")

from helpers import run_lref  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from lref.baselines.lexical import FEATURE_NAMES, LexicalConfig, LexicalFeatures, out_of_fold_proba  # noqa: E402
from lref.data.records import DataError, Record  # noqa: E402
from lref.data.synthetic import SyntheticCatalogConfig, generate_catalog  # noqa: E402
from lref.io import write_jsonl  # noqa: E402
from lref.labels import get_scheme  # noqa: E402
from lref.models.cross_encoder import CrossEncoderScorer  # noqa: E402
from lref.models.factory import load_student  # noqa: E402
from lref.models.hybrid import (  # noqa: E402
    FEATURE_CLIP,
    FEATURE_HEAD_FILE,
    FEATURE_INPUT,
    HYBRID_FILE,
    MATCH_FEATURES_FILE,
    PRIOR_FOLDER,
    MatchFeatures,
    is_hybrid,
)
from lref.models.onnx import ExportConfig, OnnxScorer, export_student, onnx_session  # noqa: E402
from lref.models.zoo import ModelFileError  # noqa: E402
from lref.predictions import Prediction, write_predictions  # noqa: E402
from lref.serve.background import free_port, serve_in_background  # noqa: E402
from lref.serve.student import ServeStudentConfig, build_server  # noqa: E402
from lref.testing import build_tiny_encoder  # noqa: E402
from lref.training.cross_encoder import CrossEncoderConfig, train_cross_encoder  # noqa: E402

G3 = get_scheme("graded3")


@pytest.fixture(scope="module")
def records():
    return generate_catalog(SyntheticCatalogConfig(n_pairs=300, seed=3))


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    torch.set_num_threads(1)
    return build_tiny_encoder(tmp_path_factory.mktemp("encoder"))


def train(encoder, records, folder, callbacks=None, **overrides):
    settings = dict(model=str(encoder), output_dir=str(folder), learning_rate=5e-3, max_steps=20, batch_size=16,
                    save_steps=10, progress=False, threads=1, lexical_features=True)
    return train_cross_encoder(CrossEncoderConfig(**{**settings, **overrides}), records[:200], callbacks=callbacks)


@pytest.fixture(scope="module")
def hybrid(tmp_path_factory, encoder, records):
    return train(encoder, records, tmp_path_factory.mktemp("hybrid") / "student")


def gold(records) -> np.ndarray:
    return np.array([G3.index(r.label) for r in records])


def test_a_trained_hybrid_folder_holds_the_encoder_the_head_and_the_features(hybrid, records):
    assert is_hybrid(hybrid)
    for name in (HYBRID_FILE, MATCH_FEATURES_FILE, FEATURE_HEAD_FILE, "model.safetensors", "config.json"):
        assert (hybrid / name).is_file(), name
    manifest = json.loads((hybrid / "lref_manifest.json").read_text())
    assert manifest["kind"] == "cross-encoder" and manifest["hybrid"]["features"] == list(FEATURE_NAMES)
    assert manifest["config"]["lexical_features"] is True
    scorer = CrossEncoderScorer.from_pretrained(hybrid)
    assert type(scorer.model).__name__ == "HybridCrossEncoder"
    result = scorer.score(records[200:])
    np.testing.assert_allclose(result.probs.sum(axis=1), 1.0, atol=1e-5)
    assert result.ids == [r.id for r in records[200:]]


def test_the_feature_head_learns_at_its_own_rate_while_the_encoder_barely_moves(tmp_path, encoder, records):
    """With the encoder's rate at 1e-7 neither encoder learns anything; only the hybrid's head, trained at
    feature_learning_rate, can read the match features that decide the synthetic catalog's labels."""
    held = records[200:]
    accuracy = {}
    for joined in (False, True):
        folder = train(encoder, records, tmp_path / str(joined), learning_rate=1e-7, max_steps=-1, epochs=3,
                       lexical_features=joined, feature_learning_rate=3e-3)
        accuracy[joined] = float(np.mean(CrossEncoderScorer.from_pretrained(folder).score(held).probs.argmax(1)
                                         == gold(held)))
    majority = np.bincount(gold(held)).max() / len(held)
    assert accuracy[False] <= majority + 0.02
    assert accuracy[True] >= majority + 0.05, accuracy


class StopAt(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def test_an_interrupted_hybrid_resumes_to_the_same_model(tmp_path, encoder, records, hybrid):
    """Stopped after its checkpoint at step 10 and resumed: the same head, encoder and features as the run above."""
    folder = tmp_path / "student"
    train(encoder, records, folder, callbacks=[StopAt(10)])
    resumed = train(encoder, records, folder, resume=True)
    manifest = json.loads((resumed / "lref_manifest.json").read_text())
    assert manifest["train_metrics"]["resumed_from_step"] == 10
    expected = CrossEncoderScorer.from_pretrained(hybrid).score(records[200:]).probs
    np.testing.assert_allclose(CrossEncoderScorer.from_pretrained(resumed).score(records[200:]).probs, expected,
                               atol=1e-6)


def test_match_features_round_trip_and_clip(tmp_path, records):
    features = MatchFeatures().fit(records[:200])
    matrix = features.transform(records[200:])
    assert matrix.shape == (100, len(FEATURE_NAMES)) and matrix.dtype == np.float32
    assert np.abs(matrix).max() <= FEATURE_CLIP
    np.testing.assert_allclose(features.transform(records[:200]).mean(axis=0), 0.0, atol=0.05)
    features.save_pretrained(tmp_path, hidden_size=64)
    np.testing.assert_array_equal(MatchFeatures.from_pretrained(tmp_path).transform(records[200:]), matrix)
    odd = Record("odd", "q " * 500, "t " * 2000)  # far outside the training spread
    assert np.abs(features.transform([odd])).max() == FEATURE_CLIP
    state = LexicalFeatures().fit(records).state()
    np.testing.assert_array_equal(LexicalFeatures.from_state(state).transform(records), LexicalFeatures().fit(
        records).transform(records))


def test_damaged_hybrid_files_are_errors_naming_the_file(tmp_path, hybrid):
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(hybrid, folder)
    (folder / MATCH_FEATURES_FILE).write_bytes(b"not an npz")
    with pytest.raises(ModelFileError, match=MATCH_FEATURES_FILE):
        CrossEncoderScorer.from_pretrained(folder)
    shutil.copyfile(hybrid / MATCH_FEATURES_FILE, folder / MATCH_FEATURES_FILE)
    (folder / FEATURE_HEAD_FILE).write_bytes(b"junk")
    with pytest.raises(ModelFileError, match=FEATURE_HEAD_FILE):
        CrossEncoderScorer.from_pretrained(folder)
    shutil.copyfile(hybrid / FEATURE_HEAD_FILE, folder / FEATURE_HEAD_FILE)
    spec = json.loads((folder / HYBRID_FILE).read_text())
    (folder / HYBRID_FILE).write_text(json.dumps({**spec, "mean": spec["mean"][:3]}))
    with pytest.raises(ModelFileError, match="one value per feature"):
        CrossEncoderScorer.from_pretrained(folder)
    (folder / HYBRID_FILE).write_text("{")
    with pytest.raises(ModelFileError, match=HYBRID_FILE):
        CrossEncoderScorer.from_pretrained(folder)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, hybrid):
    return export_student(ExportConfig(model=str(hybrid), output_dir=str(tmp_path_factory.mktemp("onnx"))))


def test_the_export_is_one_graph_with_a_features_input_that_agrees_with_pytorch(hybrid, exported, records):
    session = onnx_session(exported, "fp32")
    assert [i.name for i in session.get_inputs()][-1] == FEATURE_INPUT
    assert (exported / HYBRID_FILE).is_file() and (exported / MATCH_FEATURES_FILE).is_file()
    reference = load_student(hybrid, "torch").score(records[200:]).probs
    for backend, tolerance in (("onnx", 1e-5), ("int8", 0.05)):
        scorer = load_student(exported, backend)
        assert isinstance(scorer, OnnxScorer) and scorer.match_features is not None
        np.testing.assert_allclose(scorer.score(records[200:]).probs, reference, atol=tolerance)


def test_a_plain_export_into_the_folder_drops_the_hybrid_files_and_a_missing_one_is_an_error(
        tmp_path, encoder, records, exported):
    import shutil

    folder = tmp_path / "onnx"
    shutil.copytree(exported, folder)
    (folder / HYBRID_FILE).unlink()
    with pytest.raises(ModelFileError, match="match features"):
        load_student(folder, "onnx")
    plain = train(encoder, records, tmp_path / "plain", lexical_features=False)
    export_student(ExportConfig(model=str(plain), output_dir=str(folder)))
    assert not (folder / MATCH_FEATURES_FILE).exists() and not is_hybrid(folder)
    assert load_student(folder, "onnx").match_features is None


def test_the_hybrid_export_serves_over_http(exported, hybrid):
    pairs = [{"query": "cordless drill 20v", "title": "DeWalt 20V MAX cordless drill kit"},
             {"query": "garden hose 50 ft", "title": "Rubber lawn sprinkler", "brand": "Orbit"}]
    config = ServeStudentConfig(model=str(exported), backend="onnx", port=free_port(), threads=1,
                                log_level="warning")
    with serve_in_background(build_server(config)) as url:
        response = httpx.post(f"{url}/v1/relevance", json={"pairs": pairs}, timeout=30)
    assert response.status_code == 200, response.text
    served = np.array([[r["probabilities"][label] for label in G3.labels] for r in response.json()["results"]])
    records = [Record(str(i), p["query"], p["title"], brand=p.get("brand")) for i, p in enumerate(pairs)]
    np.testing.assert_allclose(served, CrossEncoderScorer.from_pretrained(hybrid).score(records).probs, atol=1e-5)


def test_cli_distils_a_hybrid_student_from_a_labels_file(tmp_path, encoder, records, monkeypatch, capsys):
    pool = records[:60]
    train_file = tmp_path / "train.jsonl"
    write_jsonl(train_file, [r.to_dict() for r in pool])
    rng = np.random.default_rng(0)
    labels_file = tmp_path / "teacher.jsonl"
    write_predictions(labels_file, [Prediction(r.id, G3.labels[int(p.argmax())], dict(zip(G3.labels, p.tolist())))
                                    for r, p in zip(pool, rng.dirichlet(np.ones(3), len(pool)))])
    out = tmp_path / "student"
    common = ("distill", "--teacher-labels", str(labels_file), "--train", str(train_file), "--student", str(encoder),
              "--lexical-features", "--max-steps", "3", "--batch-size", "8", "--threads", "1")
    code, _, err = run_lref(monkeypatch, capsys, *common, "--output-dir", str(out), "--feature-lr", "2e-3")
    assert code == 0, err
    assert is_hybrid(out)
    manifest = json.loads((out / "lref_manifest.json").read_text())
    assert manifest["distill"]["config"]["lexical_features"] is True
    assert manifest["config"]["feature_learning_rate"] == 2e-3
    code, _, err = run_lref(monkeypatch, capsys, *common, "--output-dir", str(tmp_path / "bad"), "--feature-lr", "0")
    assert code == 2 and "feature_learning_rate must be > 0" in err


def test_out_of_fold_probabilities_never_come_from_a_model_that_saw_the_query(records):
    """Relabelling every pair of one query changes the full model's view of them but not their out-of-fold
    probabilities (each fold's model held the query out); pairs without a label get the full model's."""
    config = LexicalConfig(max_iter=30)
    pool = [Record(r.id, r.query, r.title, r.label, brand=r.brand) for r in records[:200]]
    pool[-1].label = None
    full, probs = out_of_fold_proba(pool, config, folds=4)
    np.testing.assert_allclose(probs[-1], full.predict_proba(pool[-1:])[0])
    query = pool[0].query
    flipped = [Record(r.id, r.query, r.title, G3.labels[(G3.index(r.label) + 1) % 3] if r.query == query else r.label,
                      brand=r.brand) for r in pool]
    flipped_full, flipped_probs = out_of_fold_proba(flipped, config, folds=4)
    same_query = [i for i, r in enumerate(pool) if r.query == query]
    np.testing.assert_allclose(flipped_probs[same_query], probs[same_query])
    assert not np.allclose(flipped_full.predict_proba([pool[i] for i in same_query]),
                           full.predict_proba([pool[i] for i in same_query]))
    with pytest.raises(DataError, match="query-disjoint folds"):
        out_of_fold_proba(pool[:3], config, folds=4)


@pytest.fixture(scope="module")
def prior_hybrid(tmp_path_factory, encoder, records):
    """A hybrid with a lexical prior whose encoder and head rates are too small to move it from where it starts."""
    return train(encoder, records, tmp_path_factory.mktemp("prior") / "student", lexical_prior=True,
                 learning_rate=1e-9, feature_learning_rate=1e-9, max_steps=2)


def test_a_lexical_prior_starts_the_student_from_the_lexical_models_judgement(prior_hybrid, records):
    held = records[200:]
    assert (prior_hybrid / PRIOR_FOLDER / "lexical.skops").is_file()
    manifest = json.loads((prior_hybrid / "lref_manifest.json").read_text())
    assert manifest["hybrid"]["lexical_prior"] is True
    assert manifest["hybrid"]["features"][-3:] == [f"lexical_logp_{label}" for label in G3.labels]
    scorer = CrossEncoderScorer.from_pretrained(prior_hybrid)
    student = scorer.score(held).probs
    lexical = scorer.model.match_features.prior.predict_proba(held)
    assert np.mean(student.argmax(1) == lexical.argmax(1)) >= 0.95
    majority = np.bincount(gold(held)).max() / len(held)
    assert np.mean(student.argmax(1) == gold(held)) >= majority + 0.05


def test_a_prior_hybrid_exports_with_its_lexical_model_and_agrees_with_pytorch(tmp_path, prior_hybrid, records):
    exported = export_student(ExportConfig(model=str(prior_hybrid), output_dir=str(tmp_path / "onnx")))
    assert (exported / PRIOR_FOLDER / "lexical.skops").is_file()
    reference = load_student(prior_hybrid, "torch").score(records[200:]).probs
    np.testing.assert_allclose(load_student(exported, "onnx").score(records[200:]).probs, reference, atol=1e-5)
    (exported / PRIOR_FOLDER / "lexical.skops").unlink()
    with pytest.raises(ModelFileError, match="lexical prior"):
        load_student(exported, "onnx")
    spec = json.loads((exported / HYBRID_FILE).read_text())
    (exported / HYBRID_FILE).write_text(json.dumps({**spec, "prior": "lexical_prior"}))
    with pytest.raises(ModelFileError, match="'prior' needs a folder and labels"):
        load_student(exported, "onnx")
    (exported / HYBRID_FILE).write_text(json.dumps({**spec, "prior": None}))
    with pytest.raises(ModelFileError, match="format 2 goes with a lexical prior"):
        load_student(exported, "onnx")


def test_a_lexical_prior_without_the_match_features_is_a_config_error():
    with pytest.raises(ValueError, match="lexical_prior: true needs lexical_features: true"):
        CrossEncoderConfig(model="minilm-l6", lexical_prior=True)
