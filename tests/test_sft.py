"""LoRA SFT stage: example building, masked loss, training, manifest, reload, resume and input validation."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")

from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback  # noqa: E402

import lref.training.examples as examples_module  # noqa: E402
import lref.training.losses as losses_module  # noqa: E402
from lref.data.records import DataError, Record  # noqa: E402
from lref.fingerprint import data_hash
from lref.labels import (
    class_weights,
    get_scheme,  # noqa: E402
)
from lref.models.loading import MANIFEST_NAME, load_causal_lm  # noqa: E402
from lref.prompts import (  # noqa: E402
    PROMPT_VERSION,
    direct_prompt,
    encode_prompt,
    label_completion,
    label_token_ids,
)
from lref.stages.sft import SFTStageConfig, train_sft  # noqa: E402
from lref.testing import build_tiny_causal_lm  # noqa: E402
from lref.training.examples import PadCollator, build_example  # noqa: E402
from lref.training.losses import completion_loss, shared_prefix_length  # noqa: E402
from lref.training.run_guard import last_checkpoint  # noqa: E402

SCHEME = get_scheme("graded3")
WORDS = ["drill", "hose", "fan", "brass", "steel", "white", "black", "pack"]


def make_records(n: int = 8) -> list[Record]:
    labels = SCHEME.labels
    return [
        Record(id=f"r{i}", query=f"{WORDS[i % len(WORDS)]} {i}", title=f"{WORDS[i % len(WORDS)]} product {i}",
               label=labels[i % len(labels)])
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """Tiny random Gemma whose embeddings are scaled so that LoRA can move its predictions."""
    torch.set_num_threads(1)
    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny"), embedding_scale=10.0)


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    return AutoTokenizer.from_pretrained(str(tiny_model))


def config(tiny_model, out, **overrides) -> SFTStageConfig:
    settings = dict(
        model=str(tiny_model), output_dir=str(out), learning_rate=1e-2, warmup_ratio=0.0, max_steps=30,
        batch_size=8, save_steps=1000, logging_steps=5, progress=False, threads=1,
    )
    settings.update(overrides)
    return SFTStageConfig(**settings)


@pytest.fixture(scope="module")
def trained(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("sft") / "adapter"
    records = make_records(8)
    folder = train_sft(config(tiny_model, out), records, eval_records=records[:4])
    return folder, records


# -- examples and loss masking ----------------------------------------------------------------------------------------


def test_example_masks_the_prompt_and_ends_with_label_and_eos(tokenizer):
    record = make_records(3)[2]  # Irrelevant
    example = build_example(tokenizer, record, SCHEME)
    prefix_ids, pair_ids = encode_prompt(tokenizer, direct_prompt(record, SCHEME))
    prompt = prefix_ids + pair_ids
    answer = tokenizer(label_completion(SCHEME, "Irrelevant"), add_special_tokens=False)["input_ids"]
    answer += [tokenizer.eos_token_id]

    assert example["input_ids"] == prompt + answer  # the very ids the scorer builds, then the answer
    assert example["labels"][: len(prompt)] == [-100] * len(prompt)
    assert example["labels"][len(prompt):] == answer
    assert all(label != -100 for label in example["labels"][len(prompt):])
    assert example["input_ids"][0] == tokenizer.bos_token_id and example["input_ids"].count(tokenizer.bos_token_id) == 1
    assert answer[0] == label_token_ids(tokenizer, SCHEME)[2]


def test_long_pairs_are_cut_in_the_middle_keeping_cue_and_label(tokenizer):
    record = make_records(1)[0]
    record.description = "a sturdy product for home use " * 40
    full = build_example(tokenizer, record, SCHEME)
    cut = build_example(tokenizer, record, SCHEME, max_length=len(full["input_ids"]) - 20)
    assert cut["truncated"] and len(cut["input_ids"]) == len(full["input_ids"]) - 20
    n_answer = sum(label != -100 for label in full["labels"])
    assert cut["input_ids"][-(n_answer + 8):] == full["input_ids"][-(n_answer + 8):]
    with pytest.raises(DataError, match="max_length"):
        build_example(tokenizer, record, SCHEME, max_length=20)


@pytest.mark.parametrize("softcap", [None, 3.0])
def test_fast_loss_equals_full_logits_loss(tiny_model, tokenizer, softcap):
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model))
    model.config.final_logit_softcapping = softcap
    batch = PadCollator(tokenizer.pad_token_id)([build_example(tokenizer, r, SCHEME) for r in make_records(5)])
    batch["weights"] = torch.ones(5)
    fast, n_fast = completion_loss(model, batch, logits_at_labels_only=True)
    full, n_full = completion_loss(model, batch, logits_at_labels_only=False)
    reference = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
    assert n_fast == n_full == int((batch["labels"] != -100).sum())
    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-5)


def test_head_loss_in_chunks_matches_one_pass(tiny_model, tokenizer, monkeypatch):
    model = _lora_model(tiny_model)
    model.get_base_model().config.final_logit_softcapping = 3.0
    batch = PadCollator(tokenizer.pad_token_id)([build_example(tokenizer, r, SCHEME) for r in make_records(5)])
    batch["weights"] = torch.tensor([1.0, 2.0, 0.5, 1.0, 1.5])
    whole = _loss_and_grads(model, batch)
    assert whole[1] > 3
    monkeypatch.setattr(losses_module, "HEAD_CHUNK", 2)  # several chunks, the last one short
    _assert_same(_loss_and_grads(model, batch), whole)


# -- shared-prefix forward -------------------------------------------------------------------------------------------


def _spy_shared_path(monkeypatch) -> list[bool]:
    """Record every shared-prefix forward (True: it ran on the shared cache)."""
    calls = []
    original = losses_module.forward_with_shared_prefix

    def spy(*args):
        out = original(*args)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(losses_module, "forward_with_shared_prefix", spy)
    return calls


def _lora_model(tiny_model, **overrides):
    from peft import LoraConfig, get_peft_model

    base = AutoModelForCausalLM.from_pretrained(str(tiny_model), **overrides)
    torch.manual_seed(0)
    # init_lora_weights=False: B is random too, so every LoRA matrix gets a non-zero gradient.
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM",
                      init_lora_weights=False)
    return get_peft_model(base, lora).train()


def _varied_records() -> list[Record]:
    """Pairs from a few tokens to well over the tiny model's sliding window (64), so rows differ by > 64 tokens."""
    return [
        Record(id=f"v{i}", query=f"{WORDS[i]} " * (1 + 6 * i), title=f"{WORDS[i + 1]} pack " * (1 + 8 * i),
               description=("a sturdy product for home use " * (3 * i)) or None, label=SCHEME.labels[i % 3])
        for i in range(5)
    ]


def _loss_and_grads(model, batch, **kwargs):
    model.zero_grad()
    loss, count = completion_loss(model, batch, **kwargs)
    loss.backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), count, grads


def _assert_same(shared, plain):
    (loss_a, count_a, grads_a), (loss_b, count_b, grads_b) = shared, plain
    assert count_a == count_b
    assert abs(loss_a.item() - loss_b.item()) < 1e-5
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 0
    scale = max(1.0, max(g.abs().max().item() for g in grads_b.values()))
    assert all(g.abs().max() > 0 for g in grads_b.values())
    worst = max((grads_a[name] - grads_b[name]).abs().max().item() for name in grads_a)
    assert worst < 1e-5 * scale, (worst, scale)


@pytest.mark.parametrize("logits_at_labels_only", [True, False])
@pytest.mark.parametrize(
    "overrides",
    [{}, {"layer_types": ["sliding_attention", "full_attention"]}, {"attn_implementation": "eager"}],
    ids=["sliding-sdpa", "sliding+full-sdpa", "sliding-eager"],
)
def test_shared_prefix_matches_plain_forward(tiny_model, tokenizer, monkeypatch, overrides, logits_at_labels_only):
    model = _lora_model(tiny_model, **overrides)
    examples = [build_example(tokenizer, record, SCHEME) for record in _varied_records()]
    lengths = [len(e["input_ids"]) for e in examples]
    n_prefix = examples[0]["prefix_length"]
    assert n_prefix > 64 and max(lengths) - min(lengths) > 64  # prefix alone and padding runs exceed the window
    batch = PadCollator(tokenizer.pad_token_id)(examples)
    batch["weights"] = torch.tensor([1.0, 2.0, 0.5, 1.0, 1.5])
    assert shared_prefix_length(batch) == n_prefix
    calls = _spy_shared_path(monkeypatch)
    shared = _loss_and_grads(model, batch, share_prefix=True, logits_at_labels_only=logits_at_labels_only)
    assert calls == [True]
    plain = _loss_and_grads(model, batch, share_prefix=False, logits_at_labels_only=logits_at_labels_only)
    assert calls == [True]
    _assert_same(shared, plain)

    # A prefix shorter than the window with prefix + pair longer than it: cut the shared part to its first 20 tokens.
    short = dict(batch, prefix_lengths=torch.full((5,), 20))
    assert shared_prefix_length(short) == 20
    _assert_same(_loss_and_grads(model, short, logits_at_labels_only=logits_at_labels_only),
                 _loss_and_grads(model, short, share_prefix=False, logits_at_labels_only=logits_at_labels_only))
    assert calls == [True, True]


def test_shared_prefix_falls_back_when_prefixes_differ(tiny_model, tokenizer, monkeypatch):
    model = _lora_model(tiny_model)
    records = make_records(3)
    examples = [build_example(tokenizer, record, SCHEME) for record in records]
    other = build_example(tokenizer, records[2], get_scheme("esci4"))  # another instruction (label definitions)
    assert other["input_ids"][: other["prefix_length"]] != examples[0]["input_ids"][: examples[0]["prefix_length"]]
    collate = PadCollator(tokenizer.pad_token_id)
    n_prefix = examples[0]["prefix_length"]
    assert shared_prefix_length(collate(examples)) == n_prefix

    mixed = collate(examples[:2] + [other])
    same_length = [dict(e) for e in examples]
    same_length[1]["input_ids"] = list(same_length[1]["input_ids"])
    same_length[1]["input_ids"][n_prefix // 2] += 1  # same prefix length, different ids
    no_field = collate([{k: v for k, v in e.items() if k != "prefix_length"} for e in examples])
    too_long = dict(collate(examples), prefix_lengths=torch.full((3,), n_prefix + 5))  # would cover label positions
    for batch in (mixed, collate(same_length), no_field, too_long, collate(examples[:1])):
        assert shared_prefix_length(batch) == 0
    assert "prefix_lengths" not in no_field

    calls = _spy_shared_path(monkeypatch)
    for batch in (mixed, collate(same_length)):
        _assert_same(_loss_and_grads(model, batch), _loss_and_grads(model, batch, share_prefix=False))
    assert calls == []


def test_class_weights():
    labels = ["Exact"] * 6 + ["Partial"] * 3 + ["Irrelevant"]
    assert class_weights(labels, SCHEME, "none") == {"Exact": 1.0, "Partial": 1.0, "Irrelevant": 1.0}
    for mode in ("sqrt", "inverse"):
        weights = class_weights(labels, SCHEME, mode)
        assert weights["Irrelevant"] > weights["Partial"] > weights["Exact"]
        assert sum(weights[label] for label in labels) / len(labels) == pytest.approx(1.0)
    inverse = class_weights(labels, SCHEME, "inverse")
    assert inverse["Irrelevant"] / inverse["Exact"] == pytest.approx(6.0)


# -- training, manifest, reload ---------------------------------------------------------------------------------------


def test_training_memorises_a_small_set(trained):
    folder, records = trained
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    history = manifest["train_metrics"]
    assert history["steps"] == 30
    assert history["final_loss"] < 0.5
    model, tokenizer, _ = load_causal_lm(folder)
    ids = label_token_ids(tokenizer, SCHEME)
    correct = 0
    for record in records:
        prefix_ids, pair_ids = encode_prompt(tokenizer, direct_prompt(record, SCHEME))
        with torch.no_grad():
            logits = model(torch.tensor([prefix_ids + pair_ids])).logits[0, -1]
        correct += SCHEME.labels[int(logits[ids].argmax())] == record.label
    assert correct == len(records)


@pytest.mark.parametrize("share_prefix", [True, False])
def test_loss_drops(tiny_model, tmp_path, monkeypatch, share_prefix):
    seen = []
    shared = _spy_shared_path(monkeypatch)

    class Losses(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                seen.append(float(logs["loss"]))

    cfg = config(tiny_model, tmp_path / "a", max_steps=20, share_prefix=share_prefix)
    train_sft(cfg, make_records(8), callbacks=[Losses()])
    assert len(seen) == 4
    assert seen[-1] < 0.25 * seen[0]
    assert shared == ([True] * 20 if share_prefix else [])  # every training batch took the shared-prefix path


def test_manifest_and_reload(trained, tiny_model):
    folder, records = trained
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    assert manifest["base_model"] == str(tiny_model.resolve())
    assert manifest["scheme"] == {"name": "graded3", "labels": list(SCHEME.labels)}
    assert manifest["prompt_version"] == PROMPT_VERSION
    assert manifest["data_hash"] == data_hash(records)
    assert manifest["n_train"] == 8 and manifest["n_eval"] == 4
    assert manifest["config"]["lora_r"] == 16 and manifest["config"]["target_modules"] == "all-linear"
    metrics = manifest["train_metrics"]
    assert {"final_loss", "steps", "wall_time_s", "eval_loss"} <= set(metrics)
    assert {"torch", "transformers", "peft"} <= set(manifest["versions"])
    assert manifest["created"]
    assert (folder / "adapter_config.json").is_file() and (folder / "tokenizer_config.json").is_file()

    tuned, tokenizer, loaded_manifest = load_causal_lm(folder)
    assert loaded_manifest == manifest
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model)).eval()
    prefix_ids, pair_ids = encode_prompt(tokenizer, direct_prompt(records[0], SCHEME))
    ids = label_token_ids(tokenizer, SCHEME)
    with torch.no_grad():
        x = torch.tensor([prefix_ids + pair_ids])
        tuned_logits, base_logits = tuned(x).logits[0, -1, ids], base(x).logits[0, -1, ids]
    assert not torch.allclose(tuned_logits, base_logits, atol=1e-3)


def test_data_hash_depends_on_labels():
    records = make_records(4)
    changed = [Record(**{**r.__dict__}) for r in records]
    changed[0].label = "Partial"
    assert data_hash(records) == data_hash(make_records(4))
    assert data_hash(records) != data_hash(changed)


# -- checkpoints and resume -------------------------------------------------------------------------------------------


class _Crash(RuntimeError):
    pass


class _CrashAtStep(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise _Crash(f"simulated crash before step {self.step + 1}")


class _Steps(TrainerCallback):
    def __init__(self):
        self.steps = []

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)


def test_resume_continues_from_the_last_checkpoint(tiny_model, tmp_path):
    out = tmp_path / "run"
    cfg = config(tiny_model, out, max_steps=6, save_steps=2, logging_steps=1)
    with pytest.raises(_Crash):
        train_sft(cfg, make_records(8), callbacks=[_CrashAtStep(3)])  # crashes after step 3, past checkpoint-2
    assert last_checkpoint(out).name == "checkpoint-2"
    assert not (out / MANIFEST_NAME).exists()

    with pytest.raises(FileExistsError, match="resume"):
        train_sft(cfg, make_records(8))
    cfg.resume = True
    with pytest.raises(DataError, match="other data"):
        train_sft(cfg, make_records(7))

    steps = _Steps()
    folder = train_sft(cfg, make_records(8), callbacks=[steps])
    assert steps.steps == [3, 4, 5, 6]  # continued, did not restart at step 1
    metrics = json.loads((folder / MANIFEST_NAME).read_text())["train_metrics"]
    assert metrics["steps"] == 6 and metrics["resumed_from_step"] == 2 and metrics["steps_this_run"] == 4


def test_run_guard_passes_over_unfinished_checkpoints_and_saves_whole(tmp_path):
    from lref.training.run_guard import RunGuard, run_file, save_atomically

    out = tmp_path / "run"
    (out / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    (out / "checkpoints" / "checkpoint-2" / "trainer_state.json").write_text('{"global_step": 2}')
    (out / "checkpoints" / "checkpoint-4").mkdir()  # a save killed before its trainer state: not resumable
    assert last_checkpoint(out).name == "checkpoint-2"
    with pytest.raises(FileExistsError, match="resume"):
        RunGuard(out, resume=False)
    guard = RunGuard(out, resume=True)
    assert guard.resuming and guard.resumed_step == 2 and guard.resume_from.endswith("checkpoint-2")
    guard.check({"data_hash": "abc"})  # no run file: nothing to compare
    run_file(out).write_text(json.dumps({"data_hash": "abc", "model": "m"}))
    guard.check({"data_hash": "abc"})
    with pytest.raises(DataError, match="other data"):
        guard.check({"data_hash": "xyz"})
    with pytest.raises(DataError, match="another pool"):
        guard.check({"model": "other"}, strict=True, reason="come from another pool")

    class Part:
        def __init__(self, name, fail=False):
            self.name, self.fail = name, fail

        def save_pretrained(self, folder):
            Path(folder).mkdir(parents=True, exist_ok=True)
            (Path(folder) / self.name).write_text("new")
            if self.fail:
                raise OSError("disk full")

    (out / "weights.bin").write_text("old")
    with pytest.raises(OSError):
        save_atomically(out, Part("weights.bin"), Part("tokenizer.json", fail=True))
    assert (out / "weights.bin").read_text() == "old" and not (out / "tokenizer.json").exists()
    save_atomically(out, Part("weights.bin"), Part("tokenizer.json"))
    assert (out / "weights.bin").read_text() == "new" and (out / "tokenizer.json").read_text() == "new"
    assert not (out / ".saving").exists()


# -- input validation -------------------------------------------------------------------------------------------------


def test_bad_inputs(tiny_model, tmp_path):
    cfg = config(tiny_model, tmp_path / "bad", max_steps=1)
    with pytest.raises(DataError, match="no training records"):
        train_sft(cfg, [])
    unlabelled = make_records(3)
    unlabelled[1].label = None
    with pytest.raises(DataError, match="'r1' has no label"):
        train_sft(cfg, unlabelled)
    foreign = make_records(3)
    foreign[2].label = "Substitute"
    with pytest.raises(DataError, match="'r2'.*Substitute"):
        train_sft(cfg, foreign)
    bad_eval = make_records(2)
    bad_eval[0].label = None
    with pytest.raises(DataError, match="evaluation record 'r0'"):
        train_sft(cfg, make_records(3), eval_records=bad_eval)
    with pytest.raises(ValueError, match="class_balance"):
        SFTStageConfig(class_balance="median")
    assert not (tmp_path / "bad").exists()


def test_labels_are_canonicalised(tiny_model, tmp_path):
    records = make_records(3)
    records[0].label = "exact"
    folder = train_sft(config(tiny_model, tmp_path / "case", max_steps=1), records)
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    assert manifest["label_counts"] == {"Exact": 1, "Partial": 1, "Irrelevant": 1}


def test_class_balance_weights_scale_each_example_loss(tiny_model, tokenizer, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model))
    examples = [build_example(tokenizer, r, SCHEME) for r in make_records(3)]
    batch = PadCollator(tokenizer.pad_token_id)(examples)
    per_example = []
    for i in range(3):
        one = PadCollator(tokenizer.pad_token_id)([examples[i]])
        loss, count = completion_loss(model, one, num_items=1)
        per_example.append(loss.item())
    batch["weights"] = torch.tensor([2.0, 0.0, 1.0])
    loss, count = completion_loss(model, batch, num_items=1)
    assert loss.item() == pytest.approx(2 * per_example[0] + per_example[2], rel=1e-4)

    records = make_records(8)[:7] + [Record(id="x", query="fan 9", title="fan product 9", label="Exact")]
    folder = train_sft(config(tiny_model, tmp_path / "bal", max_steps=1, class_balance="sqrt"), records)
    weights = json.loads((folder / MANIFEST_NAME).read_text())["class_weights"]
    assert weights == pytest.approx(class_weights([r.label for r in records], SCHEME, "sqrt"))
    assert weights["Irrelevant"] > weights["Exact"]


# -- soft labels ------------------------------------------------------------------------------------------------------


def _with_targets(tokenizer, records, targets) -> list[dict]:
    from dataclasses import replace

    examples = [replace(examples_module.direct_example(r, SCHEME), target=t) for r, t in zip(records, targets)]
    first_ids = dict(zip(SCHEME.labels, label_token_ids(tokenizer, SCHEME)))
    return examples_module.build_example_dataset(tokenizer, examples, None, None, first_ids).examples


@pytest.mark.parametrize("logits_at_labels_only", [True, False])
def test_a_soft_target_weighs_the_first_token_loss_of_each_of_its_labels(tiny_model, tokenizer, monkeypatch,
                                                                           logits_at_labels_only):
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model))
    model.config.final_logit_softcapping = 3.0
    records = make_records(3)  # Exact, Partial, Irrelevant
    collate = PadCollator(tokenizer.pad_token_id)
    hard = collate([build_example(tokenizer, r, SCHEME) for r in records])

    def loss(batch):
        return completion_loss(model, batch, logits_at_labels_only=logits_at_labels_only, num_items=1)[0].item()

    plain = loss(hard)
    assert loss(collate(_with_targets(tokenizer, records, [{r.label: 1.0} for r in records]))) == \
        pytest.approx(plain, rel=1e-5)
    # The Exact row's first token 0.6 Exact, 0.4 Partial; the other rows as before (one without a target).
    mixed = loss(collate(_with_targets(tokenizer, records, [{"Exact": 0.6, "Partial": 0.4}, {"Partial": 1.0}, None])))
    with torch.no_grad():
        logits = model(input_ids=hard["input_ids"], attention_mask=hard["attention_mask"]).logits.float()
    first = int((hard["labels"][0] != -100).nonzero()[0]) - 1  # the position that predicts the label's first token
    log_probs = torch.log_softmax(logits[0, first], dim=-1)
    exact_id, partial_id, _ = label_token_ids(tokenizer, SCHEME)
    assert mixed == pytest.approx(plain + 0.4 * (log_probs[exact_id] - log_probs[partial_id]).item(), rel=1e-5)
    assert abs(mixed - plain) > 1e-2  # the split moved the loss (by more than the tolerance above)
    monkeypatch.setattr(losses_module, "HEAD_CHUNK", 2)  # the targets follow their positions into the chunks
    chunked = loss(collate(_with_targets(tokenizer, records, [{"Exact": 0.6, "Partial": 0.4}, {"Partial": 1.0}, None])))
    assert chunked == pytest.approx(mixed, rel=1e-5)


def test_soft_labels_train_on_raw_scores_and_refuse_a_score_beside_another_label(tiny_model, tmp_path):
    from dataclasses import replace

    means = {"Exact": 2.67, "Partial": 2.33, "Irrelevant": 1.0}
    records = [replace(r, raw_score=means[r.label]) for r in make_records(6)]
    folder = train_sft(config(tiny_model, tmp_path / "soft", max_steps=1, soft_labels=True), records)
    assert json.loads((folder / MANIFEST_NAME).read_text())["config"]["soft_labels"] is True
    examples = [examples_module.direct_example(r, SCHEME, soft_label=True) for r in records]
    assert examples[0].target == pytest.approx({"Exact": 0.67, "Partial": 0.33})
    assert examples_module.direct_example(records[0], SCHEME).target is None

    bad = records + [Record(id="odd", query="fan", title="fan", label="Irrelevant", raw_score=2.67)]
    with pytest.raises(DataError, match="record 'odd': raw_score 2.67 does not sit beside its label 'Irrelevant'"):
        train_sft(config(tiny_model, tmp_path / "bad", max_steps=1, soft_labels=True), bad)

    # A run trained on hard labels cannot be resumed with soft ones: the targets differ.
    out = tmp_path / "switch"
    with pytest.raises(_Crash):
        train_sft(config(tiny_model, out, max_steps=4, save_steps=1), records, callbacks=[_CrashAtStep(2)])
    with pytest.raises(DataError, match="other data"):
        train_sft(config(tiny_model, out, max_steps=4, save_steps=1, soft_labels=True, resume=True), records)


# -- command line -----------------------------------------------------------------------------------------------------


def test_cli_train_sft(tiny_model, tmp_path):
    from typer.testing import CliRunner

    from lref.cli import app

    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in make_records(6)))
    out = tmp_path / "cli"
    args = ["train", "sft", "--model", str(tiny_model), "--train", str(train), "--eval", str(train), "--out", str(out),
            "--max-steps", "2", "--batch-size", "4", "--lora-r", "4", "--lr", "1e-3", "--threads", "1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["config"]["lora_r"] == 4 and manifest["train_metrics"]["steps"] == 2
    assert manifest["n_eval"] == 6 and manifest["scheme"]["name"] == "graded3"
    again = CliRunner().invoke(app, args)
    assert isinstance(again.exception, FileExistsError)
    resumed = CliRunner().invoke(app, [*args, "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert "match_hints" not in manifest

    hinted_out = tmp_path / "cli_hints"
    hinted = CliRunner().invoke(app, [*args[:args.index("--out") + 1], str(hinted_out),
                                      *args[args.index("--out") + 2:], "--match-hints", "--soft-labels"])
    assert hinted.exit_code == 0, hinted.output
    hinted_manifest = json.loads((hinted_out / MANIFEST_NAME).read_text())
    assert hinted_manifest["match_hints"] is True  # scorers add the line
    assert hinted_manifest["config"]["soft_labels"] is True and not manifest["config"]["soft_labels"]


# -- real weights -----------------------------------------------------------------------------------------------------


@pytest.mark.smoke
def test_real_gemma_two_steps(tmp_path):
    from lref.models import zoo

    try:
        base = zoo.resolve_model("gemma-3-270m")
    except ImportError as error:  # the weights package is an optional extra (lref[models])
        pytest.skip(f"gemma-3-270m is not available: {error}")
    words = ["drill", "hose", "ceiling fan", "paint", "faucet", "lumber", "tile", "mower"]
    records = [
        Record(id=f"g{i}", query=f"{words[i % 8]} {i}", title=f"{words[(i * 3) % 8]} model {i} by Acme",
               label=SCHEME.labels[i % 3])
        for i in range(16)
    ]
    cfg = SFTStageConfig(model="gemma-3-270m", output_dir=str(tmp_path / "gemma"), max_steps=2, batch_size=8,
                         save_steps=1000, progress=False)
    folder = train_sft(cfg, records)
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    assert manifest["base_model"] == "gemma-3-270m" and manifest["train_metrics"]["steps"] == 2
    model, tokenizer, _ = load_causal_lm(folder)
    prefix_ids, pair_ids = encode_prompt(tokenizer, direct_prompt(records[0], SCHEME))
    with torch.no_grad():
        logits = model(torch.tensor([prefix_ids + pair_ids])).logits[0, -1]
    assert torch.isfinite(logits).all()
    assert base.is_dir()

    # The tuned model through the one scoring entry point: all 16 pairs, in order, with a full top-k.
    from lref.models.scorer import LabelScorer, ScorerConfig

    result = LabelScorer(model, tokenizer, SCHEME, ScorerConfig(batch_size=8)).score(records)
    assert list(result.ids) == [r.id for r in records]
    assert np.allclose(result.probs.sum(axis=1), 1.0, atol=1e-5)
    assert all(len(top) == 3 and top[0] == label for top, label in zip(result.topk_labels(), result.predicted))


def test_idle_warmup_names_a_run_whose_every_step_is_a_warmup_step():
    from transformers import TrainingArguments

    from lref.training.settings import idle_warmup

    def args(**kw):
        return TrainingArguments(output_dir="unused", per_device_train_batch_size=8, report_to="none", **kw)

    # 8 examples, half an epoch: one step, and any warmup fraction rounds up to that one step
    assert "all 1 optimizer step(s) are warmup steps" in idle_warmup(args(num_train_epochs=0.5, warmup_steps=0.05), 8)
    assert idle_warmup(args(num_train_epochs=0.5, warmup_steps=0.0), 8) is None
    assert idle_warmup(args(num_train_epochs=1, warmup_steps=0.05), 64) is None  # 8 steps, 1 of them warmup
    assert idle_warmup(args(max_steps=2, warmup_steps=2), 64) is not None
