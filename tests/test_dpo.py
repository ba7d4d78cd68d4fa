"""Stage 3 DPO: mining on hand-built scores, the collapse rule, TRL inputs, training on a tiny model, skip, CLI."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

from helpers import run_lref  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    AutoTokenizer,
    TrainerControl,
    TrainerState,
)

from lref.data import write_records  # noqa: E402
from lref.data.records import DataError, Record  # noqa: E402
from lref.labels import get_scheme  # noqa: E402
from lref.metrics import evaluate  # noqa: E402
from lref.models.loading import MANIFEST_NAME, load_causal_lm  # noqa: E402
from lref.models.scorer import LabelScorer, ScorerConfig  # noqa: E402
from lref.predictions import ScoreResult  # noqa: E402
from lref.prompts import direct_prompt, encode_prompt  # noqa: E402
from lref.prompts.cot import cot_prompt  # noqa: E402
from lref.stages.dpo import (  # noqa: E402
    PAIRS_FILE,
    DPOStageConfig,
    PreferencePair,
    chosen_collapsed,
    cot_mistakes,
    cot_pairs,
    guard_winner,
    mine_pairs,
    own_completion,
    preference_example,
    split_guard,
    train_dpo,
)
from lref.stages.sft import SFTStageConfig, train_sft  # noqa: E402
from lref.teachers.base import Explanation  # noqa: E402
from lref.testing import build_tiny_causal_lm  # noqa: E402
from lref.training.examples import TextExample, completion_ids, text_completion_ids  # noqa: E402
from lref.training.lora import train_sft_examples  # noqa: E402

SCHEME = get_scheme("graded3")  # Exact, Partial, Irrelevant
WORDS = ["drill", "hose", "fan", "brass", "steel", "white", "black", "pack"]


# -- mining on hand-built scores ---------------------------------------------------------------------------------------


def _hand_built():
    """Five records and their label probabilities (scheme order Exact, Partial, Irrelevant)."""
    rows = [
        ("ok", "Exact", [0.7, 0.2, 0.1]),        # right
        ("over2", "Partial", [0.6, 0.3, 0.1]),   # Exact > gold Partial (rank 2): over-estimate
        ("over3", "Irrelevant", [0.5, 0.3, 0.2]),  # Exact, gold at rank 3: over-estimate
        ("under2", "Exact", [0.35, 0.45, 0.2]),  # Partial < gold Exact (rank 2): under-estimate
        ("over2b", "Irrelevant", [0.1, 0.5, 0.4]),  # Partial > gold Irrelevant (rank 2): over-estimate
    ]
    records = [Record(id=i, query=f"q {i}", title=f"t {i}", label=label) for i, label, _ in rows]
    scores = ScoreResult([i for i, _, _ in rows], SCHEME.labels, np.log(np.array([p for _, _, p in rows])))
    return records, scores


def test_mining_report_and_pairs_with_top2():
    records, scores = _hand_built()
    pairs, report = mine_pairs(records, scores, SCHEME, top_k=2)
    assert report["errors"] == 4 and report["scored"] == 5
    assert report["over_estimate_share"] == pytest.approx(3 / 4)
    assert report["under_estimate_share"] == pytest.approx(1 / 4)
    assert report["gold_at_rank2_share"] == pytest.approx(3 / 4)
    assert report["gold_outside_topk_share"] == pytest.approx(1 / 4)  # over3: gold at rank 3 makes no pair
    assert [(p.record.id, p.chosen, p.rejected, p.gold_rank) for p in pairs] == [
        ("over2", "Partial", "Exact", 2),
        ("under2", "Exact", "Partial", 2),
        ("over2b", "Irrelevant", "Partial", 2),
    ]
    assert report["pairs"] == 3
    assert report["pair_transitions"] == {"Exact->Partial": 1, "Partial->Exact": 1, "Partial->Irrelevant": 1}


def test_mining_top3_keeps_rank3_and_over_estimate_filter_drops_under_estimates():
    records, scores = _hand_built()
    pairs, report = mine_pairs(records, scores, SCHEME, top_k=3)
    assert report["gold_outside_topk_share"] == 0 and report["pairs"] == 4
    assert ("over3", 3) in [(p.record.id, p.gold_rank) for p in pairs]

    pairs, report = mine_pairs(records, scores, SCHEME, top_k=3, over_estimates_only=True)
    assert [p.record.id for p in pairs] == ["over2", "over3", "over2b"]
    assert all(SCHEME.index(p.rejected) < SCHEME.index(p.chosen) for p in pairs)
    assert report["errors"] == 4 and report["over_estimate_share"] == pytest.approx(3 / 4)


def test_mining_of_a_perfect_model_reports_no_errors():
    records, scores = _hand_built()
    right = [Record(id=r.id, query=r.query, title=r.title, label=SCHEME.labels[int(np.argmax(p))])
             for r, p in zip(records, scores.probs)]
    pairs, report = mine_pairs(right, scores, SCHEME)
    assert pairs == [] and report["errors"] == 0 and report["over_estimate_share"] is None


def test_mining_refuses_scores_of_other_records():
    records, scores = _hand_built()
    with pytest.raises(ValueError, match="do not belong"):
        mine_pairs(records[::-1], scores, SCHEME)


def test_pairs_round_trip_through_json():
    records, scores = _hand_built()
    pairs, _ = mine_pairs(records, scores, SCHEME)
    again = [PreferencePair.from_dict(json.loads(json.dumps(p.to_dict()))) for p in pairs]
    assert again == pairs


# -- collapse guard ---------------------------------------------------------------------------------------------------


def test_collapse_rule():
    # rewards/chosen = beta * (log p(chosen) - log p_ref(chosen)): -0.15 at beta 0.1 is a 1.5-nat fall.
    assert chosen_collapsed({"rewards/chosen": -0.15}, beta=0.1, tolerance=1.0)
    assert not chosen_collapsed({"rewards/chosen": -0.05}, beta=0.1, tolerance=1.0)
    assert not chosen_collapsed({"rewards/chosen": 0.3}, beta=0.1, tolerance=0.0)
    assert not chosen_collapsed({"rewards/chosen": -5.0}, beta=0.1, tolerance=None)
    assert not chosen_collapsed({"loss": 1.0}, beta=0.1, tolerance=1.0)


def test_collapse_guard_stops_training_and_reports():
    from lref.stages.dpo import ChosenCollapseGuard

    guard = ChosenCollapseGuard(beta=0.5, tolerance=0.2)
    state, control = TrainerState(), TrainerControl()
    state.global_step = 3
    guard.on_log(None, state, control, logs={"rewards/chosen": -0.05, "logps/chosen": -1.1, "rewards/margins": 0.2})
    assert not control.should_training_stop
    state.global_step = 6
    guard.on_log(None, state, control, logs={"rewards/chosen": -0.2, "logps/chosen": -1.5, "rewards/margins": 0.4})
    assert control.should_training_stop
    report = guard.report()
    assert report["triggered"] and report["stopped_at_step"] == 6
    assert report["chosen_logp_change_at_stop"] == pytest.approx(-0.4)
    assert [entry["logps/chosen"] for entry in report["log"]] == [-1.1, -1.5]


def test_config_validation():
    with pytest.raises(ValueError, match="beta"):
        DPOStageConfig(beta=0)
    with pytest.raises(ValueError, match="top_k"):
        DPOStageConfig(top_k=0)
    with pytest.raises(ValueError, match="collapse_tolerance"):
        DPOStageConfig(collapse_tolerance=-1)


# -- tiny model -------------------------------------------------------------------------------------------------------


def make_records(n: int, offset: int = 0) -> list[Record]:
    return [
        Record(id=f"r{i}", query=f"{WORDS[i % 8]} {i}", title=f"{WORDS[(3 * i) % 8]} product {i}",
               label=SCHEME.labels[(i * 7 // 3) % 3])
        for i in range(offset, offset + n)
    ]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """Tiny random Gemma whose embeddings are scaled so that LoRA can move its predictions."""
    torch.set_num_threads(1)
    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny"), embedding_scale=10.0)


@pytest.fixture(scope="module")
def sft_adapter(tiny_model, tmp_path_factory):
    """A briefly SFT-tuned adapter: DPO then runs adapter-on-adapter, as after Stage 2."""
    out = tmp_path_factory.mktemp("sft") / "adapter"
    config = SFTStageConfig(model=str(tiny_model), output_dir=str(out), learning_rate=1e-2, warmup_ratio=0.0,
                            max_steps=4, batch_size=8, save_steps=1000, progress=False, threads=1)
    return train_sft(config, make_records(16, offset=100))


def dpo_config(model, out, **overrides) -> DPOStageConfig:
    settings = dict(model=str(model), output_dir=str(out), learning_rate=1e-2, warmup_ratio=0.0, batch_size=4,
                    min_pairs=4, logging_steps=1, save_steps=1000, progress=False, threads=1, collapse_tolerance=None,
                    guard_fraction=0.0)
    settings.update(overrides)
    return DPOStageConfig(**settings)


@pytest.fixture(scope="module")
def trained(sft_adapter, tmp_path_factory):
    out = tmp_path_factory.mktemp("dpo") / "adapter"
    pool = make_records(24)
    folder = train_dpo(dpo_config(sft_adapter, out), pool)
    return folder, pool


def _log_margins(model_ref, pairs) -> np.ndarray:
    """log p(chosen label) - log p(rejected label) per pair, from the scorer."""
    model, tokenizer, _ = load_causal_lm(model_ref)
    scores = LabelScorer(model, tokenizer, SCHEME, ScorerConfig(batch_size=8)).score([p.record for p in pairs])
    rows = np.arange(len(pairs))
    chosen = np.array([SCHEME.index(p.chosen) for p in pairs])
    rejected = np.array([SCHEME.index(p.rejected) for p in pairs])
    logp = np.log(scores.probs)
    return logp[rows, chosen] - logp[rows, rejected]


def test_preference_example_uses_the_scorers_prompt_ids(tiny_model):
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model))
    record = make_records(1)[0]
    pair = PreferencePair(record=record, chosen="Partial", rejected="Exact", gold_rank=2, probs={})
    example = preference_example(tokenizer, pair, SCHEME, max_length=512)
    prefix_ids, pair_ids = encode_prompt(tokenizer, direct_prompt(record, SCHEME))
    assert example["prompt_ids"] == prefix_ids + pair_ids
    assert example["chosen_ids"] == completion_ids(tokenizer, SCHEME, "Partial")
    assert example["rejected_ids"] == completion_ids(tokenizer, SCHEME, "Exact")
    assert example["chosen_ids"][-1] == example["rejected_ids"][-1] == tokenizer.eos_token_id

    long = PreferencePair(record=Record(id="x", query="drill", title="drill " * 300, label="Exact"),
                          chosen="Exact", rejected="Irrelevant", gold_rank=2, probs={})
    cut = preference_example(tokenizer, long, SCHEME, max_length=200)
    longest = max(len(cut["chosen_ids"]), len(cut["rejected_ids"]))
    assert len(cut["prompt_ids"]) + longest <= 200
    assert cut["prompt_ids"][: len(prefix_ids)] == prefix_ids  # the instruction is never cut


def test_dpo_raises_the_chosen_over_rejected_margin(trained, sft_adapter):
    folder, _ = trained
    pairs = [PreferencePair.from_dict(json.loads(line)) for line in (folder / PAIRS_FILE).read_text().splitlines()]
    assert len(pairs) >= 4
    before = _log_margins(sft_adapter, pairs)
    after = _log_margins(folder, pairs)
    assert np.all(before < 0)  # mined pairs: the rejected label was the top-1
    assert after.mean() > before.mean() + 1.0
    assert (after > 0).mean() > 0.5  # most near misses now rank gold first


def test_manifest_records_mining_config_and_training(trained, sft_adapter):
    folder, pool = trained
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    assert manifest["kind"] == "lora-adapter" and manifest["stage"] == "dpo"
    assert manifest["base_model"] == str(sft_adapter.resolve())
    assert manifest["scheme"] == {"name": "graded3", "labels": list(SCHEME.labels)}
    mining = manifest["mining"]
    assert mining["scored"] == len(pool) and mining["pairs"] == manifest["n_train"] >= 4
    assert mining["pairs"] == len((folder / PAIRS_FILE).read_text().splitlines())
    assert {"errors", "over_estimate_share", "gold_at_rank2_share", "gold_outside_topk_share"} <= set(mining)
    assert manifest["config"]["beta"] == 0.1 and manifest["config"]["sft_weight"] == 0.65
    guard = manifest["collapse_guard"]
    assert not guard["triggered"] and len(guard["log"]) == manifest["train_metrics"]["steps"]
    assert all({"logps/chosen", "logps/rejected", "rewards/margins"} <= set(entry) for entry in guard["log"])
    assert manifest["train_metrics"]["final_rewards/margins"] > 0
    assert (folder / "adapter_config.json").is_file() and not (folder / ".saving").exists()


def test_too_few_pairs_skips_and_keeps_the_model(sft_adapter, tmp_path):
    out = tmp_path / "dpo"
    result = train_dpo(dpo_config(sft_adapter, out, min_pairs=10_000), make_records(12))
    assert result == str(sft_adapter)
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["kind"] == "skipped" and "min_pairs=10000" in manifest["skipped_reason"]
    assert manifest["mining"]["scored"] == 12
    assert not (out / "adapter_config.json").exists()


def test_mine_calibrated_mines_the_mistakes_of_the_calibrated_model(sft_adapter, tmp_path):
    import shutil

    calibrated = tmp_path / "calibrated"
    shutil.copytree(sft_adapter, calibrated)
    (calibrated / "calibration.json").write_text(json.dumps(
        {"scheme": "graded3", "bias": {"Exact": 0.0, "Partial": 0.0, "Irrelevant": 50.0}}))
    pool = make_records(12)
    reports = {}
    for mine_calibrated in (False, True):
        out = tmp_path / f"dpo_{mine_calibrated}"
        train_dpo(dpo_config(calibrated, out, min_pairs=10_000, mine_calibrated=mine_calibrated), pool)
        reports[mine_calibrated] = json.loads((out / MANIFEST_NAME).read_text())["mining"]
    lines = (tmp_path / "dpo_True" / PAIRS_FILE).read_text().splitlines()
    pairs = [PreferencePair.from_dict(json.loads(line)) for line in lines]
    assert reports[False]["label_bias"] is None
    assert reports[True]["label_bias"] == {"Exact": 0.0, "Partial": 0.0, "Irrelevant": 50.0}
    # The bias makes Irrelevant every pair's top-1: each pair of another gold label is a mistake that rejects it.
    assert {pair.rejected for pair in pairs} == {"Irrelevant"}
    assert len(pairs) == sum(record.label != "Irrelevant" for record in pool)


def test_mine_calibrated_warns_and_mines_raw_without_a_calibration(sft_adapter, tmp_path, caplog):
    out = tmp_path / "dpo"
    with caplog.at_level("WARNING", logger="lref.stages.dpo"):
        train_dpo(dpo_config(sft_adapter, out, min_pairs=10_000, mine_calibrated=True), make_records(12))
    assert "no calibration.json" in caplog.text
    assert json.loads((out / MANIFEST_NAME).read_text())["mining"]["label_bias"] is None


def test_bad_pool(tiny_model, tmp_path):
    with pytest.raises(DataError, match="no records"):
        train_dpo(dpo_config(tiny_model, tmp_path / "a"), [])
    with pytest.raises(DataError, match="no label"):
        train_dpo(dpo_config(tiny_model, tmp_path / "b"), [Record(id="1", query="q", title="t")])


def test_cli_train_dpo(tiny_model, tmp_path, monkeypatch, capsys):
    pool = tmp_path / "pool.jsonl"
    write_records(pool, make_records(12))
    code, out, err = run_lref(monkeypatch, capsys, "train", "dpo", "--help")
    assert code == 0 and "--over-estimates-only" in out and "0.65 in the paper" in out
    code, out, err = run_lref(
        monkeypatch, capsys, "train", "dpo", "--model", str(tiny_model), "--pool", str(pool), "--scheme", "graded3",
        "--out", str(tmp_path / "dpo"), "--min-pairs", "1000", "--threads", "1",
    )
    assert code == 0, err
    assert out.strip() == str(tiny_model) and "DPO skipped" in err
    code, out, err = run_lref(
        monkeypatch, capsys, "train", "dpo", "--model", str(tiny_model), "--pool", str(pool), "--out",
        str(tmp_path / "x"), "--beta", "0",
    )
    assert code == 2 and "beta" in err


def test_cli_train_dpo_cot_mode(tiny_model, tmp_path, monkeypatch, capsys):
    pool = tmp_path / "pool.jsonl"
    write_records(pool, make_records(6))
    code, out, err = run_lref(monkeypatch, capsys, "train", "dpo", "--help")
    assert code == 0 and all(flag in out for flag in ("--mode", "--cot-task", "--teacher", "--rules"))
    code, out, err = run_lref(
        monkeypatch, capsys, "train", "dpo", "--model", str(tiny_model), "--pool", str(pool), "--scheme", "graded3",
        "--out", str(tmp_path / "dpo"), "--mode", "cot", "--cot-task", "ra", "--rules", "homedepot",
        "--max-new-tokens", "4", "--max-length", "2048", "--threads", "1",
    )
    assert code == 0, err
    assert out.strip() == str(tiny_model) and "DPO skipped" in err
    manifest = json.loads((tmp_path / "dpo" / MANIFEST_NAME).read_text())
    assert manifest["mining"]["mode"] == "cot" and manifest["mining"]["cot_task"] == "ra"
    assert manifest["config"]["rules"] == "homedepot"
    code, out, err = run_lref(
        monkeypatch, capsys, "train", "dpo", "--model", str(tiny_model), "--pool", str(pool), "--out",
        str(tmp_path / "x"), "--mode", "cot", "--cot-task", "dr",
    )
    assert code == 2 and "cot_task" in err


@pytest.mark.smoke
def test_dpo_steps_on_real_gemma(tmp_path):
    from lref.data.synthetic import SyntheticCatalogConfig, generate_catalog
    from lref.models.zoo import prepare

    # Gemma is a required model (`make install`, the `models` extra): missing, it fails here with the pip command.
    prepare("gemma-3-270m", progress=False)
    pool = generate_catalog(SyntheticCatalogConfig(n_pairs=24, scheme="graded3", seed=3))
    out = tmp_path / "dpo"
    result = train_dpo(DPOStageConfig(model="gemma-3-270m", output_dir=str(out), max_steps=2, batch_size=2,
                                      min_pairs=2, logging_steps=1, progress=False), pool)
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert result == out and manifest["train_metrics"]["steps"] == 2
    assert np.isfinite(manifest["train_metrics"]["final_logps/chosen"])
    load_causal_lm(out)  # base + adapter loads back


def test_resume_reuses_the_mined_pairs(tiny_model, tmp_path, monkeypatch):
    out = tmp_path / "dpo"
    pool = make_records(16)
    train_dpo(dpo_config(tiny_model, out, max_steps=2, save_steps=1), pool)
    with pytest.raises(FileExistsError, match="resume"):
        train_dpo(dpo_config(tiny_model, out, max_steps=4, save_steps=1), pool)

    def no_scoring(*args, **kwargs):
        raise AssertionError("resuming must not score the pool again")

    monkeypatch.setattr(LabelScorer, "score", no_scoring)
    train_dpo(dpo_config(tiny_model, out, max_steps=4, save_steps=1, resume=True), pool)
    metrics = json.loads((out / MANIFEST_NAME).read_text())["train_metrics"]
    assert metrics["resumed_from_step"] == 2 and metrics["steps"] == 4
    with pytest.raises(DataError, match="another pool"):
        train_dpo(dpo_config(tiny_model, out, max_steps=6, resume=True), make_records(16, offset=50))


def test_compact_lm_head_gives_the_same_log_probs(tiny_model):
    from trl.trainer import utils as trl_utils
    from trl.trainer.utils import add_fused_lm_head

    from lref.stages.dpo import compact_lm_head

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model))
    add_fused_lm_head(model)
    example = preference_example(
        tokenizer, PreferencePair(make_records(1)[0], "Partial", "Exact", 2, {}), SCHEME, max_length=512
    )
    ids = torch.tensor([example["prompt_ids"] + example["chosen_ids"]])
    labels = torch.full_like(ids, -100)
    labels[0, -len(example["chosen_ids"]):] = torch.tensor(example["chosen_ids"])
    with torch.no_grad():
        every = model(input_ids=ids, labels=labels, fused_lm_head=True).log_probs
        with compact_lm_head():
            assert trl_utils._use_triton(torch.device("cpu"))  # the switch TRL reads is flipped on CPU
            compact = model(input_ids=ids, labels=labels, fused_lm_head=True).log_probs
        assert not trl_utils._use_triton(torch.device("cpu"))
        reference = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
    positions = torch.nonzero(labels[0, 1:] != -100).squeeze(1)
    expected = reference[positions, labels[0, 1:][positions]]
    torch.testing.assert_close(compact[0, positions], expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(compact, every, rtol=1e-5, atol=1e-5)


def test_guard_winner_rules():
    checks = [
        {"step": 0, "weighted_f1": 0.60, "over_estimate_share": 0.30},
        {"step": 5, "weighted_f1": 0.595, "over_estimate_share": 0.20},
        {"step": 10, "weighted_f1": 0.50, "over_estimate_share": 0.05},
        {"step": 15, "weighted_f1": 0.62, "over_estimate_share": 0.25},
    ]
    assert guard_winner(checks, "over_estimate", tolerance=0.01) == 1  # step 10 loses too much weighted-F1
    assert guard_winner(checks, "over_estimate", tolerance=0.2) == 2
    assert guard_winner(checks, "weighted_f1", tolerance=0.01) == 3
    assert guard_winner(checks[:1], "over_estimate", tolerance=0.0) == 0  # the start always qualifies


def test_split_guard_is_seeded_and_disjoint():
    pool = make_records(40)
    mining, guard = split_guard(pool, 0.25, seed=3)
    assert len(guard) == 10 and len(mining) == 30
    assert {r.id for r in mining}.isdisjoint(r.id for r in guard)
    assert [r.id for r in split_guard(pool, 0.25, seed=3)[1]] == [r.id for r in guard]
    assert split_guard(pool, 0.0, seed=3) == (pool, [])


def test_recall_guard_keeps_the_winning_check(sft_adapter, tmp_path):
    out = tmp_path / "dpo"
    pool = make_records(32)
    folder = train_dpo(dpo_config(sft_adapter, out, guard_fraction=0.25, guard_steps=1, guard_tolerance=0.0,
                                  guard_objective="weighted_f1"), pool)
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    guard = manifest["recall_guard"]
    assert guard["n_guard"] == 8 and manifest["mining"]["scored"] == 24
    steps = [check["step"] for check in guard["checks"]]
    assert steps == list(range(len(steps))) and len(steps) == manifest["train_metrics"]["steps"] + 1
    winner = guard_winner(guard["checks"], "weighted_f1", 0.0)
    assert guard["chosen_step"] == steps[winner] and guard["unchanged"] == (winner == 0)
    # The saved adapter is the winner: scoring the guard slice again gives the winner's figures.
    _, guard_records = split_guard(pool, 0.25, seed=0)
    model, tokenizer, _ = load_causal_lm(folder)
    predictions = LabelScorer(model, tokenizer, SCHEME, ScorerConfig(batch_size=8)).predict(guard_records)
    again = evaluate(guard_records, predictions, SCHEME, bootstrap=0)
    assert again["weighted_f1"] == pytest.approx(guard["checks"][winner]["weighted_f1"], abs=1e-6)


# -- CoT pairs --------------------------------------------------------------------------------------------------------


def _cot_hand_made():
    """Six records, the model's generated analyses and the teacher's explanations of the mistakes."""
    rows = [
        ("right", "Exact", " Same drill.\nRelevance: Exact", None),
        ("over", "Partial", " Type: drill\nBrand: same\nRelevance: Exact", "Partial"),
        ("under", "Exact", " Looks different.\nRelevance: Partial", "Exact"),
        ("garbage", "Partial", " drill drill pack steel", None),  # no label: a fallback, never a pair
        ("disagree", "Irrelevant", " Close enough.\nRelevance: Partial", "Partial"),  # teacher says Partial too
        ("rambles", "Irrelevant", " A fan, not a hose.\nRelevance: Exact\nQuery: more text", "Irrelevant"),
    ]
    records = [Record(id=i, query=f"q {i}", title=f"t {i}", label=gold) for i, gold, _, _ in rows]
    texts = [text for _, _, text, _ in rows]
    explanations = [Explanation(i, "ee", f"Teacher on {i}.", label) for i, _, _, label in rows if label]
    return records, texts, explanations


def test_cot_pairs_from_generated_and_teacher_analyses():
    records, texts, explanations = _cot_hand_made()
    assert cot_mistakes(records, texts, SCHEME) == [1, 2, 4, 5]
    assert cot_mistakes(records, texts, SCHEME, over_estimates_only=True) == [1, 4, 5]
    pairs, report = cot_pairs(records, texts, explanations, SCHEME)
    assert [(p.record.id, p.chosen, p.rejected, p.gold_rank) for p in pairs] == [
        ("over", "Partial", "Exact", None),
        ("under", "Exact", "Partial", None),
        ("rambles", "Irrelevant", "Exact", None),
    ]
    over, under, rambles = pairs
    assert over.chosen_text == " Teacher on over.\nRelevance: Partial"
    assert over.rejected_text == " Type: drill\nBrand: same\nRelevance: Exact"
    assert under.rejected_text == " Looks different.\nRelevance: Partial"
    assert rambles.rejected_text == " A fan, not a hose.\nRelevance: Exact"  # the text after the decision is dropped
    assert report["scored"] == 6 and report["fallbacks"] == 1 and report["errors"] == 4
    assert report["error_rate"] == pytest.approx(4 / 5)  # of the texts with a label
    assert report["over_estimate_share"] == pytest.approx(3 / 4)
    assert report["teacher_disagreements"] == 1 and report["pairs"] == 3
    assert report["gold_at_rank2_share"] is None and report["top_k"] is None
    assert report["pair_transitions"] == {"Exact->Irrelevant": 1, "Exact->Partial": 1, "Partial->Exact": 1}

    pairs, report = cot_pairs(records, texts, explanations, SCHEME, over_estimates_only=True)
    assert [p.record.id for p in pairs] == ["over", "rambles"] and report["errors"] == 4
    with pytest.raises(ValueError, match="no teacher explanation for pair 'under'"):
        cot_pairs(records, texts, explanations[:1], SCHEME)
    with pytest.raises(ValueError, match="5 generated texts for 6 records"):
        cot_mistakes(records, texts[:5], SCHEME)


def test_own_completion_keeps_the_analysis_before_the_decision():
    assert own_completion(" a\nb\nRelevance: Exact", "Exact", SCHEME) == " a\nb\nRelevance: Exact"
    assert own_completion("a\nExact\n", "Exact", SCHEME) == " a\nRelevance: Exact"  # a bare grade line
    assert own_completion("a\nRelevance: Partial\nRelevance: Exact", "Exact", SCHEME) == " a\nRelevance: Exact"


def test_cot_pairs_round_trip_through_json():
    records, texts, explanations = _cot_hand_made()
    pairs, _ = cot_pairs(records, texts, explanations, SCHEME)
    data = [json.loads(json.dumps(p.to_dict())) for p in pairs]
    assert data[0]["gold_rank"] is None and data[0]["chosen_text"].endswith("Relevance: Partial")
    assert [PreferencePair.from_dict(item) for item in data] == pairs
    with pytest.raises(ValueError, match="both chosen_text and rejected_text"):
        PreferencePair(records[0], "Exact", "Partial", None, {}, chosen_text=" x\nRelevance: Exact")


def test_cot_preference_example_uses_the_cot_prompt_and_keeps_the_answer(tiny_model):
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model))
    records, texts, explanations = _cot_hand_made()
    pair = cot_pairs(records, texts, explanations, SCHEME)[0][0]
    example = preference_example(tokenizer, pair, SCHEME, max_length=512)
    prefix_ids, pair_ids = encode_prompt(tokenizer, cot_prompt("ee", pair.record, SCHEME))
    assert example["prompt_ids"] == prefix_ids + pair_ids
    assert example["chosen_ids"] == text_completion_ids(tokenizer, pair.chosen_text)
    assert example["rejected_ids"] == text_completion_ids(tokenizer, pair.rejected_text)

    long = PreferencePair(
        Record(id="x", query="drill", title="drill " * 300, label="Partial"), "Partial", "Exact", None, {},
        chosen_text=" " + "brass steel " * 100 + "\nRelevance: Partial", rejected_text=" short\nRelevance: Exact",
    )
    cut = preference_example(tokenizer, long, SCHEME, max_length=300)
    assert len(cut["prompt_ids"]) + max(len(cut["chosen_ids"]), len(cut["rejected_ids"])) <= 300
    assert cut["prompt_ids"][: len(prefix_ids)] == prefix_ids  # the instruction is never cut
    assert tokenizer.decode(cut["prompt_ids"]).endswith("Analysis:")  # nor the cue
    assert cut["chosen_ids"][-1] == cut["rejected_ids"][-1] == tokenizer.eos_token_id
    assert tokenizer.decode(cut["chosen_ids"][:-1]).endswith("\nRelevance: Partial")
    assert cut["rejected_ids"] == text_completion_ids(tokenizer, long.rejected_text)  # short enough: whole
    with pytest.raises(DataError, match="record 'x'.*raise max_length"):
        preference_example(tokenizer, long, SCHEME, max_length=len(prefix_ids) + 20)


def test_cot_config_validation():
    with pytest.raises(ValueError, match="mode"):
        DPOStageConfig(mode="beam")
    with pytest.raises(ValueError, match="cot_task"):
        DPOStageConfig(mode="cot", cot_task="dr")
    with pytest.raises(ValueError, match="teacher_model"):
        DPOStageConfig(mode="cot", teacher="openai")
    with pytest.raises(ValueError, match="max_new_tokens"):
        DPOStageConfig(mode="cot", max_new_tokens=0)
    with pytest.raises(ValueError, match="mine_calibrated needs mode='direct'"):
        DPOStageConfig(mode="cot", mine_calibrated=True)


ANALYSIS = " Type: same\nBrand: same"


COT_POOL = make_records(16, offset=200)


@pytest.fixture(scope="module")
def cot_adapter(tiny_model, tmp_path_factory):
    """A tiny model taught to answer the EE prompt of every pool pair with one fixed analysis ending in Exact, so its
    mistakes are exactly the pool pairs whose gold label is not Exact."""
    out = tmp_path_factory.mktemp("cot") / "ee"
    examples = [TextExample(r.id, cot_prompt("ee", r, SCHEME), f"{ANALYSIS}\nRelevance: Exact", "Exact")
                for r in COT_POOL]
    config = SFTStageConfig(model=str(tiny_model), output_dir=str(out), learning_rate=3e-2, warmup_ratio=0.0,
                            max_steps=60, batch_size=8, save_steps=1000, progress=False, threads=1)
    return train_sft_examples(config, examples)


def test_train_dpo_on_cot_pairs(cot_adapter, tmp_path):
    out = tmp_path / "dpo"
    folder = train_dpo(dpo_config(cot_adapter, out, mode="cot", max_new_tokens=20, max_steps=2, min_pairs=2), COT_POOL)
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    mining = manifest["mining"]
    assert mining["mode"] == "cot" and mining["cot_task"] == "ee" and mining["teacher"] == "rules"
    assert mining["scored"] == 16 and mining["fallbacks"] == 0
    assert mining["errors"] == sum(r.label != "Exact" for r in COT_POOL) and mining["over_estimate_share"] == 1.0
    assert mining["teacher_stats"]["requested"] == mining["errors"]  # only the mistakes are explained
    assert mining["pairs"] + mining["teacher_disagreements"] == mining["errors"]
    pairs = [PreferencePair.from_dict(json.loads(line)) for line in (out / PAIRS_FILE).read_text().splitlines()]
    assert len(pairs) == mining["pairs"] >= 2
    assert all(p.rejected == "Exact" and p.rejected_text == f"{ANALYSIS}\nRelevance: Exact" for p in pairs)
    assert all(p.chosen_text.endswith(f"\nRelevance: {p.chosen}") and p.chosen == p.record.label for p in pairs)
    assert list((tmp_path / "teacher_cache").glob("rules-*/ee.jsonl"))  # the teacher's answers are cached
    assert folder == out and manifest["kind"] == "lora-adapter" and manifest["n_train"] == len(pairs)
    assert manifest["train_metrics"]["steps"] == 2 and manifest["train_metrics"]["final_rewards/margins"] > 0


def test_train_dpo_cot_skips_a_model_without_analyses(tiny_model, tmp_path):
    out = tmp_path / "dpo"
    result = train_dpo(dpo_config(tiny_model, out, mode="cot", max_new_tokens=4), make_records(8))
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    mining = manifest["mining"]
    assert result == str(tiny_model) and manifest["kind"] == "skipped" and "min_pairs=4" in manifest["skipped_reason"]
    assert mining["fallbacks"] == mining["scored"] == 8 and mining["errors"] == 0 and mining["pairs"] == 0
    assert mining["over_estimate_share"] is None and mining["teacher_stats"] is None
    assert (out / PAIRS_FILE).read_text() == ""
