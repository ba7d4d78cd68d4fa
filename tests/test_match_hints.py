"""Match hints: the line naming the query words found, close or missing in the product text; models trained with it
record it, and every scorer that loads such a model adds it to the pairs it is given."""

import json

import numpy as np
import pytest

from lref.data.records import Record
from lref.labels import get_scheme
from lref.prompts import (
    MATCH_HINT,
    direct_prompt,
    match_hint,
    match_hint_manifest,
    product_fields,
    records_for_model,
    with_match_hints,
)

SCHEME = get_scheme("graded3")


@pytest.mark.parametrize(
    ("query", "title", "hint"),
    [
        ("angle bracket", "Simpson Strong-Tie 12-Gauge Angle", "found: angle; missing: bracket"),
        ("deck over", "BEHR Premium Textured DeckOver 1-gal.", "found: none; close: deck~deckover, over~deckover; "
                                                               "missing: none"),
        ("microwaves microwaves", "Whirlpool Over the Range Microwave", "found: microwaves; missing: none"),
        # misspellings are forgiven; unit spellings are not (`v` against `volt`)
        ("emergncy light 18v", "LED Emergency Light 18-Volt", "found: light, 18; close: emergncy~emergency; "
                                                              "missing: v"),
        ("l bracket", "Simpson Angle", "found: none; missing: l, bracket"),
    ],
)
def test_the_hint_names_found_close_and_missing_words(query, title, hint):
    assert match_hint(Record(id="1", query=query, title=title)) == hint


def test_hints_are_added_to_copies_and_rendered_in_every_input():
    records = [Record(id="1", query="angle bracket", title="Simpson Angle", label="Exact")]
    hinted = with_match_hints(records)
    assert MATCH_HINT not in records[0].meta  # the input is not changed
    assert with_match_hints(hinted)[0] is hinted[0]  # idempotent
    line = "Query words in product: found: angle; missing: bracket"
    assert product_fields(hinted[0]) == "Product: Simpson Angle\n" + line
    assert line in direct_prompt(hinted[0], SCHEME).pair and line not in direct_prompt(records[0], SCHEME).pair
    assert match_hint_manifest(hinted) == {"match_hints": True}
    assert match_hint_manifest(records + hinted) == {} and match_hint_manifest([]) == {}
    assert records_for_model(records, {"match_hints": True})[0].meta[MATCH_HINT] == "found: angle; missing: bracket"
    assert MATCH_HINT not in records_for_model(records, {"kind": "lora-adapter"})[0].meta
    assert MATCH_HINT not in records_for_model(records, None)[0].meta


def _logits(result) -> np.ndarray:
    return np.asarray(result.logits, dtype=np.float64)  # logits: a tiny random model's probabilities sit near 1/3


def test_a_pipeline_with_hints_trains_models_that_add_them_when_serving(tmp_path):
    from test_pipeline import make_config, run

    from lref.models.cross_encoder import CrossEncoderScorer
    from lref.models.factory import make_scorer
    from lref.models.loading import read_manifest
    from lref.models.scorer import LabelScorer, ScorerConfig
    from lref.pipeline import load_data, parse_config
    from lref.testing import build_tiny_causal_lm, build_tiny_encoder

    models = {"lm": str(build_tiny_causal_lm(tmp_path / "lm", embedding_scale=10.0)),
              "encoder": str(build_tiny_encoder(tmp_path / "enc"))}
    config = make_config(models, tmp_path / "run")
    config["stages"] = {name: config["stages"][name] for name in ("lexical", "bert", "llm-base")}
    plain = load_data(parse_config(config))
    config["data"]["match_hints"] = True
    data = load_data(parse_config(config))
    assert all(MATCH_HINT in r.meta for r in data.train + data.eval)
    assert [r.id for r in data.eval] == [r.id for r in plain.eval]
    assert data.train_hash != plain.train_hash and data.eval_hash != plain.eval_hash  # every stage sees new inputs

    run(config, tmp_path)
    stages = tmp_path / "run" / "stages"
    llm, bert = stages / "llm-base" / "model", stages / "bert" / "model"
    assert read_manifest(llm)["match_hints"] is True and read_manifest(bert)["match_hints"] is True

    # Loading the model adds the hints itself: plain records score as the hinted ones did in the evaluation.
    records = plain.eval[:12]
    loaded = make_scorer(llm, scheme="graded3", config=ScorerConfig(batch_size=4), backend="torch")
    assert loaded.config.match_hints
    bare = LabelScorer(loaded.model, loaded.tokenizer, SCHEME, ScorerConfig(batch_size=4))  # same model, no hints
    assert np.allclose(_logits(loaded.score(records)), _logits(bare.score(with_match_hints(records))), atol=1e-5)
    assert np.abs(_logits(bare.score(records)) - _logits(bare.score(with_match_hints(records)))).max() > 1e-4

    encoder = CrossEncoderScorer.from_pretrained(bert, config=ScorerConfig(batch_size=4, max_length=64))
    assert encoder.config.match_hints
    hinted = _logits(encoder.score(with_match_hints(records)))
    assert np.allclose(_logits(encoder.score(records)), hinted, rtol=0, atol=1e-7)
    bare_encoder = CrossEncoderScorer(encoder.model, encoder.tokenizer, SCHEME,
                                      ScorerConfig(batch_size=4, max_length=64))
    assert np.abs(_logits(bare_encoder.score(records)) - hinted).max() > 1e-6  # the hint changes the input (the
    # tiny random encoder's logits are about 0.01)
    predictions = {json.loads(line)["id"] for line in (stages / "bert" / "predictions_bert.jsonl").open()}
    assert {r.id for r in records} <= predictions
