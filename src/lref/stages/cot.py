"""Stage 2, Multi-CoT tuning: continued LoRA SFT on reasoning chains written by a teacher, EE -> RA -> DR.

Three tasks (`TASKS`), each with its own prompt (`cot_prompt`):

* **EE**, Expert Explaining: (query, product) -> a multi-perspective analysis (product type, brand, model,
  attributes) -> the label;
* **RA**, Rule Adherence: (business rules, query, product) -> an analysis that applies the rules and cites their ids
  -> the label (the rules sit in the prompt prefix, so they are shared by every pair);
* **DR**, Decision Reflection: (a wrong decision, query, product) -> why it is wrong -> the correct label. Wrong
  decisions are sampled per pair (`sample_wrong_label`), a share `over_estimate_share` of them more relevant than
  gold (LLM judges over-estimate); DR's pairs are drawn with the gold-label mix that makes this share reachable
  (`wrong_decision_plan`).

Every CoT prompt starts with its own task marker, never with the direct prompt's instruction, and every CoT
completion ends with the direct format's answer cue and label (`" ... \\nRelevance: Exact"` + EOS). Each stage also
trains on plain direct examples (prompt -> label, exactly as `lref.stages.sft` does), a share `direct_share` of its
examples, so the fast direct scorer keeps working after the CoT stages.

Teacher texts come from a :class:`lref.teachers.base.Teacher` and are cached in ``output_dir/teacher_<task>.jsonl``
(`teach`), so a re-run never asks again. For EE and RA an explanation whose label differs from the human label is
not used (its reasoning argues for another grade); the stage keeps asking for further pairs until it has
`<task>_samples` usable ones, or fails with a DataError saying how many it found.

The stages run in order, each a LoRA on top of the previous one's merged adapter (`train_sft_examples`), into
``output_dir/ee``, ``ra``, ``dr``. A stage whose folder holds a finished adapter with the same inputs (the previous
stage, the examples, the training settings) is skipped; an unfinished one continues from its last checkpoint.

Inference: ``direct`` is the label scorer (`lref predict`); ``cot`` generates the analysis and parses the label
(`generate_predictions`), falling back to the direct scorer's label when the text has none.

    >>> from lref.stages.cot import CoTConfig
    >>> config = CoTConfig(model="runs/sft/adapter", output_dir="runs/cot")
    >>> config.stages, config.direct_share, config.teacher
    (['ee', 'ra', 'dr'], 0.5, 'rules')
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from lref.data.records import DataError, Record
from lref.device import use_bf16
from lref.labels import CLASS_BALANCE, LabelScheme, get_scheme
from lref.predictions import Prediction
from lref.prompts import PAIR_TAIL_TOKENS, match_hint_manifest, records_for_model
from lref.prompts.cot import COT_PROMPT_VERSION, TASKS, cot_completion, cot_prompt
from lref.prompts.rules import RuleSet, default_rules, load_rules
from lref.stages.sft import SFTStageConfig, TextExample, direct_example, examples_hash
from lref.teachers.base import TEACHER_PROMPT_VERSION, Explanation, Teacher, parse_label
from lref.training import BF16_HELP, check_training_fields

logger = logging.getLogger(__name__)

TEACHERS = ("rules", "openai", "local")
REPORT_NAME = "cot_report.json"
TEACHER_FILE = "teacher_{task}.jsonl"

@dataclass
class CoTConfig:
    """Settings of the Multi-CoT stage. Every field's help text also feeds the command line (`lref cot`)."""

    model: str = field(
        default="runs/sft/adapter",
        metadata={"help": "Model to start from: the Stage-1 (SFT) lref adapter folder, a zoo name or an HF folder."},
    )
    scheme: str = field(default="graded3", metadata={"help": "Label scheme (preset name) the records are labelled in."})
    output_dir: str = field(
        default="runs/cot",
        metadata={"help": "Folder for the teacher texts (teacher_<task>.jsonl), one adapter per stage (ee/, ra/, "
                  "dr/) and cot_report.json."},
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
        default="http://127.0.0.1:8000/v1", metadata={"help": "Base URL of the openai teacher's API, with /v1."}
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
    lora_r: int = field(default=16, metadata={"help": "LoRA rank of every stage."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA branch."})
    target_modules: str | list[str] = field(
        default="all-linear", metadata={"help": "Modules that get LoRA: 'all-linear' or a list of module names."}
    )
    learning_rate: float = field(default=1e-4, metadata={"help": "Peak learning rate of every stage (linear decay)."})
    max_steps: int = field(
        default=-1, metadata={"help": "Stop every stage after this many optimizer steps (-1: run its epochs)."}
    )
    batch_size: int = field(default=8, metadata={"help": "Examples per forward pass."})
    grad_accum: int = field(default=1, metadata={"help": "Forward passes accumulated per optimizer step."})
    max_length: int = field(
        default=1024,
        metadata={"help": "Longest example in tokens (RA prompts carry the rules); longer pairs lose the middle of "
                  "their product text."},
    )
    warmup_ratio: float = field(default=0.05, metadata={"help": "Fraction of the steps spent warming up the rate."})
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
    save_steps: int = field(default=100, metadata={"help": "Write a resumable checkpoint every this many steps."})
    save_total_limit: int = field(default=2, metadata={"help": "Checkpoints kept on disk per stage."})
    seed: int = field(default=0, metadata={"help": "Seed for sampling pairs and wrong decisions, LoRA and shuffling."})
    resume: bool = field(
        default=True,
        metadata={"help": "Skip stages already finished with the same inputs and continue an unfinished stage from "
                  "its last checkpoint; off: refuse an output folder that holds a run."},
    )
    threads: int | None = field(default=None, metadata={"help": "CPU threads for torch (default: torch's choice)."})
    use_cpu: bool | None = field(
        default=None, metadata={"help": "Train on the CPU (default: CPU unless a CUDA device is available)."}
    )
    bf16: bool | None = field(
        default=None,
        metadata={"help": BF16_HELP},
    )
    logging_steps: int = field(default=10, metadata={"help": "Log the training loss every this many steps."})
    progress: bool = field(default=True, metadata={"help": "Show progress bars."})

    def __post_init__(self) -> None:
        if isinstance(self.stages, str):
            self.stages = [part.strip() for part in self.stages.split(",") if part.strip()]
        self.stages = [str(stage).lower() for stage in self.stages]
        unknown = [stage for stage in self.stages if stage not in TASKS]
        if unknown or not self.stages:
            raise ValueError(f"stages must be a non-empty subset of {', '.join(TASKS)}, not {self.stages}")
        if self.stages != [task for task in TASKS if task in self.stages]:
            raise ValueError(f"stages run in the order ee, ra, dr without repeats, not {', '.join(self.stages)}")
        if self.teacher not in TEACHERS:
            raise ValueError(f"unknown teacher {self.teacher!r}: choose one of {', '.join(TEACHERS)}")
        if self.teacher == "openai" and not self.teacher_model:
            raise ValueError("the openai teacher needs teacher_model: the model name its endpoint serves")
        if not 0 <= self.direct_share < 1:
            raise ValueError(f"direct_share must lie in [0, 1), not {self.direct_share}")
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
        if isinstance(self.target_modules, tuple):
            self.target_modules = list(self.target_modules)

    def sft_config(self, task: str, model: str) -> SFTStageConfig:
        """The SFT settings of one stage: the shared training fields, its epochs, model and folder."""
        shared = {f.name: getattr(self, f.name) for f in fields(SFTStageConfig) if hasattr(self, f.name)}
        shared.update(model=model, output_dir=str(Path(self.output_dir) / task), epochs=getattr(self, f"{task}_epochs"))
        return SFTStageConfig(**shared)


def sample_wrong_label(record: Record, scheme: LabelScheme, over_probability: float, seed: int = 0) -> str:
    """A wrong decision for DR, fixed per (seed, pair id): with probability `over_probability` a grade more relevant
    than gold (an over-estimate), else a less relevant one; when only one side exists, that side."""
    gold = scheme.parse(record.label)
    index = scheme.index(gold)
    more, less = list(scheme.labels[:index]), list(scheme.labels[index + 1 :])
    rng = random.Random(f"{seed}:{record.id}")
    side = more if more and (not less or rng.random() < over_probability) else less
    return rng.choice(side)


def wrong_decision_plan(
    labels: Sequence[str], scheme: LabelScheme, over_estimate_share: float
) -> tuple[dict[str, float], dict[str, float]]:
    """How DR reaches `over_estimate_share`: the gold-label mix of its pairs and, per gold grade, the probability that
    its wrong decision over-estimates (for `sample_wrong_label`). A top-grade pair can only be under-estimated and a
    bottom-grade one only over-estimated, so keeping the pool's label mix would cap the share (at 53 % on Home Depot,
    where 47 % of pairs are Exact). Instead the over-estimates are spread over the grades that allow one in
    proportion to the pool, and the under-estimates likewise."""
    mix = Counter(labels)
    pool = {label: n / len(labels) for label, n in mix.items()}
    can_over = {label: p for label, p in pool.items() if scheme.index(label) > 0}
    can_under = {label: p for label, p in pool.items() if scheme.index(label) < len(scheme.labels) - 1}
    share = 0.0 if not can_over else 1.0 if not can_under else over_estimate_share
    over = {label: share * p / sum(can_over.values()) for label, p in can_over.items()}
    under = {label: (1 - share) * p / sum(can_under.values()) for label, p in can_under.items()}
    weights = {label: over.get(label, 0.0) + under.get(label, 0.0) for label in pool}
    probability = {label: over.get(label, 0.0) / w if w else 0.0 for label, w in weights.items()}
    return weights, probability


# ---------------------------------------------------------------------------------------------------------------------
# Teachers and their cached texts


def make_teacher(
    name: str,
    *,
    model: str | None = None,
    base_url: str = "http://127.0.0.1:8000/v1",
    cache_path: str | Path | None = None,
    records: Sequence[Record] = (),
    progress: bool = True,
) -> Teacher:
    """A teacher by name. `rules` learns brands from `records`; `openai` keeps its SQLite cache at `cache_path`."""
    if name == "rules":
        from lref.teachers.rules import RulesTeacher

        return RulesTeacher().fit(records)
    if name == "openai":
        from lref.teachers.openai import OpenAITeacher, OpenAITeacherConfig

        return OpenAITeacher(OpenAITeacherConfig(
            base_url=base_url, model=model or "", cache_path=str(cache_path) if cache_path else None, progress=progress,
        ))
    if name == "local":
        from lref.teachers.local import LocalTeacher, LocalTeacherConfig

        return LocalTeacher(LocalTeacherConfig(model=model or "gemma-3-270m", progress=progress))
    raise ValueError(f"unknown teacher {name!r}: choose one of {', '.join(TEACHERS)}")


def _rules_reference(rules: RuleSet | None) -> str | None:
    return None if rules is None else (rules.source or rules.name)


def teacher_key(task: str, teacher: str, record: Record, wrong_label: str | None, rules: RuleSet | None) -> str:
    """Cache key of one teacher answer: the task, the teacher and its text version, the pair, its label, the wrong
    decision, the rules."""
    rules_text = rules.describe() if (rules is not None and task == "ra") else None
    payload = [task, teacher, TEACHER_PROMPT_VERSION, record.id, record.query, record.title, record.brand,
               record.description, record.label, wrong_label, rules_text]
    return hashlib.sha256(json.dumps(payload, ensure_ascii=False, default=str).encode()).hexdigest()


def read_teacher_file(path: str | Path) -> dict[str, Explanation]:
    """The cached answers of a teacher file (JSONL of Explanation fields plus `key`), by key."""
    path = Path(path)
    cached: dict[str, Explanation] = {}
    if not path.is_file():
        return cached
    for row, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            cached[item["key"]] = Explanation.from_dict(item)
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise DataError(f"unreadable teacher cache line ({error}); delete the file to regenerate",
                            path=str(path), row=row) from None
    return cached


def teach(
    teacher: Teacher,
    task: str,
    records: Sequence[Record],
    scheme: LabelScheme,
    *,
    rules: RuleSet | None = None,
    wrong_labels: Sequence[str] | None = None,
    cache_path: str | Path | None = None,
    chunk_size: int = 32,
    progress: bool = True,
) -> tuple[list[Explanation], dict[str, Any]]:
    """One teacher explanation per record, in input order, reading and extending the JSONL cache at `cache_path`.

    New answers are asked for in chunks of `chunk_size`; the cache file is rewritten (atomically) after each, so an
    interrupted run loses at most one chunk. Returns the explanations and counts: requested, cache_hits, generated,
    failed (no parsable label), seconds, pairs_per_s (generated pairs per second of teacher time), hit_rate.
    """
    from tqdm.auto import tqdm

    from lref.io import write_jsonl

    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}: choose one of {', '.join(TASKS)}")
    if task == "ra" and rules is None:
        raise ValueError("RA needs a rule set")
    if task == "dr" and (wrong_labels is None or len(wrong_labels) != len(records)):
        raise ValueError("DR needs one wrong decision per record")
    wrong = list(wrong_labels) if task == "dr" else [None] * len(records)
    keys = [teacher_key(task, teacher.name, r, w, rules) for r, w in zip(records, wrong)]
    cached = read_teacher_file(cache_path) if cache_path else {}
    missing = [i for i, key in enumerate(keys) if key not in cached]
    hits = len(records) - len(missing)
    seconds = 0.0
    with tqdm(total=len(missing), desc=f"teacher {teacher.name} {task}", unit="pair",
              disable=not progress or not missing) as bar:
        for start in range(0, len(missing), chunk_size):
            chunk = missing[start : start + chunk_size]
            batch = [records[i] for i in chunk]
            started = time.perf_counter()
            if task == "ee":
                answers = teacher.explain(batch, scheme)
            elif task == "ra":
                answers = teacher.apply_rules(batch, rules)
            else:
                answers = teacher.reflect(batch, [wrong[i] for i in chunk], scheme)
            seconds += time.perf_counter() - started
            for i, answer in zip(chunk, answers):
                cached[keys[i]] = answer
            if cache_path:
                write_jsonl(cache_path, ({"key": key, **value.to_dict()} for key, value in cached.items()))
            bar.update(len(chunk))
    out = [cached[key] for key in keys]
    stats = {
        "requested": len(records),
        "cache_hits": hits,
        "generated": len(missing),
        "failed": sum(not explanation.ok for explanation in out),
        "seconds": round(seconds, 3),
        "pairs_per_s": round(len(missing) / seconds, 2) if seconds > 0 else None,
        "hit_rate": round(hits / len(records), 4) if records else None,
    }
    return out, stats


# ---------------------------------------------------------------------------------------------------------------------
# Examples


def _sum_stats(total: dict[str, Any], part: dict[str, Any]) -> None:
    for key in ("requested", "cache_hits", "generated", "failed", "seconds"):
        total[key] = round(total.get(key, 0) + part[key], 3)


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
) -> tuple[list[TextExample], dict[str, Any]]:
    """`count` CoT examples of `task`: pairs drawn in a seeded order, explained by the teacher (cached), kept when
    the explanation has a label equal to the human one. EE and RA keep the records' label mix: the teacher agrees
    with the raters more often on some grades, and a skewed stage shifts the model's label prior. DR takes the mix of
    `wrong_decision_plan`, which lets it reach `over_estimate_share`. A grade that cannot fill its share within the
    first 4 x `count` pairs is topped up with the others. DataError when the records cannot give `count`."""
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
                              progress=progress)
        _sum_stats(stats, part)
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
            f"the human one; {stats.get('failed', 0)} without a label, {stats['rejected_disagreeing']} disagreeing), "
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


def _model_identity(model: str) -> dict[str, Any]:
    """What identifies the starting model for the skip check: its reference and, for an lref folder, its manifest."""
    from lref.models.loading import read_manifest
    from lref.models.zoo import stored_model_reference

    reference = stored_model_reference(model)
    manifest = read_manifest(reference) if Path(reference).is_dir() else None
    keys = ("data_hash", "created", "cot")
    return {"model": reference, **({k: manifest.get(k) for k in keys} if manifest else {})}


def _inputs_hash(previous: dict[str, Any], examples: Sequence[TextExample], sft: SFTStageConfig) -> str:
    settings = {k: v for k, v in asdict(sft).items()
                if k not in ("model", "output_dir", "resume", "threads", "progress", "use_cpu", "logging_steps",
                             "save_steps", "save_total_limit")}
    payload = json.dumps([previous, examples_hash(examples), settings, COT_PROMPT_VERSION], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def load_rule_set(rules: str | RuleSet | None, scheme: LabelScheme) -> RuleSet:
    """The RA rules: a RuleSet, a rule file or shipped set name, or the scheme's default set (None)."""
    if isinstance(rules, RuleSet):
        return rules
    return default_rules(scheme) if rules is None else load_rules(rules, scheme)


def train_cot(
    config: CoTConfig, records: Sequence[Record], *, direct_pool: Sequence[Record] | None = None,
    teacher: Teacher | None = None, callbacks: list | None = None
) -> dict[str, Path]:
    """Train the configured CoT stages in order (EE -> RA -> DR), each a LoRA on the previous stage's model, and
    return {task: adapter folder}. `direct_pool`: the training pairs before selection, which the direct examples are
    drawn from when `config.direct_from_pool` is on. `teacher` overrides the one named in the config (e.g. an
    already built one)."""
    from lref.data.validation import validate_records
    from lref.io import write_json
    from lref.models.loading import read_manifest
    from lref.models.scorer import scheme_for_model
    from lref.models.zoo import resolve_model
    from lref.stages.sft import last_checkpoint, train_sft_examples

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
    owned_teacher = teacher is None
    if teacher is None:
        teacher = make_teacher(config.teacher, model=config.teacher_model, base_url=config.teacher_url,
                               cache_path=output_dir / "teacher_cache.sqlite", records=records,
                               progress=config.progress)

    report: dict[str, Any] = {"teacher": teacher.name, "rules": _rules_reference(rules), "n_records": len(records),
                              "n_direct_pool": len(direct_source) if direct_source is not records else None,
                              "config": asdict(config), "stages": {}}
    adapters: dict[str, Path] = {}
    model = config.model
    previous = _model_identity(config.model)
    for task in config.stages:
        stage_started = time.perf_counter()
        count = getattr(config, f"{task}_samples")
        cot, teacher_stats = cot_examples(
            task, records, scheme, teacher, count, rules=rules, over_estimate_share=config.over_estimate_share,
            seed=config.seed, cache_path=output_dir / TEACHER_FILE.format(task=task), progress=config.progress,
        )
        direct = direct_examples(direct_source, scheme, direct_count(len(cot), config.direct_share),
                                 config.seed + 1 + TASKS.index(task), config.soft_labels)
        examples = cot + direct
        sft = config.sft_config(task, model)
        inputs_hash = _inputs_hash(previous, examples, sft)
        stage_dir = Path(sft.output_dir)
        manifest = read_manifest(stage_dir)
        finished = manifest is not None and (manifest.get("cot") or {}).get("inputs_hash") == inputs_hash
        if manifest is not None and not finished:
            raise FileExistsError(
                f"{stage_dir} holds a finished {task} adapter trained on other inputs (model, teacher texts or "
                "settings changed); delete it or choose another output folder"
            )
        if finished:
            logger.info("%s: finished adapter with the same inputs in %s, skipped", task, stage_dir)
        else:
            # an unfinished stage continues from its checkpoints (same inputs hash, else DataError)
            sft.resume = last_checkpoint(stage_dir) is not None
            cot_info = {
                "task": task, "inputs_hash": inputs_hash, "prompt_version": COT_PROMPT_VERSION,
                "teacher": teacher.name, "rules": _rules_reference(rules) if task == "ra" else None,
                "n_cot": len(cot), "n_direct": len(direct), "direct_share": config.direct_share,
                "direct_from_pool": direct_source is not records,
                "over_estimate_share": config.over_estimate_share if task == "dr" else None,
                "previous": model,
            }
            train_sft_examples(sft, examples, callbacks=callbacks, train_hash=inputs_hash, stage=f"cot-{task}",
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
        previous = {"stage": task, "inputs_hash": inputs_hash}
    if hasattr(teacher, "stats"):
        report["teacher_stats"] = teacher.stats()
    if owned_teacher and hasattr(teacher, "close"):
        teacher.close()
    report["wall_time_s"] = round(time.perf_counter() - started, 2)
    write_json(output_dir / REPORT_NAME, report)
    return adapters


# ---------------------------------------------------------------------------------------------------------------------
# Inference


def generate_predictions(
    model_dir: str | Path,
    records: Sequence[Record],
    scheme: LabelScheme | str | None = None,
    *,
    task: str = "ee",
    rules: str | RuleSet | None = None,
    max_new_tokens: int = 160,
    batch_size: int = 8,
    max_length: int = 1024,
    progress: bool = True,
    model=None,
    tokenizer=None,
    bf16: bool | None = None,
) -> tuple[list[Prediction], dict[str, Any]]:
    """CoT inference: greedy generation after the `task` prompt (ee or ra), the label parsed from the text.

    Pairs run in length-sorted, left-padded batches. A text without a parsable label gets the direct scorer's label
    (`LabelScorer` on the same model), counted as a fallback. Pass `model` and `tokenizer` to reuse a loaded model.
    `bf16`: bfloat16 autocast, None = auto (`lref.training.use_bf16`: on a CPU with native bf16).
    Returns the predictions in input order and stats: pairs, fallbacks, fallback_share, generated_tokens,
    hit_max_new_tokens, seconds, pairs_per_s and texts (the generations, in input order).
    """
    import torch
    from tqdm.auto import tqdm

    from lref.models.loading import load_causal_lm
    from lref.models.scorer import LabelScorer, ScorerConfig, scheme_for_model
    from lref.prompts import encode_prompt, truncate_pair

    if task not in ("ee", "ra"):
        raise ValueError(f"CoT inference runs the ee or ra prompt, not {task!r}")
    if batch_size < 1 or max_new_tokens < 1:
        raise ValueError("batch_size and max_new_tokens must be at least 1")
    manifest = None
    if model is None or tokenizer is None:
        model, tokenizer, manifest = load_causal_lm(model_dir, device="auto")
    else:
        from lref.models.loading import read_manifest

        manifest = read_manifest(model_dir) if model_dir and Path(model_dir).is_dir() else None
    scheme = scheme_for_model(manifest, scheme) if (manifest or scheme is None) else get_scheme(scheme)
    records = records_for_model(records, manifest)
    if task == "ra" and rules is None:
        rules = ((manifest or {}).get("cot") or {}).get("rules")
    rule_set = load_rule_set(rules, scheme) if task == "ra" else None
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    started = time.perf_counter()
    encoded = []
    for record in records:
        prefix_ids, pair_ids = encode_prompt(tokenizer, cot_prompt(task, record, scheme, rule_set))
        budget = max_length - max_new_tokens - len(prefix_ids)
        if budget < 2 * PAIR_TAIL_TOKENS:
            raise DataError(f"record {record.id!r}: max_length {max_length} leaves no room for the pair after the "
                            f"{len(prefix_ids)}-token instruction and {max_new_tokens} new tokens; raise max_length")
        encoded.append(prefix_ids + truncate_pair(pair_ids, budget, PAIR_TAIL_TOKENS))
    order = sorted(range(len(records)), key=lambda i: len(encoded[i]))
    texts: list[str] = [""] * len(records)
    generated_tokens = hit_limit = 0
    was_training = model.training
    model.eval()
    device = model.device.type
    try:
        with torch.inference_mode(), torch.autocast(device, torch.bfloat16, enabled=use_bf16(bf16, device == "cpu")), \
                tqdm(total=len(records), desc=f"cot {task}", unit="pair", disable=not progress) as bar:
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                width = max(len(encoded[i]) for i in rows)
                input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
                attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
                for row, i in enumerate(rows):  # left padding: every prompt ends at the last column
                    input_ids[row, width - len(encoded[i]) :] = torch.tensor(encoded[i])
                    attention_mask[row, width - len(encoded[i]) :] = 1
                output = model.generate(input_ids=input_ids.to(model.device),
                                        attention_mask=attention_mask.to(model.device), do_sample=False,
                                        max_new_tokens=max_new_tokens, pad_token_id=pad,
                                        eos_token_id=tokenizer.eos_token_id, top_p=None, top_k=None)
                for row, i in enumerate(rows):
                    new = output[row, width:].tolist()
                    if tokenizer.eos_token_id in new:
                        new = new[: new.index(tokenizer.eos_token_id)]
                    else:
                        hit_limit += 1
                    while new and new[-1] == pad:
                        new.pop()
                    generated_tokens += len(new)
                    texts[i] = tokenizer.decode(new, skip_special_tokens=True)
                bar.update(len(rows))
    finally:
        if was_training:
            model.train()

    labels = [parse_label(text, scheme) for text in texts]
    failed = [i for i, label in enumerate(labels) if label is None]
    fallback: dict[int, Prediction] = {}
    if failed:
        config = ScorerConfig(batch_size=batch_size, max_length=max_length, bf16=bf16)
        scorer = LabelScorer(model, tokenizer, scheme, config)
        for i, prediction in zip(failed, scorer.predict([records[i] for i in failed])):
            fallback[i] = prediction
    predictions = [fallback.get(i) or Prediction(id=r.id, label=labels[i], topk=[labels[i]])
                   for i, r in enumerate(records)]
    seconds = time.perf_counter() - started
    stats = {
        "pairs": len(records),
        "fallbacks": len(failed),
        "fallback_share": round(len(failed) / len(records), 4) if records else None,
        "generated_tokens": generated_tokens,
        "hit_max_new_tokens": hit_limit,
        "seconds": round(seconds, 3),
        "pairs_per_s": round(len(records) / seconds, 3) if seconds > 0 else None,
        "texts": texts,
    }
    return predictions, stats


__all__ = [
    "CoTConfig",
    "TASKS",
    "cot_examples",
    "direct_count",
    "direct_examples",
    "generate_predictions",
    "make_teacher",
    "read_teacher_file",
    "sample_wrong_label",
    "teach",
    "teacher_key",
    "train_cot",
    "wrong_decision_plan",
]
