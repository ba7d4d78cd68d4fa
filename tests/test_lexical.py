"""The lexical baseline: features, the scikit-learn contract, save/load, quality on the synthetic catalog."""

import numpy as np
import pytest

from lref.baselines.lexical import (
    FEATURE_NAMES,
    LexicalConfig,
    LexicalFeatures,
    LexicalModel,
)
from lref.data import split_by_query
from lref.data.records import DataError, Record
from lref.data.synthetic import SyntheticCatalogConfig, generate_catalog
from lref.data.text import numbers_and_units, tokenize
from lref.metrics import evaluate


@pytest.fixture(scope="module")
def splits():
    catalog = generate_catalog(SyntheticCatalogConfig(n_pairs=3000, seed=1))
    return split_by_query(catalog, {"train": 0.7, "test": 0.3}, seed=0)


def test_tokens_numbers_and_units_are_normalised():
    assert tokenize('DeWalt 18V 1/2" drill') == ["dewalt", "18", "v", "1/2", "in", "drill"]
    numbers, units = numbers_and_units(tokenize("garden hose 50 feet 5/8 in."))
    assert numbers == {"50", "5/8"} and units == {"50 ft", "5/8 in"}


def test_features_reward_matching_titles():
    train = [Record(str(i), "cordless drill", t, "Exact") for i, t in enumerate(["DeWalt cordless drill"] * 3)]
    features = LexicalFeatures().fit(train)
    pairs = [
        Record("a", "dewalt 20v drill", "DeWalt 20V MAX cordless drill"),
        Record("b", "dewalt 20v drill", "Ryobi 18V circular saw"),
    ]
    matrix = features.transform(pairs)
    column = {name: matrix[:, i] for i, name in enumerate(FEATURE_NAMES)}
    assert matrix.shape == (2, len(FEATURE_NAMES))
    assert column["word_cov_q"].tolist() == [1.0, 0.25]  # only the unit "v" of "20v" is in the saw title
    assert column["bm25"][0] > column["bm25"][1] and column["char_tfidf_cos"][0] > column["char_tfidf_cos"][1]
    assert column["unit_cov"].tolist() == [1.0, 0.0] and column["number_missing"].tolist() == [0.0, 1.0]
    assert column["last_in_title"].tolist() == [1.0, 0.0]
    assert column["known_brand_missing"].tolist() == [0.0, 1.0]  # "dewalt" is a known brand absent from the saw


def test_per_pair_features_equal_the_sparse_path(splits):
    """The per-pair path (a served request's few pairs) and the sparse path (many pairs) give the same matrix, on the
    catalog and on awkward text: no query words, repeated words, accents, symbols, a brand field, one character."""
    train, test = splits["train"], splits["test"][:400]
    features = LexicalFeatures().fit(train)
    awkward = [
        Record("e1", "!!", "Cordless drill"), Record("e2", "drill drill drill", "drill bit drill"),
        Record("e3", "café façade 12\" pvc", "Café façade PVC pipe 12 in."), Record("e4", "x", "y"),
        Record("e5", "ryobi saw", "18V circular saw", brand="Ryobi"), Record("e6", "50 ft hose ★", "★★ hose 50-ft"),
    ]
    for records in (test, awkward):
        sparse = features.transform(records, method="sparse")
        per_pair = features.transform(records, method="per_pair")
        assert sparse.shape == per_pair.shape == (len(records), len(FEATURE_NAMES))
        np.testing.assert_allclose(per_pair, sparse, rtol=1e-7, atol=1e-9)
    assert np.any(features.transform(awkward[1:2])[0] != features.transform(awkward[:1])[0])
    assert features.transform([], method="per_pair").shape == (0, len(FEATURE_NAMES))
    with pytest.raises(ValueError, match="method must be one of auto, sparse, per_pair"):
        features.transform(test, method="fast")


@pytest.mark.parametrize("classifier", ["gbdt", "logistic"])
def test_fit_predict_beats_the_majority_floor(splits, classifier):
    model = LexicalModel(LexicalConfig(classifier=classifier))
    assert model.fit(splits["train"]) is model
    predictions = model.predict(splits["test"])
    assert [p.id for p in predictions] == [r.id for r in splits["test"]]
    probs = np.array([[p.probs[label] for label in model.scheme.labels] for p in predictions])
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    assert all(p.topk[0] == p.label for p in predictions)
    result = evaluate(splits["test"], predictions, "graded3", bootstrap=0)
    assert result["accuracy"] > result["majority_floor"] + 0.1
    assert result["macro_f1"] > 0.5


@pytest.mark.parametrize("classifier", ["gbdt", "logistic"])
def test_save_and_load_give_the_same_probabilities(splits, tmp_path, classifier):
    model = LexicalModel(LexicalConfig(classifier=classifier, query_context=classifier == "gbdt"))
    model.fit(splits["train"][:600])
    model.save(tmp_path / "lexical")
    assert sorted(p.name for p in (tmp_path / "lexical").iterdir()) == ["lexical.skops", "lref_manifest.json"]
    loaded = LexicalModel.load(tmp_path / "lexical")
    np.testing.assert_array_equal(loaded.predict_proba(splits["test"]), model.predict_proba(splits["test"]))
    assert loaded.features_.known_brands_ == model.features_.known_brands_
    manifest = (tmp_path / "lexical" / "lref_manifest.json").read_text()
    assert '"kind": "lexical"' in manifest and '"n_train": 600' in manifest
    with pytest.raises(FileNotFoundError, match="not a saved lexical model"):
        LexicalModel.load(tmp_path)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="classifier must be one of"):
        LexicalConfig(classifier="svm")
    with pytest.raises(DataError, match="has no label"):
        LexicalModel().fit([Record("1", "q", "t")])
    with pytest.raises(DataError, match="single label"):
        LexicalModel().fit([Record("1", "q", "t", "Exact"), Record("2", "q", "u", "Exact")])
    with pytest.raises(RuntimeError, match="before fit"):
        LexicalModel().predict([Record("1", "q", "t")])


def test_saved_model_is_no_pickle_and_an_old_joblib_folder_is_refused_unless_trusted(splits, tmp_path):
    import pickle
    import zipfile

    import joblib

    from lref.baselines.lexical import LEGACY_PICKLE, MODEL_FILE, UnsafeModelError

    model = LexicalModel().fit(splits["train"][:600])
    folder = model.save(tmp_path / "new")
    with zipfile.ZipFile(folder / MODEL_FILE) as archive:  # skops: a zip of JSON schema and .npy arrays, no pickle
        assert "schema.json" in archive.namelist()
        assert not any(archive.read(name).startswith(b"\x80") for name in archive.namelist())
    # an old folder: the joblib pickle the previous save wrote (features object, classifier, config, train info)
    old = tmp_path / "old"
    old.mkdir()
    joblib.dump({"config": model.config.__dict__, "features": model.features_, "classifier": model.classifier_,
                 "train_info": model.train_info_}, old / LEGACY_PICKLE)
    with pytest.raises(UnsafeModelError, match="runs any code it holds; retrain") as error:
        LexicalModel.load(old)
    assert error.value.path == str(old / LEGACY_PICKLE)
    trusted = LexicalModel.load(old, trust_pickle=True)
    np.testing.assert_array_equal(trusted.predict_proba(splits["test"]), model.predict_proba(splits["test"]))
    # saving over an old folder replaces the pickle
    trusted.save(old)
    assert not (old / LEGACY_PICKLE).exists() and LexicalModel.load(old).train_info_ == model.train_info_
    # a pickle renamed to the new name is refused too, and so is a damaged file
    (tmp_path / "evil").mkdir()
    (tmp_path / "evil" / MODEL_FILE).write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(UnsafeModelError, match="not a readable saved lexical model"):
        LexicalModel.load(tmp_path / "evil")


def test_a_saved_model_holding_an_unexpected_type_is_refused(tmp_path):
    import skops.io as sio
    from sklearn.ensemble import RandomForestClassifier

    from lref.baselines.lexical import MODEL_FILE, UnsafeModelError

    x, y = np.random.default_rng(0).normal(size=(40, 3)), np.arange(40) % 2
    (tmp_path / "odd").mkdir()
    sio.dump({"format": 1, "classifier": RandomForestClassifier(n_estimators=2).fit(x, y)},
             tmp_path / "odd" / MODEL_FILE)
    untrusted = sio.get_untrusted_types(file=tmp_path / "odd" / MODEL_FILE)
    if not untrusted:  # skops trusts every type of this forest: nothing to refuse
        pytest.skip("skops trusts RandomForestClassifier's types")
    with pytest.raises(UnsafeModelError, match="holds types lref does not load"):
        LexicalModel.load(tmp_path / "odd")
