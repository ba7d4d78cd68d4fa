"""Label-prior calibration: the bias fit, how scorers apply it, `lref calibrate` / `lref predict`, and the pipeline's
held-out calibration pairs."""

import json

import numpy as np
import pytest
from helpers import run_lref

from lref.calibration import (
    CalibrationConfig,
    calibrate_scores,
    fit_label_bias,
    label_bias_for,
)
from lref.data.splits import normalise_query
from lref.data.synthetic import SyntheticCatalogConfig, generate_catalog
from lref.io import write_jsonl
from lref.labels import LabelError, get_scheme
from lref.models.calibrate import calibrate
from lref.predictions import ScoreResult

SCHEME = get_scheme("graded3")


def shifted_logits(n: int = 600, shift: float = 1.5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Informative logits whose first label is inflated by `shift` (a model that over-grades), with their gold."""
    rng = np.random.default_rng(seed)
    gold = rng.choice(3, size=n, p=[0.45, 0.45, 0.10])
    logits = rng.normal(0.0, 1.0, size=(n, 3))
    logits[np.arange(n), gold] += 2.0
    logits[:, 0] += shift
    return logits, gold


def test_the_fit_undoes_an_inflated_label_and_improves_the_objective():
    logits, gold = shifted_logits()
    bias = fit_label_bias(logits, gold)
    assert bias[0] == 0 and bias[1] > 0.5 and bias[2] > 0.5  # the other labels are raised against the inflated one
    document = calibrate_scores(logits, [_record(i, g) for i, g in enumerate(gold)], SCHEME)
    assert document["after"] > document["before"] + 0.05
    assert document["bias"] == {label: pytest.approx(b) for label, b in zip(SCHEME.labels, bias)}
    assert document["label_counts"] == {label: int((gold == i).sum()) for i, label in enumerate(SCHEME.labels)}


def test_a_model_that_needs_no_shift_keeps_a_zero_bias():
    gold = np.array([0, 1, 2] * 40)
    logits = np.eye(3)[gold] * 4.0  # every argmax already right: no move can strictly improve
    assert fit_label_bias(logits, gold).tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize(
    ("settings", "message"),
    [({"objective": "auc"}, "objective must be one of"), ({"step": 0}, "need 0 < step <= limit"),
     ({"rounds": 0}, "rounds must be >= 1"), ({"min_pairs": 0}, "min_pairs must be >= 1")],
)
def test_bad_settings_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        CalibrationConfig(**settings)


def test_too_few_or_unlabelled_pairs_are_refused():
    logits, gold = shifted_logits(n=20)
    with pytest.raises(ValueError, match="20 calibration pairs, fewer than min_pairs=50"):
        fit_label_bias(logits, gold)
    records = [_record(i, g) for i, g in enumerate(gold)]
    records[3].label = None
    with pytest.raises(ValueError, match="1 calibration pairs have no label"):
        calibrate_scores(logits, records, SCHEME, CalibrationConfig(min_pairs=5))


def test_score_result_adds_the_bias_once():
    logits = np.array([[2.0, 1.0, 0.0]])
    result = ScoreResult(["a"], SCHEME.labels, logits, bias=(0.0, 1.5, 0.0))
    assert result.logits.tolist() == [[2.0, 2.5, 0.0]] and result.predicted == ["Partial"]
    again = ScoreResult(result.ids, result.labels, result.logits)  # re-wrapping shifted logits keeps them
    assert np.array_equal(again.probs, result.probs)
    with pytest.raises(ValueError, match="2 bias values for 3 labels"):
        ScoreResult(["a"], SCHEME.labels, logits, bias=(0.0, 1.0))


def test_a_stored_calibration_must_match_the_scheme(tmp_path):
    assert label_bias_for(tmp_path, SCHEME) is None
    (tmp_path / "calibration.json").write_text(json.dumps({"bias": {"Exact": 0, "Partial": 0.5, "Irrelevant": -1}}))
    assert label_bias_for(tmp_path, SCHEME) == (0.0, 0.5, -1.0)
    with pytest.raises(LabelError, match="calibration.json: calibrated labels"):
        label_bias_for(tmp_path, "esci4")
    (tmp_path / "calibration.json").write_text("[1, 2]")
    with pytest.raises(LabelError, match="not a calibration file"):
        label_bias_for(tmp_path, SCHEME)


def _record(i, gold_index):
    from lref.data.records import Record

    return Record(id=str(i), query=f"q{i}", title="t", label=SCHEME.labels[int(gold_index)])


# ------------------------------------------------------------------------------------------ models, CLI and serving


@pytest.fixture(scope="module")
def catalog():
    return generate_catalog(SyntheticCatalogConfig(n_pairs=240, seed=5))


def test_lref_calibrate_and_predict_apply_the_bias_to_an_llm(tmp_path, monkeypatch, capsys, catalog):
    from lref.testing import build_tiny_causal_lm

    model = build_tiny_causal_lm(tmp_path / "lm", embedding_scale=10.0)
    data = tmp_path / "held_out.jsonl"
    write_jsonl(data, (r.to_dict() for r in catalog[:120]))
    code, out, err = run_lref(monkeypatch, capsys, "calibrate", str(model), "--data", str(data), "--format", "jsonl",
                              "--scheme", "graded3", "--step", "0.5")
    assert code == 0, err
    stored = json.loads((model / "calibration.json").read_text())
    assert f"weighted_f1 on 120 pairs: {stored['before']:.3f} -> {stored['after']:.3f}" in out
    assert stored["after"] >= stored["before"] and stored["model_kind"] == "llm"
    bias = np.array([stored["bias"][label] for label in SCHEME.labels])

    def predict(*flags):
        out_file = tmp_path / f"pred{len(flags)}.jsonl"
        code, _, err = run_lref(monkeypatch, capsys, "predict", "--model", str(model), "--data", str(data),
                                "--format", "jsonl", "--scheme", "graded3", "--out", str(out_file), *flags)
        assert code == 0, err
        rows = [json.loads(line) for line in out_file.read_text().splitlines()]
        return err, np.log([[row["probs"][label] for label in SCHEME.labels] for row in rows])

    err, calibrated = predict()
    assert "applying the label calibration" in err
    _, raw = predict("--no-calibration")
    # log-probabilities differ by the bias, up to each row's normaliser
    difference = calibrated - raw - bias
    assert np.allclose(difference - difference[:, :1], 0, atol=1e-4)


def test_calibrate_refuses_a_missing_folder_and_bad_settings(tmp_path, monkeypatch, capsys, catalog):
    data = tmp_path / "held_out.jsonl"
    write_jsonl(data, (r.to_dict() for r in catalog[:60]))
    code, out, err = run_lref(monkeypatch, capsys, "calibrate", str(tmp_path / "nope"), "--data", str(data))
    assert code != 0 and "is not a folder" in err + out
    code, out, err = run_lref(monkeypatch, capsys, "calibrate", str(tmp_path), "--data", str(data), "--objective",
                              "auc")
    assert code != 0 and "objective must be one of" in err + out
    with pytest.raises(FileNotFoundError, match="calibrate a folder you trained"):
        calibrate(CalibrationConfig(), tmp_path / "nope", catalog[:60])


def test_a_lexical_model_is_calibrated_through_the_library(tmp_path, catalog):
    from lref.baselines.lexical import LexicalConfig, LexicalModel

    folder = tmp_path / "lexical"
    LexicalModel(LexicalConfig(scheme="graded3", max_iter=20)).fit(catalog[:160]).save(folder)
    document = calibrate(CalibrationConfig(min_pairs=20), folder, catalog[160:], progress=False)
    assert json.loads((folder / "calibration.json").read_text())["bias"] == document["bias"]
    assert document["pairs"] == 80 and document["after"] >= document["before"]


# ------------------------------------------------------------------------------------------------------ pipeline


def test_pipeline_holds_calibration_queries_out_and_evaluates_calibrated(tmp_path):
    from test_pipeline import make_config, run, status

    from lref.pipeline import load_data, parse_config
    from lref.testing import build_tiny_causal_lm, build_tiny_encoder

    models = {"lm": str(build_tiny_causal_lm(tmp_path / "lm", embedding_scale=10.0)),
              "encoder": str(build_tiny_encoder(tmp_path / "enc"))}
    config = make_config(models, tmp_path / "run")
    config["stages"] = {name: config["stages"][name] for name in ("lexical", "zero-shot", "bert")}
    config["calibration"] = {"pairs": 60, "step": 0.5}

    data = load_data(parse_config(config))
    queries = {name: {normalise_query(r.query) for r in records}
               for name, records in (("train", data.train), ("eval", data.eval), ("calibration", data.calibration))}
    assert len(data.calibration) == 60
    assert not queries["calibration"] & queries["train"] and not queries["calibration"] & queries["eval"]

    lines = run(config, tmp_path)
    assert "60 calibration pairs" in lines[0]
    run_dir = tmp_path / "run"
    assert (run_dir / "stages/bert/model/calibration.json").is_file()
    assert (run_dir / "stages/lexical/model/calibration.json").is_file()
    assert (run_dir / "stages/zero-shot/calibration_zero-shot.json").is_file()  # never inside the shared model
    assert not (tmp_path / "lm/calibration.json").exists()
    metrics = json.loads((run_dir / "stages/bert/metrics_bert.json").read_text())
    stored = json.loads((run_dir / "stages/bert/model/calibration.json").read_text())
    assert metrics["calibration"]["bias"] == stored["bias"] and stored["pairs"] == 60
    assert set(metrics["calibration"]["uncalibrated"]) == {"accuracy", "macro_f1", "weighted_f1",
                                                           "over_estimate_share"}
    results = json.loads((run_dir / "results.json").read_text())
    assert results["eval"]["calibration_pairs"] == 60
    assert metrics["collapse"]["checked_on"] == "calibration" and metrics["collapse"]["pairs"] == 60

    # score_calibrated (the blind-set path) makes exactly the held-out predictions of the run, bias included
    from lref.pipeline import EvalSettings, score_calibrated
    from lref.predictions import read_predictions

    settings = EvalSettings(**config["eval"])
    for stage, system, kind, ref in (("bert", "bert", "encoder", run_dir / "stages/bert/model"),
                                     ("zero-shot", "zero-shot", "llm", models["lm"])):
        again = score_calibrated(system, kind, str(ref), data.eval, data.scheme, settings, run_dir / "stages" / stage)
        stored_predictions = read_predictions(run_dir / f"stages/{stage}/predictions_{system}.jsonl")
        assert [p.label for p in again.predictions()] == [p.label for p in stored_predictions]
        assert np.allclose([[p.probs[label] for label in again.labels] for p in stored_predictions], again.probs,
                           atol=1e-5)

    # A different fit re-evaluates without retraining; no calibration at all gives the stages new training data.
    config["calibration"]["objective"] = "accuracy"
    assert set(status(run(config, tmp_path)).values()) == {"evaluation"}
    assert json.loads((run_dir / "stages/bert/model/calibration.json").read_text())["objective"] == "accuracy"
    del config["calibration"]
    assert set(status(run(config, tmp_path)).values()) == {"running"}
    assert "calibration" not in json.loads((run_dir / "stages/bert/metrics_bert.json").read_text())
    assert not (run_dir / "stages/zero-shot/calibration_zero-shot.json").exists()


@pytest.mark.parametrize(
    ("calibration", "message"),
    [({"objective": "accuracy"}, r"calibration\.pairs: how many training pairs"),
     ({"pairs": 10}, r"calibration\.pairs: 10 is fewer than min_pairs \(50\)"),
     ({"pairs": 100, "objectiv": "accuracy"}, r"calibration\.objectiv: unknown key"),
     ([100], r"calibration: expected a mapping")],
)
def test_bad_calibration_settings_name_the_key(tmp_path, calibration, message):
    from test_pipeline import make_config

    from lref.pipeline import ConfigError, parse_config

    config = make_config({"lm": "gemma-3-270m", "encoder": "minilm-l6"}, tmp_path / "run")
    config["stages"] = {"lexical": {}}
    config["calibration"] = calibration
    with pytest.raises(ConfigError, match=message):
        parse_config(config)


def test_one_label_can_rise_against_two_that_sit_together():
    # An untuned model: Partial first, Irrelevant just below, Exact further down. Lowering Partial alone hands its
    # pairs to Irrelevant, so a search with Exact pinned finds nothing; raising Exact finds the informative split.
    rng = np.random.default_rng(1)
    gold = rng.choice(2, size=400)
    logits = np.stack([-2.2 + 0.8 * (gold == 0) + rng.normal(0, 0.2, 400), np.zeros(400), np.full(400, -0.3)], 1)
    bias = fit_label_bias(logits, gold)
    assert bias[0] == 0 and bias[1] < -1.5 and bias[2] < -1.5
    assert _weighted_f1(gold, (logits + bias).argmax(1)) > _weighted_f1(gold, logits.argmax(1)) + 0.3


def _weighted_f1(gold, predicted):
    from sklearn.metrics import f1_score

    return f1_score(gold, predicted, average="weighted")
