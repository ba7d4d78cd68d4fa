"""The optional vLLM backend: backend selection, and the clear refusal where vLLM cannot run (no GPU here)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
from helpers import run_lref

from lref.models import vllm_backend
from lref.models.factory import make_scorer
from lref.models.scorer import LabelScorer
from lref.models.vllm_backend import BackendUnavailable, VLLMScorer, resolve_backend

torch = pytest.importorskip("torch")

needs_no_vllm = pytest.mark.skipif(vllm_backend.available(), reason="vLLM can run here; this checks the refusal")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from lref.testing import build_tiny_causal_lm

    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny_lm"))


@needs_no_vllm
def test_vllm_refuses_with_a_clear_message(tiny_model):
    reason = vllm_backend.unavailable_reason()
    assert reason is not None
    assert "pip install 'lref[vllm]'" in reason or "needs a CUDA GPU" in reason
    with pytest.raises(BackendUnavailable, match=r"pip install 'lref\[vllm\]'|vLLM needs a CUDA GPU"):
        VLLMScorer(tiny_model, "graded3")
    with pytest.raises(BackendUnavailable, match=r"pip install 'lref\[vllm\]'|vLLM needs a CUDA GPU"):
        make_scorer(tiny_model, scheme="graded3", backend="vllm")


@needs_no_vllm
def test_auto_falls_back_to_the_torch_scorer(tiny_model):
    assert resolve_backend("auto") == "torch"
    scorer = make_scorer(tiny_model, scheme="graded3", backend="auto")
    assert isinstance(scorer, LabelScorer)
    assert scorer.scheme.name == "graded3"


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="backend must be one of auto, torch, vllm, not 'tpu'"):
        resolve_backend("tpu")


@needs_no_vllm
def test_predict_with_vllm_backend_fails_clearly(tmp_path, monkeypatch, capsys, tiny_model):
    from lref.data import write_records
    from lref.data.records import Record

    data = tmp_path / "pairs.jsonl"
    write_records(data, [Record("a", "drill", "cordless drill", label="Exact")])
    code, _, err = run_lref(
        monkeypatch, capsys, "predict", "-m", str(tiny_model), "-d", str(data), "-o", str(tmp_path / "p.jsonl"),
        "--scheme", "graded3", "--backend", "vllm",
    )
    assert code == 2
    assert "--backend" in err and ("lref[vllm]" in err or "CUDA GPU" in err)
    assert not (tmp_path / "p.jsonl").exists()
