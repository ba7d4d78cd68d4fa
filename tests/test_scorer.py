import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest

from lref.data.records import Record
from lref.labels import LabelScheme, get_scheme
from lref.models.scorer import LabelScorer, ScorerConfig
from lref.predictions import ScoreResult
from lref.prompts import (
    ANSWER_CUE,
    Prompt,
    VerbalizationError,
    direct_prompt,
    truncate_pair,
)

torch = pytest.importorskip("torch")

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lref.testing import build_tiny_causal_lm

    folder = build_tiny_causal_lm(tmp_path_factory.mktemp("tiny_lm"))
    model = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    return folder, model, tokenizer


@pytest.fixture(scope="module")
def hybrid(tiny):
    """The tiny model with one sliding and one full attention layer and final logit soft-capping, like real Gemma-3."""
    from transformers import AutoConfig, AutoModelForCausalLM

    folder, _, tokenizer = tiny
    config = AutoConfig.from_pretrained(str(folder))
    config.layer_types = ["sliding_attention", "full_attention"]
    config.final_logit_softcapping = 3.0
    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_config(config).eval()
    return model, tokenizer


def make_records(n=11):
    """Pairs of very different lengths: a few tokens up to well past the tiny model's 64-token sliding window."""
    records = []
    for i in range(n):
        title = "DeWalt 20V cordless drill driver kit " * (1 + (i * 5) % 9)
        description = "sturdy black steel for home use, pack of 10 " * (i * 2) if i % 3 == 0 else None
        records.append(Record(f"r{i}", "drill 18v " * (1 + i % 4), title, description=description, brand="Acme"))
    return records


def assert_agree(model, tokenizer, records, batch_sizes, scheme="graded3", **kwargs):
    naive = LabelScorer(model, tokenizer, scheme, ScorerConfig(batch_size=4, fast=False, **kwargs)).score(records)
    for batch_size in batch_sizes:
        fast = LabelScorer(model, tokenizer, scheme, ScorerConfig(batch_size=batch_size, **kwargs)).score(records)
        assert fast.ids == [r.id for r in records]
        assert np.abs(fast.probs - naive.probs).max() < TOLERANCE
        assert np.abs(fast.logits - naive.logits).max() < 1e-3
    return naive


def test_prompts_span_the_sliding_window(tiny):
    _, model, tokenizer = tiny
    scorer = LabelScorer(model, tokenizer, "graded3")
    encoded = scorer.encode([direct_prompt(r, scorer.scheme) for r in make_records()])
    window = model.config.sliding_window
    pair_lengths = [len(pair) for _, pair in encoded]
    assert len(encoded[0][0]) > window  # the prefix alone outgrows the window
    assert min(pair_lengths) < window / 2 and max(pair_lengths) > 2 * window


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_fast_matches_naive(tiny, attn):
    _, model, tokenizer = tiny
    model.set_attn_implementation(attn)
    try:
        naive = assert_agree(model, tokenizer, make_records(), batch_sizes=(1, 3, 16))
    finally:
        model.set_attn_implementation("sdpa")
    assert naive.probs.std(axis=0).max() > 1e-3  # the pairs really get different scores


def test_fast_matches_naive_hybrid_layers_and_softcapping(hybrid):
    model, tokenizer = hybrid
    assert_agree(model, tokenizer, make_records(), batch_sizes=(1, 5))


def test_fast_matches_naive_with_several_prefixes(tiny):
    _, model, tokenizer = tiny

    def prompt_fn(record, scheme):
        prompt = direct_prompt(record, scheme)
        rules = "Rule: brand mismatch means Partial.\n" * (int(record.id[1:]) % 3)
        return Prompt(prompt.prefix + rules, prompt.pair)

    records = make_records(8)
    naive = LabelScorer(model, tokenizer, "graded3", ScorerConfig(fast=False), prompt_fn=prompt_fn).score(records)
    fast = LabelScorer(model, tokenizer, "graded3", ScorerConfig(batch_size=3), prompt_fn=prompt_fn).score(records)
    assert np.abs(fast.probs - naive.probs).max() < TOLERANCE


def test_output_order_follows_input_and_prefix_cache_is_not_mutated(tiny):
    _, model, tokenizer = tiny
    records = make_records()
    scorer = LabelScorer(model, tokenizer, "graded3", ScorerConfig(batch_size=4))
    first = scorer.score(records)
    # three batches ran on the shared prefix cache: it still holds one row and the prefix only
    (prefix, cache), = scorer._prefix_caches.items()
    window = model.config.sliding_window
    assert [cache.get_seq_length(i) for i in range(len(cache.layers))] == [len(prefix)] * len(cache.layers)
    assert [tuple(layer.keys.shape[:1] + layer.keys.shape[2:3]) for layer in cache.layers] == [(1, window - 1)] * 2
    reordered = scorer.score(records[::-1])
    assert reordered.ids == [r.id for r in records[::-1]]
    np.testing.assert_allclose(reordered.probs, first.probs[::-1], atol=1e-6)
    alone = scorer.score(records[3:4])
    np.testing.assert_allclose(alone.probs[0], first.probs[3], atol=1e-6)


def test_fast_path_never_runs_the_vocabulary_head(tiny):
    _, model, tokenizer = tiny
    calls = []
    handle = model.get_output_embeddings().register_forward_hook(lambda *args: calls.append(1))
    try:
        LabelScorer(model, tokenizer, "graded3").score(make_records(3))
        assert calls == []
        LabelScorer(model, tokenizer, "graded3", ScorerConfig(fast=False)).score(make_records(3))
        assert calls
    finally:
        handle.remove()


def test_truncation_cuts_the_pair_only_and_keeps_the_cue(tiny):
    _, model, tokenizer = tiny
    records = make_records()
    scorer = LabelScorer(model, tokenizer, "graded3", ScorerConfig(max_length=160))
    prompts = [direct_prompt(r, scorer.scheme) for r in records]
    encoded = scorer.encode(prompts)
    full_prefix = LabelScorer(model, tokenizer, "graded3", ScorerConfig(max_length=None)).encode(prompts[:1])[0][0]
    cue = tokenizer(ANSWER_CUE, add_special_tokens=False)["input_ids"]
    for prefix, pair in encoded:
        assert prefix == full_prefix
        assert len(prefix) + len(pair) <= 160
        assert pair[-len(cue):] == cue
    assert_agree(model, tokenizer, records, batch_sizes=(4,), max_length=160)
    with pytest.raises(ValueError, match="prefix alone"):
        LabelScorer(model, tokenizer, "graded3", ScorerConfig(max_length=20)).score(records[:1])


def test_truncate_pair():
    assert truncate_pair([1, 2, 3], 5, 2) == [1, 2, 3]
    assert truncate_pair([1, 2, 3, 4, 5, 6], 4, 2) == [1, 2, 5, 6]
    assert truncate_pair([1, 2, 3, 4, 5, 6], 2, 3) == [5, 6]


def test_colliding_label_tokens_raise(tiny):
    _, model, tokenizer = tiny
    scheme = LabelScheme("clash", ("Exact", "Exact-ish", "Irrelevant"), ("a", "b", "c"))
    with pytest.raises(VerbalizationError, match="same token"):
        LabelScorer(model, tokenizer, scheme)


def test_topk_is_sorted_by_probability():
    logits = np.array([[0.0, 2.0, 1.0, -1.0], [3.0, 3.0, 0.0, 5.0]], dtype=np.float32)
    result = ScoreResult(["a", "b"], ("W", "X", "Y", "Z"), logits, top_k=3)
    np.testing.assert_allclose(result.probs.sum(axis=1), 1.0)
    assert result.topk_labels() == [["X", "Y", "W"], ["Z", "W", "X"]]  # ties keep scheme order
    assert result.predicted == ["X", "Z"]
    predictions = result.predictions()
    assert [p.id for p in predictions] == ["a", "b"]
    assert predictions[0].label == "X" and predictions[0].topk == ["X", "Y", "W"]
    assert set(predictions[0].probs) == {"W", "X", "Y", "Z"}
    assert predictions[0].probs["X"] == pytest.approx(np.exp(2) / np.exp([0, 2, 1, -1]).sum())
    assert ScoreResult(["a"], ("W", "X"), [[1.0, 0.0]], top_k=5).topk_labels() == [["W", "X"]]


def test_scorer_topk_and_empty_input(tiny):
    _, model, tokenizer = tiny
    scorer = LabelScorer(model, tokenizer, get_scheme("lref5"), ScorerConfig(top_k=2))
    predictions = scorer.predict(make_records(4))
    for prediction in predictions:
        assert len(prediction.topk) == 2 and prediction.topk[0] == prediction.label
        ranked = sorted(prediction.probs, key=prediction.probs.get, reverse=True)
        assert prediction.topk == ranked[:2]
    empty = scorer.score([])
    assert len(empty) == 0 and empty.logits.shape == (0, 5)


def test_config_is_validated():
    with pytest.raises(ValueError, match="batch_size"):
        ScorerConfig(batch_size=0)
    with pytest.raises(ValueError, match="top_k"):
        ScorerConfig(top_k=0)
    assert all("help" in f.metadata for f in ScorerConfig.__dataclass_fields__.values())


@pytest.mark.smoke
def test_fast_matches_naive_on_real_gemma():
    from lref.models.loading import load_causal_lm

    try:
        model, tokenizer, _ = load_causal_lm("gemma-3-270m")
    except (FileNotFoundError, ImportError) as error:
        pytest.skip(f"real Gemma-3-270M not available: {error}")
    records = [
        Record("1", "cordless drill", "DeWalt 20V MAX Cordless Drill/Driver Kit"),
        Record("2", "garden hose 50 ft", "Flexzilla 50 ft. x 5/8 in. Garden Hose in Green"),
        Record("3", "ceiling fan", "Replacement Light Kit for Hampton Bay Ceiling Fans", brand="Hampton Bay"),
        Record("4", "white paint", "BEHR Premium Plus 1 gal. Ultra Pure White Flat Interior Paint"),
        Record("5", "toilet", "Glacier Bay 2-piece 1.28 GPF High Efficiency Single Flush Elongated Toilet in White"),
        Record("6", "door knob", "Kwikset Tylo Satin Nickel Passage Knob"),
        Record("7", "led bulb 60w", "Philips 60-Watt Equivalent A19 Dimmable LED Light Bulb Soft White (4-Pack)"),
        Record("8", "vinyl flooring", "TrafficMASTER Allure 6 in. x 36 in. Cherry Resilient Vinyl Plank Flooring",
               description="Easy to install floating floor, water resistant, for any room of the home " * 3),
        Record("9", "hammer", "Estwing 16 oz. Steel Claw Hammer"),
        Record("10", "mulch", "Vigoro 2 cu. ft. Brown Mulch"),
    ]
    naive = LabelScorer(model, tokenizer, "graded3", ScorerConfig(batch_size=5, fast=False)).score(records)
    fast = LabelScorer(model, tokenizer, "graded3", ScorerConfig(batch_size=4)).score(records)
    assert np.abs(fast.probs - naive.probs).max() < TOLERANCE

    from lref.device import cpu_has_native_bf16

    if not cpu_has_native_bf16():
        pytest.skip("this CPU has no native bf16, so bf16 scoring is not offered here")
    bf16 = LabelScorer(model, tokenizer, "graded3", ScorerConfig(batch_size=4, bf16=True)).score(records)
    assert np.abs(bf16.probs - fast.probs).max() < 0.05  # bf16 keeps 8 bits of mantissa: close, not equal
    assert np.abs(bf16.probs - fast.probs).max() > 0  # and it really ran in bf16
    confident = np.sort(fast.probs, axis=1)[:, -1] - np.sort(fast.probs, axis=1)[:, -2] > 0.1
    assert (bf16.probs.argmax(axis=1) == fast.probs.argmax(axis=1))[confident].all()


# ------------------------------------------------------------------ CLI: lref predict
def run_cli(monkeypatch, capsys, *args):
    import sys

    from lref.cli import main

    monkeypatch.setattr(sys, "argv", ["lref", *args])
    code = 0
    try:
        main()
    except SystemExit as done:
        code = done.code or 0
    return code, capsys.readouterr()


@pytest.fixture()
def pairs_file(tmp_path):
    from lref.data import write_records

    path = tmp_path / "pairs.jsonl"
    write_records(path, make_records(5))
    return path


def test_cli_predict_writes_one_line_per_pair(tiny, pairs_file, tmp_path, monkeypatch, capsys):
    from lref.predictions import read_predictions

    folder, model, tokenizer = tiny
    out = tmp_path / "pred.jsonl"
    code, captured = run_cli(
        monkeypatch, capsys, "predict", "--model", str(folder), "--data", str(pairs_file), "--out", str(out),
        "--top-k", "2", "--batch-size", "2",
    )
    assert code == 0, captured.err
    predictions = read_predictions(out, get_scheme("graded3"))
    assert [p.id for p in predictions] == [f"r{i}" for i in range(5)]
    for p in predictions:
        assert set(p.probs) == {"Exact", "Partial", "Irrelevant"} and len(p.topk) == 2 and p.topk[0] == p.label
    from lref.data import load_records

    expected = LabelScorer(model, tokenizer, "graded3", ScorerConfig(fast=False)).score(load_records(pairs_file))
    got = np.array([[p.probs[label] for label in expected.labels] for p in predictions])
    assert np.abs(got - expected.probs).max() < TOLERANCE


def test_cli_predict_takes_the_scheme_from_the_manifest_and_refuses_another(
    tiny, pairs_file, tmp_path, monkeypatch, capsys
):
    import json
    import shutil

    from lref.predictions import read_predictions

    folder = tmp_path / "model"
    shutil.copytree(tiny[0], folder)
    manifest = {"scheme": {"name": "esci4", "labels": list(get_scheme("esci4").labels)}}
    (folder / "lref_manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "pred.jsonl"
    code, captured = run_cli(monkeypatch, capsys, "predict", "-m", str(folder), "-d", str(pairs_file), "-o", str(out))
    assert code == 0, captured.err
    assert set(read_predictions(out)[0].probs) == set(get_scheme("esci4").labels)
    code, captured = run_cli(
        monkeypatch, capsys, "predict", "-m", str(folder), "-d", str(pairs_file), "-o", str(tmp_path / "x.jsonl"),
        "--scheme", "graded3",
    )
    assert code == 2
    assert "trained on label scheme 'esci4'" in captured.err
    assert not (tmp_path / "x.jsonl").exists()
