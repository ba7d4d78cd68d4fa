"""The optional vLLM backend: backend selection, and the clear refusal where vLLM cannot run (no GPU here)."""

import os
from pathlib import Path

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


@pytest.fixture
def fake_vllm(tmp_path, monkeypatch, tiny_model):
    """VLLMScorer made to run here: vLLM "available", a stand-in engine, and `tiny_model` treated as an adapter
    whose merged copy goes to a temporary folder under tmp_path/tmp. Returns the stand-in engine's record."""
    import sys
    import tempfile
    import types

    from transformers import AutoModelForCausalLM, AutoTokenizer

    import lref.models.loading as loading

    model, tokenizer = AutoModelForCausalLM.from_pretrained(str(tiny_model)), AutoTokenizer.from_pretrained(
        str(tiny_model))
    monkeypatch.setattr(loading, "is_adapter", lambda folder: True)
    monkeypatch.setattr(loading, "load_causal_lm", lambda folder, merge_adapter=True: (model, tokenizer, None))
    monkeypatch.setattr(vllm_backend, "unavailable_reason", lambda: None)
    engine = {"fail": False, "folders": []}

    class LLM:
        def __init__(self, model, **kwargs):
            assert (Path(model) / "config.json").is_file()  # the merged copy exists while the engine starts
            engine["folders"].append(Path(model))
            if engine["fail"]:
                raise RuntimeError("CUDA out of memory")

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=LLM))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    engine["tmp"] = tmp_path / "tmp"
    return engine


def leftovers(engine):
    return sorted(p.name for p in engine["tmp"].iterdir() if p.name.startswith(vllm_backend.EXPORT_PREFIX))


def test_merged_adapter_copy_is_removed_on_close_and_on_leaving_a_with_block(fake_vllm, tiny_model):
    scorer = VLLMScorer(tiny_model, "graded3")
    folder = scorer.export_folder
    assert folder is not None and folder.parent == fake_vllm["tmp"] and (folder / "config.json").is_file()
    scorer.close()
    assert not folder.exists() and scorer.export_folder is None and leftovers(fake_vllm) == []
    scorer.close()  # idempotent
    with VLLMScorer(tiny_model, "graded3") as scorer:
        folder = scorer.export_folder
        assert folder.is_dir()
    assert not folder.exists() and leftovers(fake_vllm) == []


def test_merged_adapter_copy_is_removed_when_the_engine_fails_or_the_scorer_is_dropped(fake_vllm, tiny_model):
    import gc

    fake_vllm["fail"] = True
    with pytest.raises(RuntimeError, match="out of memory"):
        VLLMScorer(tiny_model, "graded3")
    assert len(fake_vllm["folders"]) == 1 and leftovers(fake_vllm) == []
    fake_vllm["fail"] = False
    scorer = VLLMScorer(tiny_model, "graded3")
    assert len(leftovers(fake_vllm)) == 1
    del scorer
    gc.collect()
    assert leftovers(fake_vllm) == []
