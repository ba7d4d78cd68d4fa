"""Stage 2, Multi-CoT tuning: continued LoRA SFT on reasoning chains written by a teacher, EE -> RA -> DR.

Three tasks (`TASKS`), each with its own prompt (`cot_prompt`):

* **EE**, Expert Explaining: (query, product) -> a multi-perspective analysis (product type, brand, model,
  attributes) -> the label;
* **RA**, Rule Adherence: (business rules, query, product) -> an analysis that applies the rules and cites their ids
  -> the label (the rules sit in the prompt prefix, so they are shared by every pair);
* **DR**, Decision Reflection: (a wrong decision, query, product) -> why it is wrong -> the correct label. Wrong
  decisions are sampled per pair (`lref.teachers.decisions.sample_wrong_label`), a share `over_estimate_share` of
  them more relevant than gold (LLM judges over-estimate); DR's pairs are drawn with the gold-label mix that makes
  this share reachable (`lref.teachers.decisions.wrong_decision_plan`).

Every CoT prompt starts with its own task marker, never with the direct prompt's instruction, and every CoT
completion ends with the direct format's answer cue and label (`" ... \\nRelevance: Exact"` + EOS). Each stage also
trains on plain direct examples (prompt -> label, exactly as the SFT stage does), a share `direct_share` of its
examples, so the fast direct scorer keeps working after the CoT stages.

Teacher texts come from a :class:`lref.teachers.base.Teacher` and are cached by content outside the output folder
(`lref.teachers.cache`: ``<cache root>/<teacher>/<task>.jsonl``, the cache root being ``teacher_cache`` beside
``output_dir``, or the pipeline run's ``RUN/teacher_cache``), so neither a re-run nor a reset stage asks again. A pair
the teacher refuses non-retryably (`lref.teachers.base.TeacherRefusal`) is skipped and listed in
``<task>.skipped.jsonl`` there, up to `teacher_max_skips`; more refusals stop the stage (a systemic failure).
For EE and RA an explanation whose label differs from the human label is not used (its reasoning argues for another
grade); the stage keeps asking for further pairs until it has `<task>_samples` usable ones, or fails with a DataError
saying how many it found.

The stages run in order, each a LoRA on top of the previous one's merged adapter
(`lref.training.lora.train_sft_examples`), into ``output_dir/ee``, ``ra``, ``dr``. A stage whose folder holds a
finished adapter with the same inputs (the previous stage, the examples, the training settings) is skipped; an
unfinished one continues from its last checkpoint.

Inference: ``direct`` is the label scorer (`lref predict`); ``cot`` generates the analysis and parses the label
(`lref.models.generation.generate_predictions`), falling back to the direct scorer's label when the text has none.

    >>> from lref.stages.cot import CoTConfig
    >>> config = CoTConfig(model="runs/sft/adapter", output_dir="runs/cot")
    >>> config.stages, config.direct_share, config.teacher
    (['ee', 'ra', 'dr'], 0.5, 'rules')
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from lref.data.records import DataError, Record
from lref.data.validation import validate_records
from lref.fingerprint import settings_of, sha256_json
from lref.io import write_json
from lref.labels import CLASS_BALANCE, LabelScheme, get_scheme
from lref.models.loading import read_manifest
from lref.models.scorer import scheme_for_model
from lref.models.zoo import resolve_model, stored_model_reference
from lref.prompts import match_hint_manifest, records_for_model
from lref.prompts.cot import COT_PROMPT_VERSION, TASKS, cot_completion, cot_prompt
from lref.prompts.rules import RuleSet, load_rule_set, rules_reference
from lref.teachers.base import Teacher
from lref.teachers.cache import (
    ANSWERS_FILE,
    HTTP_CACHE_NAME,
    MAX_SKIPS,
    check_skips,
    default_cache_root,
    teach,
    teacher_dir,
)
from lref.teachers.decisions import sample_wrong_label, wrong_decision_plan
from lref.teachers.registry import DEFAULT_TEACHER_URL, check_teacher, make_teacher
from lref.training.examples import TextExample, direct_example, examples_hash
from lref.training.lora import LoraTrainingConfig, train_sft_examples
from lref.training.run_guard import last_checkpoint
from lref.training.settings import (
    LoraSettings,
    TrainingSettings,
    check_training_fields,
    settings_values,
    with_default,
)

logger = logging.getLogger(__name__)

REPORT_NAME = "cot_report.json"


@dataclass
class CoTConfig(LoraSettings, TrainingSettings):
    """Settings of the Multi-CoT stage. Every field's help text also feeds the command line (`lref cot`)."""

    FINGERPRINT_ADDED_FIELDS: ClassVar[tuple[str, ...]] = ("epochs", "weight_decay", "teacher_max_skips")
    """Training settings this config gained with the shared `TrainingSettings` (`lref.fingerprint.ADDED_FIELDS`)."""

    model: str = field(
        default="runs/sft/adapter",
        metadata={"help": "Model to start from: the Stage-1 (SFT) lref adapter folder, a zoo name or an HF folder."},
    )
    scheme: str = field(default="graded3", metadata={"help": "Label scheme (preset name) the records are labelled in."})
    output_dir: str = field(
        default="runs/cot",
        metadata={"help": "Folder for one adapter per stage (ee/, ra/, dr/) and cot_report.json; the teacher texts "
                  "are cached beside it, in teacher_cache/ (in a pipeline run: RUN/teacher_cache)."},
    )
    stages: list[str] = field(
        default_factory=lambda: list(TASKS),
        metadata={"help": "Stages to train, in this order, each on top of the previous: a subset of ee, ra, dr."},
    )
    teacher: str = field(
        default="rules",
        metadata={"help": "Teacher writing the reasoning: 'rules' (offline, deterministic), 'openai' (an "
                  "OpenAI-compatible endpoint) or 'local' (generation with a local HF model)."},
    )
    teacher_model: str | None = field(
        default=None,
        metadata={"help": "The teacher's model: the served model name (openai, required) or a zoo name/folder "
                  "(local, default gemma-3-270m)."},
    )
    teacher_url: str = field(
        default=DEFAULT_TEACHER_URL, metadata={"help": "Base URL of the openai teacher's API, with /v1."}
    )
    teacher_max_skips: float = field(
        default=MAX_SKIPS,
        metadata={"help": "Pairs the teacher may refuse for good (e.g. an HTTP 400 for a prompt over its context "
                  "length) before the stage stops: below 1 a share of the pairs asked (at least 5 pairs), 1 or more "
                  "a number of pairs. A refused pair is skipped, listed in the cache's skip list and not asked again."},
    )
    rules: str | None = field(
        default=None,
        metadata={"help": "Business rules for RA: a YAML rule file or a shipped set (e.g. homedepot); default: the "
                  "scheme's own set."},
    )
    ee_samples: int = field(default=1000, metadata={"help": "EE chain-of-thought examples (pairs) to train on."})
    ra_samples: int = field(default=1000, metadata={"help": "RA chain-of-thought examples (pairs) to train on."})
    dr_samples: int = field(default=1000, metadata={"help": "DR chain-of-thought examples (pairs) to train on."})
    ee_epochs: float = field(default=1.0, metadata={"help": "Epochs of the EE stage."})
    ra_epochs: float = field(default=1.0, metadata={"help": "Epochs of the RA stage."})
    dr_epochs: float = field(
        default=0.5,
        metadata={"help": "Epochs of the DR stage. Half an epoch: a whole one lowered the direct scorer's accuracy "
                  "on Home Depot (docs/cot.md)."},
    )
    direct_share: float = field(
        default=0.5,
        metadata={"help": "Share of each stage's examples that are plain direct prompt -> label examples (as in SFT), "
                  "so direct scoring does not degrade; in [0, 1)."},
    )
    direct_from_pool: bool = field(
        default=True,
        metadata={"help": "Draw the direct examples from the training pairs before selection when they are given "
                  "(the pipeline gives them; `lref cot --direct-pool FILE`): the direct examples set the direct "
                  "scorer's label prior, and the selected pairs' label mix is not the traffic's. Off, or with no "
                  "pool given: from the stage's own training pairs."},
    )
    soft_labels: bool = field(
        default=False,
        metadata={"help": "Direct examples train toward the raters' mean where a pair carries one (raw_score), as "
                  "SFT's soft_labels; the chain-of-thought examples keep their label."},
    )
    over_estimate_share: float = field(
        default=0.7,
        metadata={"help": "DR: share of wrong decisions that over-estimate (a grade more relevant than gold; the "
                  "rest are less relevant). DR draws its pairs with the gold-label mix that makes this share "
                  "reachable, since a top-grade pair can only be under-estimated."},
    )
    class_balance: str = field(
        default="none",
        metadata={"help": "Per-example loss weights by gold label frequency, as in SFT: 'none', 'sqrt' or 'inverse'. "
                  "Selected pairs can carry a label mix far from the traffic's; weighting keeps the stages from "
                  "learning that mix as a prior."},
    )
    group_by_prefix: bool = field(
        default=True,
        metadata={"help": "Batch examples that share an instruction (direct, EE, RA, DR) together, so batches take "
                  "the shared-prefix fast path; off: shuffle them all together."},
    )
    # training settings whose default or meaning differs here
    lora_r: int = with_default("lora_r", 16, help="LoRA rank of every stage.")
    learning_rate: float = with_default("learning_rate", 1e-4, help="Peak learning rate of every stage (linear decay).")
    epochs: float | None = with_default(
        "epochs", None, help="Not used: each stage has its own epochs (ee_epochs, ra_epochs, dr_epochs); leave unset."
    )
    max_steps: int = with_default(
        "max_steps", -1, help="Stop every stage after this many optimizer steps (-1: run its epochs)."
    )
    max_length: int = with_default(
        "max_length", 1024, help="Longest example in tokens (RA prompts carry the rules); longer pairs lose the middle "
        "of their product text."
    )
    save_total_limit: int = with_default("save_total_limit", 2, help="Checkpoints kept on disk per stage.")
    seed: int = with_default("seed", 0, help="Seed for sampling pairs and wrong decisions, LoRA and shuffling.")
    resume: bool = with_default(
        "resume", True, help="Skip stages already finished with the same inputs and continue an unfinished stage from "
        "its last checkpoint; off: refuse an output folder that holds a run."
    )

    def __post_init__(self) -> None:
        if isinstance(self.stages, str):
            self.stages = [part.strip() for part in self.stages.split(",") if part.strip()]
        self.stages = [str(stage).lower() for stage in self.stages]
        unknown = [stage for stage in self.stages if stage not in TASKS]
        if unknown or not self.stages:
            raise ValueError(f"stages must be a non-empty subset of {', '.join(TASKS)}, not {self.stages}")
        if self.stages != [task for task in TASKS if task in self.stages]:
            raise ValueError(f"stages run in the order ee, ra, dr without repeats, not {', '.join(self.stages)}")
        check_teacher(self.teacher, self.teacher_model)
        if self.epochs is not None:
            raise ValueError("CoT stages have their own epochs: set ee_epochs, ra_epochs or dr_epochs, not epochs")
        if not 0 <= self.direct_share < 1:
            raise ValueError(f"direct_share must lie in [0, 1), not {self.direct_share}")
        if self.teacher_max_skips < 0:
            raise ValueError(f"teacher_max_skips must not be negative, not {self.teacher_max_skips}")
        if not 0 <= self.over_estimate_share <= 1:
            raise ValueError(f"over_estimate_share must lie in [0, 1], not {self.over_estimate_share}")
        if self.class_balance not in CLASS_BALANCE:
            raise ValueError(f"class_balance must be one of {', '.join(CLASS_BALANCE)}, not {self.class_balance!r}")
        for task in TASKS:
            if getattr(self, f"{task}_samples") < 1:
                raise ValueError(f"{task}_samples must be at least 1, not {getattr(self, f'{task}_samples')}")
            if getattr(self, f"{task}_epochs") <= 0:
                raise ValueError(f"{task}_epochs must be positive, not {getattr(self, f'{task}_epochs')}")
        check_training_fields(self, ("lora_r", "batch_size", "grad_accum", "save_steps", "logging_steps", "max_length"))

    def stage_config(self, task: str, model: str) -> LoraTrainingConfig:
        """The LoRA training of one stage: this config's training and LoRA settings, the stage's epochs, its model
        (the previous stage's) and folder; direct examples follow `soft_labels`."""
        return LoraTrainingConfig(**{
            **settings_values(self, TrainingSettings, LoraSettings),
            "epochs": getattr(self, f"{task}_epochs"), "model": model, "scheme": self.scheme,
            "output_dir": str(Path(self.output_dir) / task), "class_balance": self.class_balance,
            "soft_labels": self.soft_labels,
        })


# ---------------------------------------------------------------------------------------------------------------------
# Examples


def _sum_stats(total: dict[str, Any], part: dict[str, Any]) -> None:
    for key in ("requested", "cache_hits", "generated", "failed", "skipped", "seconds"):
        total[key] = round(total.get(key, 0) + part[key], 3)
    if part.get("skipped_file"):
        total["skipped_file"] = part["skipped_file"]


def cot_examples(
    task: str,
    records: Sequence[Record],
    scheme: LabelScheme,
    teacher: Teacher,
    count: int,
    *,
    rules: RuleSet | None = None,
    over_estimate_share: float = 0.7,
    seed: int = 0,
    cache_path: str | Path | None = None,
    progress: bool = True,
    max_skips: float = MAX_SKIPS,
) -> tuple[list[TextExample], dict[str, Any]]:
    """`count` CoT examples of `task`: pairs drawn in a seeded order, explained by the teacher (cached), kept when
    the explanation has a label equal to the human one. EE and RA keep the records' label mix: the teacher agrees
    with the raters more often on some grades, and a skewed stage shifts the model's label prior. DR takes the mix of
    `wrong_decision_plan`, which lets it reach `over_estimate_share`. A grade that cannot fill its share within the
    first 4 x `count` pairs is topped up with the others. Pairs the teacher refuses are skipped (`teach`), up to
    `max_skips` of all pairs asked (`lref.teachers.cache.check_skips`, TeacherError beyond). DataError when the
    records cannot give `count`."""
    if task == "ra" and rules is None:
        raise ValueError("RA needs a rule set")
    order = list(records)
    random.Random(f"{seed}:{task}").shuffle(order)
    labels = [scheme.parse(r.label) for r in records]
    if task == "dr":
        weights, over_probability = wrong_decision_plan(labels, scheme, over_estimate_share)
        quota = quotas_from_weights(weights, count)
    else:
        quota = label_quotas(labels, count)
    examples: list[tuple[TextExample, bool]] = []  # with whether a DR example's wrong decision over-estimates
    reserve: list[tuple[TextExample, bool]] = []  # agreeing examples of a grade whose share was already full
    stats: dict[str, Any] = {"rejected_disagreeing": 0}
    position = 0
    # Stop early once 4x `count` pairs were explained and the reserve can fill the rest: a paid teacher stays cheap.
    while len(examples) < count and position < len(order) and (position < 4 * count or
                                                                 len(examples) + len(reserve) < count):
        chunk = order[position : position + max(count - len(examples), 8)]
        position += len(chunk)
        wrong = ([sample_wrong_label(r, scheme, over_probability[scheme.parse(r.label)], seed) for r in chunk]
                 if task == "dr" else None)
        answers, part = teach(teacher, task, chunk, scheme, rules=rules, wrong_labels=wrong, cache_path=cache_path,
                              progress=progress, max_skips=max_skips)
        _sum_stats(stats, part)
        check_skips(stats["skipped"], stats["requested"], max_skips, where=str(stats.get("skipped_file") or ""))
        for row, (record, answer) in enumerate(zip(chunk, answers)):
            gold = scheme.parse(record.label)
            if not answer.ok:
                continue
            if answer.label != gold:
                stats["rejected_disagreeing"] += 1
                continue
            prompt = cot_prompt(task, record, scheme, rules, wrong[row] if wrong else None)
            example = TextExample(record.id, prompt, cot_completion(answer, scheme), gold)
            over = bool(wrong) and scheme.index(wrong[row]) < scheme.index(gold)
            if quota[gold] > 0:
                quota[gold] -= 1
                examples.append((example, over))
            else:
                reserve.append((example, over))
            if len(examples) == count:
                break
    examples += reserve[: count - len(examples)]
    over_estimates = sum(over for _, over in examples)
    examples = [example for example, _ in examples]
    if len(examples) < count:
        raise DataError(
            f"{task}: only {len(examples)} of {len(records)} pairs gave a usable teacher explanation (a label equal to "
            f"the human one; {stats.get('failed', 0)} without a label, {stats['rejected_disagreeing']} disagreeing, "
            f"{stats.get('skipped', 0)} refused by the teacher), "
            f"but {task}_samples={count}: lower it or give more pairs"
        )
    stats["examples"] = len(examples)
    stats["hit_rate"] = round(stats["cache_hits"] / stats["requested"], 4) if stats.get("requested") else None
    stats["pairs_per_s"] = round(stats["generated"] / stats["seconds"], 2) if stats.get("seconds") else None
    stats["labels"] = dict(Counter(example.label for example in examples))
    if task == "dr":
        stats["over_estimate_share"] = round(over_estimates / len(examples), 4)
    return examples, stats


def label_quotas(labels: Sequence[str], count: int) -> Counter:
    """How many of `count` examples each label gets to match its share of `labels` (largest remainders)."""
    return quotas_from_weights(Counter(labels), count)


def quotas_from_weights(weights: Mapping[str, float], count: int) -> Counter:
    """`count` split over labels in proportion to `weights` (largest remainders)."""
    total = sum(weights.values())
    exact = {label: count * w / total for label, w in weights.items()}
    quota = Counter({label: int(share) for label, share in exact.items()})
    for label in sorted(exact, key=lambda name: exact[name] - quota[name], reverse=True)[: count - sum(quota.values())]:
        quota[label] += 1
    return quota


def direct_examples(records: Sequence[Record], scheme: LabelScheme, count: int, seed: int = 0,
                    soft_label: bool = False) -> list[TextExample]:
    """`count` direct examples drawn in a seeded order (cycling through the records when they are fewer); with
    `soft_label`, targets from the pairs' raw scores (`direct_example`)."""
    if count <= 0:
        return []
    order = list(records)
    random.Random(f"{seed}:direct").shuffle(order)
    return [direct_example(order[i % len(order)], scheme, soft_label) for i in range(count)]


def direct_count(cot_count: int, direct_share: float) -> int:
    """Direct examples to add to `cot_count` CoT examples so that they make up `direct_share` of the stage."""
    return round(cot_count * direct_share / (1 - direct_share))


# ---------------------------------------------------------------------------------------------------------------------
# Entry point


def model_identity(model: str) -> dict[str, Any]:
    """What identifies the starting model for the skip check: its reference and, for an lref folder, its manifest."""
    reference = stored_model_reference(model)
    manifest = read_manifest(reference) if Path(reference).is_dir() else None
    keys = ("data_hash", "created", "cot")
    return {"model": reference, **({k: manifest.get(k) for k in keys} if manifest else {})}


RUN_ONLY = ("model", "output_dir", "use_cpu", "save_steps", "save_total_limit")
"""Stage settings left out of a stage's inputs hash besides the output-neutral ones: the model and folder (the
previous stage's identity stands for them) and where and how often it checkpoints."""


def inputs_hash(previous: dict[str, Any], examples: Sequence[TextExample], stage: LoraTrainingConfig) -> str:
    """What a finished stage is matched on: the previous stage, the examples, the training settings, the prompts."""
    return sha256_json([previous, examples_hash(examples), settings_of(stage, RUN_ONLY), COT_PROMPT_VERSION])


def train_cot(
    config: CoTConfig, records: Sequence[Record], *, direct_pool: Sequence[Record] | None = None,
    teacher: Teacher | None = None, callbacks: list | None = None, teacher_cache: str | Path | None = None,
) -> dict[str, Path]:
    """Train the configured CoT stages in order (EE -> RA -> DR), each a LoRA on the previous stage's model, and
    return {task: adapter folder}. `direct_pool`: the training pairs before selection, which the direct examples are
    drawn from when `config.direct_from_pool` is on. `teacher` overrides the one named in the config (e.g. an
    already built one). `teacher_cache`: the cache root of the teacher answers (default: `default_cache_root`, i.e.
    ``teacher_cache`` beside the output folder; the pipeline gives ``RUN/teacher_cache``)."""
    started = time.perf_counter()
    scheme = get_scheme(config.scheme)
    rules = load_rule_set(config.rules, scheme) if "ra" in config.stages else None
    start_manifest = read_manifest(resolve_model(config.model))
    scheme_for_model(start_manifest, scheme)  # refuse a model trained on another scheme
    records = records_for_model(validate_records(records, scheme, "training"), start_manifest)
    direct_source = records
    if config.direct_from_pool and direct_pool is not None:
        direct_source = records_for_model(validate_records(direct_pool, scheme, "direct-example pool"), start_manifest)
    output_dir = Path(config.output_dir)
    if not config.resume and any((output_dir / task).exists() for task in config.stages):
        raise FileExistsError(f"{output_dir} already holds CoT stages; resume the run or choose another output folder")
    output_dir.mkdir(parents=True, exist_ok=True)
    cache_root = Path(teacher_cache) if teacher_cache is not None else default_cache_root(output_dir)
    owned_teacher = teacher is None
    if teacher is None:
        teacher = make_teacher(config.teacher, model=config.teacher_model, base_url=config.teacher_url,
                               cache_path=cache_root / HTTP_CACHE_NAME, records=records,
                               progress=config.progress)
    answers_dir = teacher_dir(cache_root, teacher.name)

    report: dict[str, Any] = {"teacher": teacher.name, "rules": rules_reference(rules), "n_records": len(records),
                              "n_direct_pool": len(direct_source) if direct_source is not records else None,
                              "config": asdict(config), "stages": {}}
    adapters: dict[str, Path] = {}
    model = config.model
    previous = model_identity(config.model)
    for task in config.stages:
        stage_started = time.perf_counter()
        count = getattr(config, f"{task}_samples")
        cot, teacher_stats = cot_examples(
            task, records, scheme, teacher, count, rules=rules, over_estimate_share=config.over_estimate_share,
            seed=config.seed, cache_path=answers_dir / ANSWERS_FILE.format(task=task), progress=config.progress,
            max_skips=config.teacher_max_skips,
        )
        direct = direct_examples(direct_source, scheme, direct_count(len(cot), config.direct_share),
                                 config.seed + 1 + TASKS.index(task), config.soft_labels)
        examples = cot + direct
        stage = config.stage_config(task, model)
        stage_hash = inputs_hash(previous, examples, stage)
        stage_dir = Path(stage.output_dir)
        manifest = read_manifest(stage_dir)
        finished = manifest is not None and (manifest.get("cot") or {}).get("inputs_hash") == stage_hash
        if manifest is not None and not finished:
            raise FileExistsError(
                f"{stage_dir} holds a finished {task} adapter trained on other inputs (model, teacher texts or "
                "settings changed); delete it or choose another output folder"
            )
        if finished:
            logger.info("%s: finished adapter with the same inputs in %s, skipped", task, stage_dir)
        else:
            # an unfinished stage continues from its checkpoints (same inputs hash, else DataError)
            stage.resume = last_checkpoint(stage_dir) is not None
            cot_info = {
                "task": task, "inputs_hash": stage_hash, "prompt_version": COT_PROMPT_VERSION,
                "teacher": teacher.name, "rules": rules_reference(rules) if task == "ra" else None,
                "n_cot": len(cot), "n_direct": len(direct), "direct_share": config.direct_share,
                "direct_from_pool": direct_source is not records,
                "over_estimate_share": config.over_estimate_share if task == "dr" else None,
                "previous": model,
            }
            train_sft_examples(stage, examples, callbacks=callbacks, train_hash=stage_hash, stage=f"cot-{task}",
                               manifest_extra={"cot": cot_info, **match_hint_manifest(records)},
                               group_by_prefix=config.group_by_prefix)
        report["stages"][task] = {
            "adapter": str(stage_dir), "skipped": finished, "n_cot": len(cot), "n_direct": len(direct),
            "direct_labels": dict(Counter(example.label for example in direct)),
            "teacher": teacher_stats, "wall_time_s": round(time.perf_counter() - stage_started, 2),
            "train_metrics": (read_manifest(stage_dir) or {}).get("train_metrics"),
        }
        adapters[task] = stage_dir
        model = str(stage_dir.resolve())
        previous = {"stage": task, "inputs_hash": stage_hash}
    report["teacher_cache"] = str(answers_dir)
    report["teacher_skipped"] = sum(stage["teacher"].get("skipped", 0) for stage in report["stages"].values())
    report["teacher_skipped_files"] = sorted({stage["teacher"]["skipped_file"] for stage in report["stages"].values()
                                              if stage["teacher"].get("skipped_file")})
    if hasattr(teacher, "stats"):
        report["teacher_stats"] = teacher.stats()
    if owned_teacher and hasattr(teacher, "close"):
        teacher.close()
    report["wall_time_s"] = round(time.perf_counter() - started, 2)
    write_json(output_dir / REPORT_NAME, report)
    return adapters




__all__ = [
    "REPORT_NAME",
    "CoTConfig",
    "cot_examples",
    "direct_count",
    "direct_examples",
    "inputs_hash",
    "label_quotas",
    "model_identity",
    "quotas_from_weights",
    "train_cot",
]
