"""The scorer contract, for every kind `lref.models.factory.make_scorer` builds (LLM, cross-encoder, ONNX export,
lexical; vLLM where it can run): input order kept, probabilities summing to 1, the label bias added exactly once,
match hints added exactly once, and empty input answered with an empty result."""

import copy
import dataclasses
import json
import shutil

import numpy as np
import pytest

pytest.importorskip("torch")
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning", "ignore::DeprecationWarning")

from lref.data.hints import MATCH_HINT, with_match_hints  # noqa: E402
from lref.data.synthetic import SyntheticCatalogConfig, generate_catalog  # noqa: E402
from lref.io import MANIFEST_NAME  # noqa: E402
from lref.labels import get_scheme  # noqa: E402
from lref.models import vllm_backend  # noqa: E402
from lref.models.factory import KINDS, build_scorer, make_scorer, model_kind, scorer_spec  # noqa: E402
from lref.models.scorer import Scorer, ScorerConfig  # noqa: E402
from lref.sharding import score_blocks  # noqa: E402

SCHEME = get_scheme("graded3")
KINDS_UNDER_TEST = ("llm", "encoder", "onnx", "lexical", "vllm")
HINTED_KINDS = ("llm", "encoder", "onnx", "vllm")
"""Kinds whose models read the match hint (the lexical features do not)."""
BIAS = (0.0, 1.25, -0.75)
GPU_TOLERANCE = 5e-2
"""How far two vLLM runs over the same pairs may differ (GPU kernels, bf16 weights, batch composition)."""


def tolerance(kind: str, cpu: float) -> float:
    return GPU_TOLERANCE if kind == "vllm" else cpu


def manifest(**extra) -> dict:
    return {"scheme": {"name": SCHEME.name, "labels": list(SCHEME.labels)}, "match_hints": True, **extra}


def build_encoder(folder, base):
    """A cross-encoder folder as training writes it, with a random head scaled so that its logits spread."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(str(base), num_labels=len(SCHEME))
    with torch.no_grad():
        model.classifier.weight.mul_(50.0)
    model.save_pretrained(str(folder))
    AutoTokenizer.from_pretrained(str(base)).save_pretrained(str(folder))
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest(kind="cross-encoder", config={"max_length": 64})))
    return folder


@pytest.fixture(scope="module")
def catalog():
    return generate_catalog(SyntheticCatalogConfig(n_pairs=240, seed=4))


@pytest.fixture(scope="module")
def records(catalog):
    return catalog[200:214]


@pytest.fixture(scope="module")
def models(tmp_path_factory, catalog):
    """One model folder per kind, each trained (as its manifest says) with match hints where it reads them."""
    from lref.baselines.lexical import LexicalConfig, LexicalModel
    from lref.models.onnx import ExportConfig, export_student
    from lref.testing import build_tiny_causal_lm, build_tiny_encoder

    root = tmp_path_factory.mktemp("contract")
    llm = build_tiny_causal_lm(root / "llm", embedding_scale=10.0)
    (llm / MANIFEST_NAME).write_text(json.dumps(manifest()))
    encoder = build_encoder(root / "encoder", build_tiny_encoder(root / "bert"))
    onnx = export_student(ExportConfig(model=str(encoder), output_dir=str(root / "onnx"), quantize=False))
    lexical = LexicalModel(LexicalConfig(max_iter=20, threads=1)).fit(catalog[:200]).save(root / "lexical")
    return {"llm": llm, "encoder": encoder, "onnx": onnx, "lexical": lexical, "vllm": llm}


VLLM_ENGINES: dict = {}
"""One vLLM engine per test session (a second one would not fit beside it on the GPU)."""


def scorer_for(models, kind, **kwargs):
    kwargs.setdefault("config", ScorerConfig(batch_size=4, max_length=256))
    if kind != "vllm":
        return make_scorer(models[kind], **kwargs)
    reason = vllm_backend.unavailable_reason()
    if reason:
        pytest.skip(f"vLLM cannot run here: {reason}")
    spec = scorer_spec(models[kind], **kwargs)  # the factory's decisions, applied to the one engine
    if "engine" not in VLLM_ENGINES:
        VLLM_ENGINES["engine"] = build_scorer(spec, backend="vllm")
    scorer = copy.copy(VLLM_ENGINES["engine"])
    scorer.scheme, scorer.config = spec.scheme, spec.config
    return scorer


def logits(result) -> np.ndarray:
    return np.asarray(result.logits, dtype=np.float64)


def test_the_factory_reads_each_kind_from_the_folder(models):
    assert set(KINDS) == {"llm", "encoder", "onnx", "lexical"}
    for kind in KINDS:
        assert model_kind(models[kind]) == kind
    with pytest.raises(ValueError, match="kind must be one of"):
        make_scorer(models["llm"], kind="tpu")


@pytest.mark.parametrize("kind", KINDS_UNDER_TEST)
def test_input_order_is_kept_and_probabilities_sum_to_one(models, records, kind):
    scorer = scorer_for(models, kind, calibrated=False)
    assert isinstance(scorer, Scorer) and scorer.scheme == SCHEME
    result = scorer.score(records)
    assert result.ids == [r.id for r in records] and result.labels == SCHEME.labels
    assert result.probs.shape == (len(records), len(SCHEME))
    assert np.allclose(result.probs.sum(axis=1), 1.0, atol=1e-9)
    backwards = scorer.score(records[::-1])
    assert backwards.ids == [r.id for r in records[::-1]]
    # each row stays with its pair
    assert np.allclose(logits(backwards)[::-1], logits(result), atol=tolerance(kind, 1e-4))
    assert [p.id for p in scorer.predict(records[:3])] == [r.id for r in records[:3]]


@pytest.mark.parametrize("kind", KINDS_UNDER_TEST)
def test_the_label_bias_is_added_exactly_once(models, records, kind, tmp_path):
    folder = shutil.copytree(models[kind], tmp_path / kind)  # the module's models stay uncalibrated
    copied = {**models, kind: folder}
    raw = scorer_for(copied, kind, calibrated=False).score(records)
    assert np.abs(logits(raw)).max() > 1e-3  # logits that a bias can visibly move

    explicit = scorer_for(copied, kind, calibrated=False, config=ScorerConfig(batch_size=4, max_length=256,
                                                                              label_bias=BIAS))
    assert explicit.config.label_bias == BIAS
    shifted = explicit.score(records)
    atol = tolerance(kind, 1e-5)
    assert np.allclose(logits(shifted) - logits(raw), BIAS, atol=atol)
    if kind != "vllm":  # GPU noise may flip a near tie
        assert shifted.predicted == [SCHEME.labels[i] for i in (logits(raw) + BIAS).argmax(axis=1)]
    # re-scoring in blocks (sharding, serving) keeps the scorer's bias and adds none of its own
    assert np.allclose(logits(score_blocks(explicit, records, block_size=len(records))), logits(shifted),
                       atol=tolerance(kind, 1e-6))

    stored = dict(zip(SCHEME.labels, (0.0, -0.5, 0.9)))
    (folder / "calibration.json").write_text(json.dumps({"bias": stored}))
    calibrated = scorer_for(copied, kind).score(records)
    assert np.allclose(logits(calibrated) - logits(raw), list(stored.values()), atol=atol)
    # an explicit bias replaces the folder's calibration; the two never add up
    both = scorer_for(copied, kind, config=ScorerConfig(batch_size=4, max_length=256, label_bias=BIAS))
    assert np.allclose(logits(both.score(records)) - logits(raw), BIAS, atol=atol)


@pytest.mark.parametrize("kind", HINTED_KINDS)
def test_match_hints_are_added_exactly_once(models, records, kind):
    scorer = scorer_for(models, kind, calibrated=False)
    assert scorer.config.match_hints  # the manifest says the model trained with hints
    bare = copy.copy(scorer)  # the same model, reading no hints
    bare.config = dataclasses.replace(scorer.config, match_hints=False)
    hinted = with_match_hints(records)
    plain = logits(scorer.score(records))
    atol = tolerance(kind, 1e-5)
    assert np.allclose(plain, logits(bare.score(hinted)), atol=atol)  # plain pairs get their hint
    assert np.allclose(logits(scorer.score(hinted)), plain, atol=atol)  # hinted pairs get no second one
    assert np.abs(logits(bare.score(records)) - plain).max() > 1e-4  # and the hint changes what the model reads
    # a record's own hint is kept as it is, neither replaced nor joined by another
    custom = [dataclasses.replace(r, meta={**r.meta, MATCH_HINT: "found: none; missing: everything"})
              for r in records]
    assert np.allclose(logits(scorer.score(custom)), logits(bare.score(custom)), atol=atol)
    assert np.abs(logits(scorer.score(custom)) - plain).max() > 1e-4


def test_lexical_models_read_no_hints(models):
    assert not scorer_for(models, "lexical").config.match_hints


@pytest.mark.parametrize("kind", KINDS_UNDER_TEST)
def test_empty_input_gives_an_empty_result(models, kind):
    scorer = scorer_for(models, kind, config=ScorerConfig(batch_size=4, max_length=256, label_bias=BIAS))
    result = scorer.score([])
    assert len(result) == 0 and result.ids == [] and result.labels == SCHEME.labels
    assert result.probs.shape == (0, len(SCHEME)) and result.predictions() == []
