"""Stage 3, DPO de-biasing: preference pairs mined from the model's own near misses, trained with TRL's DPOTrainer.

LLM judges are optimistic: most of their errors grade a product as more relevant than it is. The paper's remedy:

1. **Mining** (`mine_pairs`). Score a labelled pool with :class:`lref.models.scorer.LabelScorer` and keep the pairs
   whose top-1 label is wrong while the gold label is among the top-k (the "beam"). chosen = gold, rejected = the
   wrong top-1. `over_estimates_only` keeps only the pairs whose top-1 is more relevant than gold. Pairs whose gold
   label lies outside the top-k produce no pair; the report counts them.
2. **Training** (`train_dpo`). TRL's `DPOTrainer` with a fresh LoRA on the (merged) input model: loss = DPO sigmoid
   (β) + α · SFT on chosen, via `loss_type=["sigmoid", "sft"]`, `loss_weights=[1, α]` (TRL 1.x has no `rpo_alpha`).
   The reference model is the policy with its adapter disabled (TRL does this for a PEFT model with
   `ref_model=None`). The prompt is tokenized by `lref.training.examples.build_example`, i.e. `encode_prompt`'s
   prefix and pair ids, exactly what the scorer and the SFT stage see; TRL receives the token ids, not text, so its own
   tokenization (which would tokenize prefix + pair in one piece) never applies.
3. **Collapse guard** (`ChosenCollapseGuard`). A known DPO failure lowers the chosen answer's log-prob too, only less
   than the rejected one's. TRL logs `rewards/chosen` = β · (log p_policy(chosen) - log p_ref(chosen)), batch-matched;
   with a fresh LoRA the reference *is* the starting model, so rewards/chosen / β is how far the chosen log-prob has
   moved from its start. Training stops once it falls below `-collapse_tolerance`.

**CoT pairs** (`mode="cot"`, for models tuned by the Multi-CoT stage): the model writes its own analysis of every
pool pair after the CoT prompt (`lref.models.generation.generate_predictions`); a pair whose analysis ends in a
wrong label (`cot_mistakes`) is explained by the teacher (`lref.teachers.cache.teach`, cached), and when that
explanation ends in the gold label it gives a pair (`cot_pairs`): chosen = the teacher's analysis + "Relevance:
<gold>", rejected = the model's own analysis + "Relevance: <wrong>", both after the CoT prompt. The recall guard
still scores in direct mode.

Too few pairs (fewer than `min_pairs`, e.g. when the model is already right) skip training: the stage writes the
pairs and a manifest of kind ``"skipped"`` into `output_dir` and returns the input model reference unchanged.

    >>> from lref.stages.dpo import DPOStageConfig
    >>> config = DPOStageConfig(model="runs/sft/adapter", output_dir="runs/dpo")
    >>> config.beta, config.sft_weight, config.top_k, config.epochs
    (0.1, 0.65, 3, 2.0)
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from lref.calibration import CALIBRATION_FILE, label_bias_for
from lref.data.records import DataError, Record
from lref.data.validation import validate_records
from lref.device import is_main_process, prepare_device
from lref.fingerprint import data_hash, library_versions
from lref.io import MANIFEST_NAME, write_json, write_jsonl
from lref.labels import LabelScheme, get_scheme
from lref.metrics import evaluate
from lref.models.generation import generate_predictions
from lref.models.loading import load_causal_lm
from lref.models.scorer import LabelScorer, ScorerConfig
from lref.models.zoo import stored_model_reference
from lref.prompts import (
    ANSWER_CUE,
    PAIR_TAIL_TOKENS,
    PROMPT_VERSION,
    encode_prompt,
    label_completion,
    label_token_ids,
    match_hint_manifest,
    records_for_model,
    truncate_pair,
)
from lref.prompts.cot import cot_completion, cot_prompt, parse_label, strip_answer
from lref.prompts.rules import RuleSet, load_rule_set
from lref.teachers.base import Explanation
from lref.teachers.cache import ANSWERS_FILE, HTTP_CACHE_NAME, default_cache_root, teach, teacher_dir
from lref.teachers.registry import DEFAULT_TEACHER_URL, check_teacher, make_teacher
from lref.training.examples import build_example, completion_ids, text_completion_ids
from lref.training.run_guard import RunGuard
from lref.training.settings import (
    LoraSettings,
    TrainingSettings,
    check_training_fields,
    idle_warmup,
    training_arguments,
    with_default,
)

logger = logging.getLogger(__name__)

PAIRS_FILE = "dpo_pairs.jsonl"
GUARD_OBJECTIVES = ("over_estimate", "weighted_f1")
MODES = ("direct", "cot")
COT_TASKS = ("ee", "ra")


@dataclass
class DPOStageConfig(LoraSettings, TrainingSettings):
    """Settings of the DPO de-biasing stage. Every field's help text also feeds the command line (`lref train dpo`)."""

    FINGERPRINT_ADDED_FIELDS: ClassVar[tuple[str, ...]] = ("weight_decay", "lora_dropout")
    """Training settings this config gained with the shared `TrainingSettings` (`lref.fingerprint.ADDED_FIELDS`)."""

    model: str = field(
        default="gemma-3-270m",
        metadata={
            "help": "Model to de-bias: a zoo name, an HF folder, or an lref adapter folder (merged, then a fresh LoRA "
            "is trained on top; the merged model is also the DPO reference)."
        },
    )
    scheme: str = field(default="graded3", metadata={"help": "Label scheme (preset name) the pool is labelled in."})
    output_dir: str = field(
        default="runs/dpo",
        metadata={"help": "Folder for the adapter, tokenizer, manifest and mined pairs (dpo_pairs.jsonl)."},
    )
    top_k: int = field(
        default=3, metadata={"help": "Beam width: a wrong top-1 gives a pair only when gold is among the top-k labels."}
    )
    over_estimates_only: bool = field(
        default=False,
        metadata={"help": "Keep only pairs whose wrong top-1 is more relevant than gold (the optimistic errors)."},
    )
    mine_calibrated: bool = field(
        default=False,
        metadata={
            "help": "Mine and guard with the input model's label-prior calibration (its folder's calibration.json; "
            "the pipeline fits one for every stage it evaluates), so the pairs are the mistakes of the calibrated "
            "judge rather than of its raw label prior, which the calibration already corrects. A warning and raw "
            "scores when the folder has none."
        },
    )
    mode: str = field(
        default="direct",
        metadata={
            "help": "Pair kind: 'direct' (label words after the direct prompt, mined with the label scorer) or 'cot' "
            "(for CoT-tuned models: chosen = the teacher's analysis ending in gold, rejected = the model's own "
            "generated analysis ending in its wrong label)."
        },
    )
    cot_task: str = field(
        default="ee",
        metadata={"help": "cot mode: the CoT prompt of the pairs, 'ee' (expert analysis) or 'ra' (rules)."},
    )
    teacher: str = field(
        default="rules",
        metadata={"help": "cot mode: teacher writing the chosen analyses: 'rules' (offline), 'openai' or 'local'."},
    )
    teacher_model: str | None = field(
        default=None,
        metadata={"help": "cot mode: the teacher's model, the served model name (openai, required) or a zoo "
                  "name/folder (local)."},
    )
    teacher_url: str = field(
        default=DEFAULT_TEACHER_URL,
        metadata={"help": "cot mode: base URL of the openai teacher's API, with /v1."},
    )
    rules: str | None = field(
        default=None,
        metadata={"help": "cot mode, ra task: business rules (a YAML rule file or a shipped set); default: the rules "
                  "in the model's CoT manifest, else the scheme's own set."},
    )
    max_new_tokens: int = field(
        default=160, metadata={"help": "cot mode: most tokens the model may write per analysis when mining."}
    )
    min_pairs: int = field(
        default=16,
        metadata={"help": "Fewer mined pairs than this skip training; the input model is returned unchanged."},
    )
    beta: float = field(default=0.1, metadata={"help": "DPO β: higher keeps the policy closer to the reference."})
    sft_weight: float = field(
        default=0.65,
        metadata={"help": "α: weight of the SFT (negative log-likelihood) loss on chosen; 0.65 in the paper."},
    )
    logits_at_labels_only: bool = field(
        default=True,
        metadata={
            "help": "Project only the answer positions through the LM head off GPU too (TRL does so only on Triton "
            "devices, and scores every position elsewhere): same loss, several times faster on CPU."
        },
    )
    collapse_tolerance: float | None = field(
        default=1.0,
        metadata={
            "help": "Stop when the chosen answer's log-prob (nats, summed over its tokens, mean over the logged "
            "batches) falls more than this below its value under the starting model; None: never stop."
        },
    )
    guard_fraction: float = field(
        default=0.2,
        metadata={
            "help": "Share of the pool held out of mining as a guard slice: scored every guard_steps steps, and the "
            "adapter of the best check (step 0, the unchanged model, included) is the one kept; 0 turns it off."
        },
    )
    guard_steps: int = field(default=10, metadata={"help": "Score the guard slice every this many steps."})
    guard_objective: str = field(
        default="weighted_f1",
        metadata={
            "help": "Which check wins: 'weighted_f1' (the highest weighted-F1) or 'over_estimate' (the lowest "
            "over-estimate share among the checks whose weighted-F1 is within guard_tolerance of the start)."
        },
    )
    guard_tolerance: float = field(
        default=0.01,
        metadata={
            "help": "Most weighted-F1 a check may lose against the start on the guard slice and still win; training "
            "stops once a check loses more than 5x this."
        },
    )
    scorer_batch_size: int = field(default=16, metadata={"help": "Pairs per forward pass when mining."})
    # training settings whose default or meaning differs here
    lora_dropout: float = with_default("lora_dropout", 0.0)
    learning_rate: float = with_default("learning_rate", 5e-5)
    epochs: float = with_default(
        "epochs", 2.0, help="Training epochs over the mined pairs; ignored when max_steps > 0."
    )
    batch_size: int = with_default("batch_size", 8, help="Preference pairs per forward pass (each pair is 2 rows).")
    max_length: int = with_default(
        "max_length", 512, help="Longest prompt + answer in tokens; longer pairs lose the middle of their product text "
        "(the instruction, the answer cue and the label are kept)."
    )
    warmup_ratio: float = with_default("warmup_ratio", 0.1)
    resume: bool = with_default(
        "resume", False,
        help="Continue from the last checkpoint in output_dir, reusing its mined pairs instead of re-scoring.",
    )
    seed: int = with_default("seed", 0, help="Seed for LoRA initialisation and shuffling.")
    logging_steps: int = with_default(
        "logging_steps", 10,
        help="Log losses, chosen/rejected log-probs and margins (and check for collapse) every this many steps.",
    )

    def __post_init__(self) -> None:
        check_training_fields(self, ("top_k", "lora_r", "guard_steps", "batch_size", "grad_accum", "save_steps",
                                     "logging_steps", "max_length", "scorer_batch_size", "min_pairs", "max_new_tokens"))
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if self.cot_task not in COT_TASKS:
            raise ValueError(f"cot_task must be one of {', '.join(COT_TASKS)}, not {self.cot_task!r}")
        check_teacher(self.teacher, self.teacher_model, needs_model=self.mode == "cot")
        if self.mine_calibrated and self.mode == "cot":
            raise ValueError("mine_calibrated needs mode='direct': CoT pairs are mined from generations, not label "
                             "scores")
        if self.beta <= 0:
            raise ValueError(f"beta must be positive, not {self.beta}")
        if self.sft_weight < 0:
            raise ValueError(f"sft_weight must be >= 0, not {self.sft_weight}")
        if not 0 <= self.guard_fraction < 1:
            raise ValueError(f"guard_fraction must be in [0, 1), not {self.guard_fraction}")
        if self.guard_objective not in GUARD_OBJECTIVES:
            raise ValueError(
                f"guard_objective must be one of {', '.join(GUARD_OBJECTIVES)}, not {self.guard_objective!r}"
            )
        if self.guard_tolerance < 0:
            raise ValueError(f"guard_tolerance must be >= 0, not {self.guard_tolerance}")
        if self.collapse_tolerance is not None and self.collapse_tolerance < 0:
            raise ValueError(f"collapse_tolerance must be >= 0 or None, not {self.collapse_tolerance}")


# ---------------------------------------------------------------------------------------------------------------------
# Mining


@dataclass
class PreferencePair:
    """One mined pair: the record, the gold label (chosen), the wrong label (rejected), gold's rank; CoT pairs also
    carry the two completions written after the CoT prompt."""

    record: Record
    chosen: str
    rejected: str
    gold_rank: int | None
    """1-based rank of the gold label in the model's label distribution (2 = runner-up); None for CoT pairs."""
    probs: dict[str, float]
    chosen_text: str | None = None
    """CoT pairs: the teacher's analysis, then "Relevance: <chosen>" (what the model should write)."""
    rejected_text: str | None = None
    """CoT pairs: the model's own analysis, then "Relevance: <rejected>"."""

    def __post_init__(self) -> None:
        if (self.chosen_text is None) != (self.rejected_text is None):
            raise ValueError(f"pair {self.record.id!r}: a CoT pair needs both chosen_text and rejected_text")

    @property
    def is_cot(self) -> bool:
        return self.chosen_text is not None

    def to_dict(self) -> dict[str, Any]:
        data = {"chosen": self.chosen, "rejected": self.rejected, "gold_rank": self.gold_rank, "probs": self.probs,
                "record": self.record.to_dict()}
        if self.is_cot:
            data.update(chosen_text=self.chosen_text, rejected_text=self.rejected_text)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreferencePair:
        rank = data.get("gold_rank")
        return cls(record=Record.from_dict(data["record"]), chosen=data["chosen"], rejected=data["rejected"],
                   gold_rank=None if rank is None else int(rank), probs=dict(data.get("probs") or {}),
                   chosen_text=data.get("chosen_text"), rejected_text=data.get("rejected_text"))


def mine_pairs(
    records: Sequence[Record],
    scores,
    scheme: LabelScheme | str,
    top_k: int = 3,
    over_estimates_only: bool = False,
) -> tuple[list[PreferencePair], dict[str, Any]]:
    """Preference pairs from scored records, and the mining report.

    `scores` is the :class:`lref.models.scorer.ScoreResult` of `records` (same order). A record gives a pair when its
    top-1 label is not its gold label and gold ranks within `top_k` (ranks by probability, ties in scheme order,
    as `ScoreResult.topk_indices`). The report's shares are shares of the errors: `over_estimate_share` (top-1 more
    relevant than gold), `gold_at_rank2_share`, `gold_outside_topk_share` (no pair possible).
    """
    scheme = get_scheme(scheme)
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, not {top_k}")
    if len(scores.ids) != len(records) or any(str(r.id) != str(i) for r, i in zip(records, scores.ids)):
        raise ValueError("scores do not belong to these records (ids differ or are in another order)")
    if tuple(scores.labels) != scheme.labels:
        raise ValueError(f"scores are over labels {list(scores.labels)}, the scheme has {list(scheme.labels)}")
    order = np.argsort(-scores.probs, axis=1, kind="stable")  # label indices by decreasing probability
    pairs: list[PreferencePair] = []
    errors = over = rank2 = outside = 0
    transitions: Counter[str] = Counter()
    for record, ranking, probs in zip(records, order, scores.probs):
        gold = scheme.index(scheme.parse(record.label))
        top1 = int(ranking[0])
        if top1 == gold:
            continue
        errors += 1
        over += top1 < gold
        rank = int(np.nonzero(ranking == gold)[0][0]) + 1
        rank2 += rank == 2
        if rank > top_k:
            outside += 1
            continue
        if over_estimates_only and top1 > gold:
            continue
        chosen, rejected = scheme.labels[gold], scheme.labels[top1]
        transitions[f"{rejected}->{chosen}"] += 1
        pairs.append(PreferencePair(
            record=record if record.label == chosen else replace(record, label=chosen),
            chosen=chosen, rejected=rejected, gold_rank=rank,
            probs={label: float(p) for label, p in zip(scheme.labels, probs)},
        ))

    def share(count: int) -> float | None:
        return count / errors if errors else None

    report = {
        "scored": len(records),
        "errors": errors,
        "error_rate": errors / len(records) if records else None,
        "over_estimate_share": share(over),
        "under_estimate_share": share(errors - over),
        "gold_at_rank2_share": share(rank2),
        "gold_outside_topk_share": share(outside),
        "pairs": len(pairs),
        "pair_transitions": dict(sorted(transitions.items())),
        "top_k": top_k,
        "over_estimates_only": over_estimates_only,
    }
    return pairs, report


def cot_mistakes(
    records: Sequence[Record], texts: Sequence[str], scheme: LabelScheme | str, over_estimates_only: bool = False
) -> list[int]:
    """Indices of the records whose generated analysis (`texts`, same order) ends in a wrong label; a text without a
    label (a fallback) is no mistake. With `over_estimates_only`, only the labels more relevant than gold. These are
    the pairs the teacher has to explain."""
    scheme = get_scheme(scheme)
    if len(texts) != len(records):
        raise ValueError(f"{len(texts)} generated texts for {len(records)} records")
    out = []
    for i, (record, text) in enumerate(zip(records, texts)):
        decided, gold = parse_label(text, scheme), scheme.parse(record.label)
        if decided is None or decided == gold:
            continue
        if over_estimates_only and scheme.index(decided) > scheme.index(gold):
            continue
        out.append(i)
    return out


def own_completion(text: str, label: str, scheme: LabelScheme, kind: str = "ee") -> str:
    """The model's generated text as a CoT completion: its analysis up to the line that gives `label` (anything
    written after its decision dropped), then the answer line in the canonical form, as `cot_completion` writes it."""
    lines = text.splitlines()
    decision_lines = [i for i, line in enumerate(lines) if parse_label(line, scheme) == label]
    analysis = strip_answer("\n".join(lines[: decision_lines[-1]] if decision_lines else lines))
    return cot_completion(Explanation(id="", kind=kind, analysis=analysis, label=label), scheme)


def cot_pairs(
    records: Sequence[Record],
    texts: Sequence[str],
    explanations: Sequence[Explanation],
    scheme: LabelScheme | str,
    over_estimates_only: bool = False,
) -> tuple[list[PreferencePair], dict[str, Any]]:
    """CoT preference pairs and the mining report, from the model's generated analyses and the teacher's.

    `texts` are the model's generations after the CoT prompt, one per record; `explanations` the teacher's answers
    (any order, matched by record id) for at least every `cot_mistakes` record. A mistake gives a pair when the
    teacher's explanation ends in the gold label: chosen_text = the teacher's completion ("... Relevance: <gold>"),
    rejected_text = the model's own (`own_completion`, "... Relevance: <wrong>"). The report is `mine_pairs`' with
    `gold_at_rank2_share`, `gold_outside_topk_share` and `top_k` null (no ranking), `error_rate` over the texts with a
    label, plus `fallbacks` (texts without a label) and `teacher_disagreements` (explanations not ending in gold).
    """
    scheme = get_scheme(scheme)
    mistakes = cot_mistakes(records, texts, scheme)
    by_id = {str(explanation.id): explanation for explanation in explanations}
    fallbacks = sum(parse_label(text, scheme) is None for text in texts)
    pairs: list[PreferencePair] = []
    over = disagreements = 0
    transitions: Counter[str] = Counter()
    for i in mistakes:
        record, gold, decided = records[i], scheme.parse(records[i].label), parse_label(texts[i], scheme)
        over_estimate = scheme.index(decided) < scheme.index(gold)
        over += over_estimate
        if over_estimates_only and not over_estimate:
            continue
        explanation = by_id.get(str(record.id))
        if explanation is None:
            raise ValueError(f"no teacher explanation for pair {record.id!r}, whose analysis ends in a wrong label")
        if explanation.label != gold:
            disagreements += 1
            continue
        transitions[f"{decided}->{gold}"] += 1
        pairs.append(PreferencePair(
            record=record if record.label == gold else replace(record, label=gold),
            chosen=gold, rejected=decided, gold_rank=None, probs={},
            chosen_text=cot_completion(explanation, scheme),
            rejected_text=own_completion(texts[i], decided, scheme, explanation.kind),
        ))
    errors, decided_count = len(mistakes), len(records) - fallbacks
    report = {
        "scored": len(records),
        "fallbacks": fallbacks,
        "errors": errors,
        "error_rate": errors / decided_count if decided_count else None,
        "over_estimate_share": over / errors if errors else None,
        "under_estimate_share": (errors - over) / errors if errors else None,
        "gold_at_rank2_share": None,
        "gold_outside_topk_share": None,
        "teacher_disagreements": disagreements,
        "pairs": len(pairs),
        "pair_transitions": dict(sorted(transitions.items())),
        "top_k": None,
        "over_estimates_only": over_estimates_only,
    }
    return pairs, report


# ---------------------------------------------------------------------------------------------------------------------
# Collapse guard


def chosen_logp_change(logs: dict[str, float], beta: float) -> float | None:
    """How far the chosen answer's log-prob has moved from the reference (= the starting model), from one TRL log
    entry: `rewards/chosen` / β. None when the entry has no reward (e.g. the end-of-training summary)."""
    reward = logs.get("rewards/chosen")
    return None if reward is None else float(reward) / beta


def chosen_collapsed(logs: dict[str, float], beta: float, tolerance: float | None) -> bool:
    """The guard's rule: the chosen log-prob has fallen more than `tolerance` nats below its start."""
    change = chosen_logp_change(logs, beta)
    return tolerance is not None and change is not None and change < -tolerance


@functools.cache
def _make_guard_class():
    from transformers import TrainerCallback

    class ChosenCollapseGuard(TrainerCallback):
        """Stops training when the chosen log-prob falls more than `tolerance` below its start (`chosen_collapsed`);
        keeps the per-log history of chosen/rejected log-probs and margins for the manifest."""

        def __init__(self, beta: float, tolerance: float | None):
            self.beta = beta
            self.tolerance = tolerance
            self.history: list[dict[str, float]] = []
            self.stopped_at_step: int | None = None
            self.stopped_change: float | None = None

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            if "rewards/chosen" not in logs:
                return control
            entry = {"step": state.global_step, "chosen_logp_change": chosen_logp_change(logs, self.beta)}
            for key in ("loss", "logps/chosen", "logps/rejected", "rewards/margins", "rewards/accuracies"):
                if key in logs:
                    entry[key] = float(logs[key])
            self.history.append(entry)
            if self.stopped_at_step is None and chosen_collapsed(logs, self.beta, self.tolerance):
                self.stopped_at_step = state.global_step
                self.stopped_change = entry["chosen_logp_change"]
                logger.warning(
                    "DPO collapse guard: the chosen log-prob fell %.3f nats below its start at step %d (tolerance "
                    "%.3f); stopping", -self.stopped_change, state.global_step, self.tolerance,
                )
                control.should_training_stop = True
            return control

        def report(self) -> dict[str, Any]:
            return {
                "tolerance": self.tolerance,
                "triggered": self.stopped_at_step is not None,
                "stopped_at_step": self.stopped_at_step,
                "chosen_logp_change_at_stop": self.stopped_change,
                "log": self.history,
            }

    return ChosenCollapseGuard


def guard_winner(checks: Sequence[dict[str, Any]], objective: str, tolerance: float) -> int:
    """Index of the winning guard check; `checks[0]` is the starting model. 'weighted_f1': the highest weighted-F1
    (earliest on ties). 'over_estimate': the lowest over-estimate share among the checks within `tolerance`
    weighted-F1 of the start (ties: higher weighted-F1, then earliest); the start always qualifies."""
    if objective == "weighted_f1":
        return max(range(len(checks)), key=lambda i: (checks[i]["weighted_f1"], -i))
    floor = checks[0]["weighted_f1"] - tolerance
    eligible = [i for i, check in enumerate(checks) if check["weighted_f1"] >= floor]
    return min(eligible, key=lambda i: (checks[i]["over_estimate_share"], -checks[i]["weighted_f1"], i))


def _lora_state(model) -> dict[str, Any]:
    return {name: value.detach().clone() for name, value in model.state_dict().items() if "lora_" in name}


@functools.cache
def _make_recall_guard_class():
    from transformers import TrainerCallback

    class RecallGuard(TrainerCallback):
        """Scores a held-out guard slice of the pool with the policy every `every` steps (and with the adapter
        disabled at the start), keeps the LoRA weights of the winning check (`guard_winner`) and stops once
        weighted-F1 has fallen more than 5 x `tolerance` below the start. `restore` puts the winner back."""

        def __init__(self, records, scheme, tokenizer, *, every: int, objective: str, tolerance: float,
                     batch_size: int, max_length: int, label_bias: tuple[float, ...] | None = None):
            self.records, self.scheme, self.tokenizer = list(records), scheme, tokenizer
            self.label_bias = label_bias
            self.every, self.objective, self.tolerance = every, objective, tolerance
            self.batch_size, self.max_length = batch_size, max_length
            self.checks: list[dict[str, Any]] = []
            self.best_state: dict[str, Any] | None = None  # None: the start (adapter off) is the winner

        def _check(self, model, step: int) -> dict[str, Any]:
            scorer = LabelScorer(model, self.tokenizer, self.scheme, ScorerConfig(
                batch_size=self.batch_size, max_length=self.max_length, label_bias=self.label_bias, progress=False))
            metrics = evaluate(self.records, scorer.predict(self.records), self.scheme, bootstrap=0)
            check = {"step": step, **{key: metrics[key] for key in (
                "accuracy", "weighted_f1", "macro_f1", "over_estimate_share", "under_estimate_share")}}
            check["recall"] = {label: row["recall"] for label, row in metrics["per_class"].items()}
            self.checks.append(check)
            logger.info("DPO guard at step %d: weighted-F1 %.4f, over-estimates %.4f, under-estimates %.4f",
                        step, check["weighted_f1"], check["over_estimate_share"], check["under_estimate_share"])
            return check

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            if not self.checks:
                with model.disable_adapter():
                    self._check(model, 0)
            return control

        def _maybe_check(self, state, control, model) -> None:
            if state.global_step == 0 or self.checks[-1]["step"] == state.global_step:
                return
            check = self._check(model, state.global_step)
            if guard_winner(self.checks, self.objective, self.tolerance) == len(self.checks) - 1:
                self.best_state = _lora_state(model)
            if check["weighted_f1"] < self.checks[0]["weighted_f1"] - 5 * self.tolerance:
                logger.warning("DPO guard: weighted-F1 on the guard slice fell to %.4f from %.4f; stopping",
                               check["weighted_f1"], self.checks[0]["weighted_f1"])
                control.should_training_stop = True

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step % self.every == 0:
                self._maybe_check(state, control, model)
            return control

        def on_train_end(self, args, state, control, model=None, **kwargs):
            self._maybe_check(state, control, model)
            return control

        def restore(self, model) -> None:
            """Load the winner's LoRA weights into `model`; for the start, zero the LoRA B matrices (adapter = 0)."""
            import torch

            if self.best_state is not None:
                model.load_state_dict(self.best_state, strict=False)
                return
            with torch.no_grad():
                for name, value in model.named_parameters():
                    if "lora_B" in name:
                        value.zero_()

        def report(self) -> dict[str, Any]:
            winner = guard_winner(self.checks, self.objective, self.tolerance) if self.checks else None
            return {
                "objective": self.objective,
                "tolerance": self.tolerance,
                "n_guard": len(self.records),
                "checks": self.checks,
                "chosen_step": self.checks[winner]["step"] if winner is not None else None,
                "unchanged": winner == 0,
            }

    return RecallGuard


def __getattr__(name: str):
    # The guards subclass transformers' TrainerCallback; build them on first use so importing this module stays light.
    if name == "ChosenCollapseGuard":
        return _make_guard_class()
    if name == "RecallGuard":
        return _make_recall_guard_class()
    raise AttributeError(name)


# ---------------------------------------------------------------------------------------------------------------------
# Examples


def preference_example(
    tokenizer,
    pair: PreferencePair,
    scheme: LabelScheme,
    max_length: int | None,
    *,
    cot_task: str = "ee",
    rules: RuleSet | None = None,
) -> dict[str, list[int]]:
    """Token ids in TRL's pre-tokenized preference format. `prompt_ids` are the prompt ids of the SFT stage
    (`build_example`: `encode_prompt`'s prefix + pair, BOS included, the pair cut in its middle to fit), `chosen_ids`
    and `rejected_ids` the verbalised labels plus EOS (`completion_ids`). A CoT pair gets the `cot_task` prompt
    (`cot_prompt`; `rules` for ra) and its two texts instead (`cot_preference_example`)."""
    if pair.is_cot:
        return cot_preference_example(tokenizer, pair, scheme, max_length, cot_task=cot_task, rules=rules)
    chosen = completion_ids(tokenizer, scheme, pair.chosen)
    rejected = completion_ids(tokenizer, scheme, pair.rejected)
    # Leave room for the longer of the two answers.
    budget = None if max_length is None else max_length - max(0, len(rejected) - len(chosen))
    example = build_example(tokenizer, replace(pair.record, label=pair.chosen), scheme, budget)
    prompt = [t for t, label in zip(example["input_ids"], example["labels"]) if label == -100]
    assert example["input_ids"][len(prompt):] == chosen  # the answer follows the prompt
    return {"prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": rejected}


def cot_preference_example(
    tokenizer,
    pair: PreferencePair,
    scheme: LabelScheme,
    max_length: int | None,
    *,
    cot_task: str = "ee",
    rules: RuleSet | None = None,
) -> dict[str, list[int]]:
    """Token ids of a CoT pair: the CoT prompt (prefix and pair tokenized apart, BOS included, as in CoT training),
    then each text plus EOS. Too long, the pair loses its middle first (as on the direct path, its last tokens, the
    analysis cue, kept); when even that is not enough, the texts lose the middle of their analysis, their final
    "Relevance: <label>" and EOS kept."""
    if not pair.is_cot:
        raise ValueError(f"pair {pair.record.id!r} has no CoT texts")
    prefix_ids, pair_ids = encode_prompt(tokenizer, cot_prompt(cot_task, pair.record, scheme, rules))
    texts = {"chosen_ids": (pair.chosen_text, pair.chosen), "rejected_ids": (pair.rejected_text, pair.rejected)}
    answers = {key: text_completion_ids(tokenizer, text) for key, (text, _) in texts.items()}
    if max_length is not None:
        room = max_length - len(prefix_ids)
        pair_ids = truncate_pair(pair_ids, max(room - max(map(len, answers.values())), 2 * PAIR_TAIL_TOKENS),
                                 PAIR_TAIL_TOKENS)
        room -= len(pair_ids)
        for key, (_, label) in texts.items():
            # the answer line tokenized on its own, + EOS: what must survive
            tail = len(tokenizer(f"\n{ANSWER_CUE}{label_completion(scheme, label)}",
                                 add_special_tokens=False)["input_ids"]) + 1
            if room <= tail:
                raise DataError(
                    f"record {pair.record.id!r}: max_length {max_length} leaves no room for the analysis after the "
                    f"{len(prefix_ids)}-token instruction and the {len(pair_ids)}-token pair; raise max_length"
                )
            answers[key] = truncate_pair(answers[key], room, tail)
    return {"prompt_ids": prefix_ids + pair_ids, **answers}


@contextlib.contextmanager
def compact_lm_head(enabled: bool = True):
    """While active, TRL's fused LM head projects only the positions with a label (the answer tokens) on every
    device. TRL 1.16 decides this with `trl.trainer.utils._use_triton` and, off CUDA/XPU, projects every position
    (to keep tile shapes fixed for Neuron's compiler), i.e. ~140 x 262k logits per row for a 3-token answer."""
    from trl.trainer import utils as trl_utils

    original = getattr(trl_utils, "_use_triton", None)
    if not enabled or original is None:
        yield
        return
    trl_utils._use_triton = lambda device: device.type != "neuron" or original(device)
    try:
        yield
    finally:
        trl_utils._use_triton = original


@functools.cache
def _make_trainer_class():
    from trl import DPOTrainer

    class PretokenizedDPOTrainer(DPOTrainer):
        """`DPOTrainer` that takes datasets already holding `prompt_ids`, `chosen_ids` and `rejected_ids` as they are
        (TRL 1.16 would re-derive them from text and tokenize prompt + answer as one string)."""

        def __init__(self, *args, logits_at_labels_only: bool = True, **kwargs):
            super().__init__(*args, **kwargs)
            self.logits_at_labels_only = logits_at_labels_only

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            with compact_lm_head(self.logits_at_labels_only):
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            if {"prompt_ids", "chosen_ids", "rejected_ids"} <= set(next(iter(dataset))):
                return dataset
            return super()._prepare_dataset(dataset, processing_class, args, dataset_name)

    return PretokenizedDPOTrainer


# ---------------------------------------------------------------------------------------------------------------------
# Entry point


def split_guard(records: Sequence[Record], fraction: float, seed: int) -> tuple[list[Record], list[Record]]:
    """(mining records, guard records): a seeded `fraction` of the pool is held out of mining for the recall guard."""
    n_guard = round(len(records) * fraction)
    if n_guard == 0:
        return list(records), []
    order = list(range(len(records)))
    random.Random(f"dpo-guard-{seed}").shuffle(order)
    guard = set(order[:n_guard])
    return ([r for i, r in enumerate(records) if i not in guard], [r for i, r in enumerate(records) if i in guard])


def _read_pairs(path: Path) -> list[PreferencePair]:
    with path.open(encoding="utf-8") as handle:
        return [PreferencePair.from_dict(json.loads(line)) for line in handle if line.strip()]


def _base_manifest(config: DPOStageConfig, scheme: LabelScheme, pool_hash: str, records: Sequence[Record],
                   report: dict[str, Any]) -> dict[str, Any]:
    return {
        "stage": "dpo",
        "base_model": stored_model_reference(config.model),
        "scheme": {"name": scheme.name, "labels": list(scheme.labels)},
        "prompt_version": PROMPT_VERSION,
        "data_hash": pool_hash,
        "n_pool": len(records),
        **match_hint_manifest(records),
        "mining": report,
        "pairs_file": PAIRS_FILE,
        "config": asdict(config),
        "versions": {**library_versions(), **_trl_version()},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _trl_version() -> dict[str, str]:
    import importlib.metadata as md

    try:
        return {"trl": md.version("trl")}
    except md.PackageNotFoundError:
        return {}


def _pair_source(config: DPOStageConfig) -> dict[str, str | None]:
    """What the mined pairs depend on besides pool and model (a resumed run must match it)."""
    return {"mode": config.mode, "cot_task": config.cot_task if config.mode == "cot" else None}


def _mine_cot_pairs(config: DPOStageConfig, model, tokenizer, scheme: LabelScheme, records: Sequence[Record],
                    rules: RuleSet | None, output_dir: Path) -> tuple[list[PreferencePair], dict[str, Any]]:
    """cot mode: the model writes its analyses (greedy), the teacher explains its mistakes (cached in the teacher
    cache root, `lref.teachers.cache.default_cache_root`), `cot_pairs` pairs them."""
    _, generation = generate_predictions(
        config.model, records, scheme, task=config.cot_task, rules=rules, max_new_tokens=config.max_new_tokens,
        batch_size=config.scorer_batch_size, max_length=config.max_length, progress=config.progress, model=model,
        tokenizer=tokenizer,
    )
    texts = generation.pop("texts")
    wanted = [records[i] for i in cot_mistakes(records, texts, scheme, config.over_estimates_only)]
    explanations: list[Explanation] = []
    teacher_stats = None
    if wanted:  # an LLM teacher is only started when there is something to explain
        cache_root = default_cache_root(output_dir)  # RUN/teacher_cache in a pipeline run: survives stage resets
        teacher = make_teacher(config.teacher, model=config.teacher_model, base_url=config.teacher_url,
                               cache_path=cache_root / HTTP_CACHE_NAME, records=records,
                               progress=config.progress)
        try:
            explanations, teacher_stats = teach(
                teacher, config.cot_task, wanted, scheme, rules=rules, progress=config.progress,
                cache_path=teacher_dir(cache_root, teacher.name) / ANSWERS_FILE.format(task=config.cot_task),
            )
        finally:
            if hasattr(teacher, "close"):
                teacher.close()
    pairs, report = cot_pairs(records, texts, explanations, scheme, config.over_estimates_only)
    report.update(mode="cot", cot_task=config.cot_task, teacher=config.teacher, teacher_stats=teacher_stats,
                  generation=generation)
    return pairs, report


def _mining_bias(config: DPOStageConfig, scheme: LabelScheme) -> tuple[float, ...] | None:
    """The input model's calibrated label bias when `mine_calibrated` asks for it, else None (raw scores)."""
    if not config.mine_calibrated:
        return None
    bias = label_bias_for(config.model, scheme)
    if bias is None:
        logger.warning("mine_calibrated: %s has no %s; mining with raw scores", config.model, CALIBRATION_FILE)
    return bias


def train_dpo(config: DPOStageConfig, records: Sequence[Record], *, callbacks: list | None = None) -> Path | str:
    """Mine preference pairs from `records` with `config.model`, train a LoRA with DPO + α·SFT, return its folder.

    The folder holds the PEFT adapter, the tokenizer, `lref_manifest.json` (base_model = the input model, so
    `load_causal_lm(folder)` loads input + adapter; mining report, collapse guard, train metrics) and the mined pairs
    (`dpo_pairs.jsonl`). With fewer than `min_pairs` pairs nothing is trained: the folder gets the pairs and a manifest
    of kind "skipped", and the input model reference `config.model` is returned as given. With `mode="cot"` the
    pairs are CoT pairs (`_mine_cot_pairs`); the recall guard still scores the guard slice in direct mode.
    """
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import set_seed
    from trl import DPOConfig

    scheme = get_scheme(config.scheme)
    if not records:
        raise DataError("no records to mine: DPO needs a labelled pool of pairs")
    records = validate_records(records, scheme, "DPO pool")
    output_dir = Path(config.output_dir)
    run = RunGuard(output_dir, config.resume)
    pool_hash = data_hash(records)
    pairs_path = output_dir / PAIRS_FILE
    resuming = run.resuming

    use_cpu = prepare_device(config)

    set_seed(config.seed)
    model, tokenizer, input_manifest = load_causal_lm(config.model, merge_adapter=True, dtype=torch.float32)
    records = records_for_model(records, input_manifest)
    mining_records, guard_records = split_guard(records, config.guard_fraction, config.seed)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    label_token_ids(tokenizer, scheme)  # fail early when two labels share their first token
    label_bias = _mining_bias(config, scheme)
    rules = None
    if config.mode == "cot" and config.cot_task == "ra":  # the rules the model was RA-tuned on, unless given
        rules = load_rule_set(config.rules or ((input_manifest or {}).get("cot") or {}).get("rules"), scheme)

    if resuming:
        run.check({"data_hash": pool_hash, "model": config.model}, strict=True,
                    reason="come from another pool or model")
        previous = run.previous_run()
        if previous.get("pairs", {"mode": "direct", "cot_task": None}) != _pair_source(config):
            raise DataError(f"cannot resume {output_dir}: its pairs are of another kind ({previous.get('pairs')})")
        pairs, report = _read_pairs(pairs_path), previous["mining"]
        logger.info("resuming %s: reusing %d mined pairs", output_dir, len(pairs))
    else:
        started = time.perf_counter()
        if config.mode == "cot":
            pairs, report = _mine_cot_pairs(config, model, tokenizer, scheme, mining_records, rules, output_dir)
        else:
            scorer = LabelScorer(model, tokenizer, scheme, ScorerConfig(
                batch_size=config.scorer_batch_size, top_k=config.top_k, max_length=config.max_length,
                label_bias=label_bias, progress=config.progress,
            ))
            scores = scorer.score(mining_records)
            pairs, report = mine_pairs(mining_records, scores, scheme, config.top_k, config.over_estimates_only)
            report["label_bias"] = None if label_bias is None else dict(zip(scheme.labels, label_bias))
        report["scoring_s"] = round(time.perf_counter() - started, 2)
        if is_main_process():  # under `accelerate launch` every process mines the same pairs; one writes them
            write_jsonl(pairs_path, (pair.to_dict() for pair in pairs))
    logger.info(
        "mining (%s): %d errors in %d pairs, %d preference pairs (%s%s)", config.mode, report["errors"],
        report["scored"], report["pairs"],
        f"{report.get('fallbacks')} fallbacks" if config.mode == "cot" else f"top-{config.top_k}",
        ", over-estimates only" if config.over_estimates_only else "",
    )

    manifest = _base_manifest(config, scheme, pool_hash, records, report)
    if len(pairs) < config.min_pairs:
        reason = (f"mining gave {len(pairs)} preference pairs, fewer than min_pairs={config.min_pairs}: DPO skipped, "
                  f"the model is unchanged ({config.model})")
        logger.warning(reason)
        if is_main_process():
            write_json(output_dir / MANIFEST_NAME, {**manifest, "kind": "skipped", "skipped_reason": reason,
                                                    "model": config.model})
        return config.model

    run.start({"data_hash": pool_hash, "model": config.model}, pairs=_pair_source(config), mining=report)
    dataset = Dataset.from_list([
        preference_example(tokenizer, pair, scheme, config.max_length, cot_task=config.cot_task, rules=rules)
        for pair in pairs
    ])
    model.config.use_cache = False
    args = DPOConfig(
        **training_arguments(
            config,
            run.checkpoint_dir,
            use_cpu,
            loss_type=["sigmoid", "sft"],
            loss_weights=[1.0, config.sft_weight],
            beta=config.beta,
            max_length=None,  # prompts are already cut to fit, in their middle (TRL would cut the answer off)
            gradient_checkpointing=False,  # TRL's default is on; on 270M-class models it only costs time
        )
    )
    guard = _make_guard_class()(config.beta, config.collapse_tolerance)
    recall_guard = _make_recall_guard_class()(
        guard_records, scheme, tokenizer, every=config.guard_steps, objective=config.guard_objective,
        tolerance=config.guard_tolerance, batch_size=config.scorer_batch_size, max_length=config.max_length,
        label_bias=label_bias,
    ) if guard_records else None
    trainer = _make_trainer_class()(
        model=model,
        ref_model=None,  # the reference is the policy with the adapter disabled
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=LoraConfig(
            r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
            target_modules=config.target_modules,
            task_type="CAUSAL_LM",
        ),
        callbacks=[guard, *([recall_guard] if recall_guard else []), *(callbacks or [])],
        logits_at_labels_only=config.logits_at_labels_only,
    )
    idle = idle_warmup(args, len(dataset))
    if idle:
        logger.warning("dpo: %s", idle)
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=run.resume_from)
    wall = time.perf_counter() - started
    resumed_from = run.resumed_step
    steps_run = result.global_step - resumed_from
    logged = [entry for entry in trainer.state.log_history if "rewards/margins" in entry]
    metrics: dict[str, Any] = {
        "mean_loss": result.training_loss,
        "steps": result.global_step,
        "resumed_from_step": resumed_from,
        "epochs": trainer.state.epoch,
        "wall_time_s": round(wall, 2),
        "s_per_step": round(wall / steps_run, 4) if steps_run > 0 else None,
    }
    if logged:
        first, last = logged[0], logged[-1]
        for key in ("loss", "logps/chosen", "logps/rejected", "rewards/chosen", "rewards/rejected", "rewards/margins",
                    "rewards/accuracies"):
            if key in last:
                metrics[f"first_{key}"], metrics[f"final_{key}"] = first.get(key), last[key]

    if recall_guard is not None:
        recall_guard.restore(trainer.model)
    if not trainer.is_world_process_zero():  # the first process writes the adapter; the others wait for it
        trainer.accelerator.wait_for_everyone()
        return output_dir
    run.save(trainer.model, tokenizer)
    write_json(output_dir / MANIFEST_NAME, {
        **manifest,
        "kind": "lora-adapter",
        "n_train": len(pairs),
        "label_counts": dict(Counter(pair.chosen for pair in pairs)),
        "collapse_guard": guard.report(),
        "recall_guard": recall_guard.report() if recall_guard else None,
        "train_metrics": {**metrics, **({"idle_warmup": idle} if idle else {})},
        "precision": "bf16" if args.bf16 else "fp32",
    })
    logger.info("DPO adapter written to %s (%d steps)", output_dir, result.global_step)
    trainer.accelerator.wait_for_everyone()
    return output_dir


__all__ = [
    "DPOStageConfig",
    "PreferencePair",
    "chosen_collapsed",
    "chosen_logp_change",
    "compact_lm_head",
    "cot_mistakes",
    "cot_pairs",
    "cot_preference_example",
    "guard_winner",
    "mine_pairs",
    "own_completion",
    "preference_example",
    "split_guard",
    "train_dpo",
]
