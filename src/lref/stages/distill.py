"""Deployment stage: distil the tuned LLM into a small cross-encoder that can serve online.

1. **Pool.** The labelled training pairs, optional unlabelled pairs (their labels, if any, are ignored) and, with
   `candidates_per_query` = N, N extra pairs per query made by pairing it with random other products of the pool
   (the paper's teacher labels a large unlabelled pool; these stand in for one when none is given).
2. **Teacher soft labels.** `LabelScorer` gives the teacher's probabilities over the scheme's labels for every pair;
   with `teacher_calibration`, the label bias stored in the teacher's folder (`lref calibrate`, or the pipeline's
   calibration) is added to their logs, once, after the cache (which holds raw scores), so the student learns the
   teacher's calibrated judgement, not its raw prior. They are cached outside the output folder, in the teacher
   cache root (``teacher_cache`` beside the output folder; in a pipeline run ``RUN/teacher_cache``, which no stage
   reset deletes), in one ``teacher_scores.jsonl`` per teacher identity (model reference, a fingerprint of its files,
   scheme, prompt, length; `scores_path`), one row per pair keyed by record id and a hash of the pair's text. Rows are
   appended and fsynced as they are scored, so a killed run keeps what it scored; a re-run or `resume` never
   re-scores a pair, and a changed teacher gets a cache of its own. A pair the teacher refuses
   (`lref.teachers.base.TeacherRefusal`) is skipped (no soft label, left out of training) and listed beside the
   cache, up to `teacher_max_skips`.
3. **Student.** `lref.training.cross_encoder.train_cross_encoder` with `lref.training.losses.soft_label_loss`:
   T² · KL(teacher_T ‖ student_T) + λ · CE on the pairs that have a human label.

The output folder is the student (model, tokenizer, ``lref_manifest.json`` with a ``distill`` section), loadable with
`lref.models.cross_encoder.CrossEncoderScorer.from_pretrained`, and exportable with `lref.models.onnx.export_student`.

    >>> DistillConfig(teacher="runs/sft/adapter").student
    'minilm-l6'
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from tqdm.auto import tqdm

from lref.calibration import label_bias_for
from lref.data.records import DataError, Record, has_label, stable_id
from lref.data.validation import validate_records
from lref.device import prepare_device
from lref.io import MANIFEST_NAME, read_jsonl_lines, write_json, write_jsonl
from lref.labels import LabelScheme, get_scheme
from lref.models.cross_encoder import pair_texts
from lref.models.loading import load_causal_lm, read_manifest
from lref.models.scorer import LabelScorer, ScorerConfig, scheme_for_model
from lref.models.zoo import resolve_model, stored_model_reference
from lref.predictions import read_predictions, softmax
from lref.prompts import product_fields, records_for_model
from lref.teachers.base import TeacherRefusal
from lref.teachers.cache import (
    MAX_SKIPS,
    append_rows,
    check_skips,
    default_cache_root,
    read_skipped,
    skipped_path,
    teacher_dir,
)
from lref.training.cross_encoder import (
    CrossEncoderConfig,
    check_encoder_layers,
    check_lexical_prior,
    train_cross_encoder,
)
from lref.training.losses import soft_label_loss
from lref.training.run_guard import RunGuard
from lref.training.settings import TrainingSettings, check_training_fields, settings_values, with_default

logger = logging.getLogger(__name__)

SCORES_NAME = "teacher_scores.jsonl"
CANDIDATE_TAG = "distill_candidate"
"""`meta` key set on the pairs made by `candidates_per_query`."""
_HASHED_FILE_LIMIT = 256 * 2**20  # larger teacher files enter the fingerprint by name and size only


@dataclass
class DistillConfig(TrainingSettings):
    """Settings of distillation. Every field's help text feeds `lref distill` (`lref.config.field_help`)."""

    FINGERPRINT_ADDED_FIELDS: ClassVar[tuple[str, ...]] = ("grad_accum", "weight_decay", "save_total_limit", "bf16",
                                                           "teacher_max_skips", "allow_collapsed_teacher",
                                                           "teacher_labels", "lexical_features",
                                                           "feature_learning_rate", "encoder_layers",
                                                           "lexical_prior")
    """Training settings this config gained with the shared `TrainingSettings` (`lref.fingerprint.ADDED_FIELDS`)."""

    teacher: str = field(
        default="",
        metadata={"help": "Teacher LLM: an lref adapter folder (e.g. from SFT or DPO), an HF folder or a zoo name."},
    )
    teacher_labels: str = field(
        default="",
        metadata={"help": "A prediction file (lref judge / lref predict output: id and probs per pair) holding the "
                  "soft labels of every pool pair, used instead of scoring with `teacher`: a committee of judges "
                  "(lref judge --model A --model B), or shards labelled apart and joined with lref merge. Its "
                  "probabilities are used as they are (already calibrated by the command that wrote them)."},
    )
    student: str = field(
        default="minilm-l6",
        metadata={"help": "Student encoder: minilm-l6 (22.7M), mpnet-base (109M, larger) or any HF encoder folder."},
    )
    lexical_features: bool = field(
        default=False,
        metadata={"help": "Distil a hybrid student: the encoder's label logits joined with the lexical baseline's "
                  "match features in one model (lref.models.hybrid), which exports to one ONNX graph."},
    )
    lexical_prior: bool = field(
        default=False,
        metadata={"help": "Hybrid students only: add the lexical baseline's log-probabilities (fitted on the pool's "
                  "human labels, out of fold on its own pairs) to the student's logits, so it starts from lexical's "
                  "judgement and learns what the encoder and the teacher change (lref.models.hybrid)."},
    )
    feature_learning_rate: float = field(
        default=1e-3, metadata={"help": "Peak learning rate of the hybrid student's feature head."}
    )
    encoder_layers: int | None = field(
        default=None,
        metadata={"help": "Keep only the student encoder's first N transformer layers (a smaller, faster student: its "
                  "cost per pair falls with N); None keeps them all."},
    )
    scheme: str = field(default="graded3", metadata={"help": "Label scheme (preset name); must match the teacher's."})
    output_dir: str = field(
        default="runs/distill",
        metadata={"help": "Folder for the student and its manifest; the teacher scores are cached beside it, in "
                  "teacher_cache/ (in a pipeline run: RUN/teacher_cache)."},
    )
    temperature: float = field(
        default=2.0,
        metadata={"help": "Softening temperature T of teacher and student distributions (KL scaled by T²)."},
    )
    ce_weight: float = field(
        default=0.5, metadata={"help": "Weight λ of the cross-entropy on human labels (pairs without one add none)."}
    )
    teacher_calibration: bool = field(
        default=True,
        metadata={"help": "Apply the label bias stored in the teacher's folder (calibration.json, from lref calibrate "
                  "or the pipeline) to its soft labels; no effect when the folder has none."},
    )
    candidates_per_query: int = field(
        default=0,
        metadata={"help": "Extra unlabelled pairs per query: the query with this many random other products of the "
                  "pool."},
    )
    teacher_max_skips: float = field(
        default=MAX_SKIPS,
        metadata={"help": "Pairs the teacher may refuse for good before the run stops: below 1 a share of the pool (at "
                  "least 5 pairs), 1 or more a number of pairs. A refused pair gets no soft label and is left out."},
    )
    allow_collapsed_teacher: bool = field(
        default=False,
        metadata={"help": "In a pipeline run, distil even from a teacher whose evaluation found it collapsed "
                  "(lref.collapse); by default the stage is skipped with the reason."},
    )
    teacher_batch_size: int = field(default=16, metadata={"help": "Pairs per teacher forward pass."})
    teacher_max_length: int = field(default=512, metadata={"help": "Most teacher prompt tokens; only the pair is cut."})
    # the student's training settings, with the cross-encoder's defaults
    learning_rate: float = with_default("learning_rate", 5e-5, help="Student peak learning rate (linear decay).")
    batch_size: int = with_default("batch_size", 16, help="Student pairs per optimizer step.")
    max_length: int = with_default("max_length", 128, help="Most student tokens per (query, product) pair.")
    warmup_ratio: float = with_default("warmup_ratio", 0.1, help="Fraction of the student's steps spent warming up.")
    epochs: float = with_default("epochs", 1.0, help="Student training epochs; ignored when max_steps > 0.")
    weight_decay: float = with_default("weight_decay", 0.01)
    save_steps: int = with_default(
        "save_steps", 200, help="Write a resumable student checkpoint every this many steps."
    )
    save_total_limit: int = with_default("save_total_limit", 1)
    seed: int = with_default("seed", 0, help="Seed for the candidate pairs, the student head and shuffling.")
    use_cpu: bool | None = with_default(
        "use_cpu", None, help="Run on the CPU (default: CPU unless a CUDA device is available)."
    )
    resume: bool = with_default(
        "resume", False,
        help="Continue the student from its last checkpoint (cached teacher scores are always reused).",
    )
    logging_steps: int = with_default("logging_steps", 20)

    def __post_init__(self) -> None:
        if not str(self.teacher).strip() and not str(self.teacher_labels).strip():
            raise ValueError("teacher must name an LLM (adapter folder, HF folder or zoo name), or teacher_labels a "
                             "prediction file")
        if not str(self.student).strip():
            raise ValueError("student must name an encoder (zoo name or HF folder)")
        get_scheme(self.scheme)
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, not {self.temperature}")
        if self.ce_weight < 0:
            raise ValueError(f"ce_weight must be >= 0, not {self.ce_weight}")
        if self.teacher_max_skips < 0:
            raise ValueError(f"teacher_max_skips must not be negative, not {self.teacher_max_skips}")
        if self.candidates_per_query < 0:
            raise ValueError(f"candidates_per_query must be >= 0, not {self.candidates_per_query}")
        if self.epochs <= 0 and self.max_steps <= 0:
            raise ValueError("train for some epochs (> 0) or set max_steps")
        for name in ("learning_rate", "feature_learning_rate"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, not {getattr(self, name)}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1 or None, not {self.threads}")
        check_training_fields(
            self, ("batch_size", "grad_accum", "max_length", "teacher_batch_size", "teacher_max_length", "save_steps",
                   "logging_steps")
        )
        check_encoder_layers(self.encoder_layers)
        check_lexical_prior(self.lexical_prior, self.lexical_features)


# ---------------------------------------------------------------------------------------------------------------------
# Pool


def _product_key(record: Record) -> str:
    return str(record.meta.get("product_id") or record.meta.get("product_uid") or product_fields(record))


def candidate_pairs(pool: Sequence[Record], per_query: int, seed: int = 0) -> list[Record]:
    """`per_query` unlabelled pairs for every query of `pool`: the query with random products of the pool that it is
    not already paired with (fewer when the pool has too few products)."""
    if per_query <= 0:
        return []
    products: dict[str, Record] = {}
    paired: dict[str, set[str]] = {}
    for record in pool:
        key = _product_key(record)
        products.setdefault(key, record)
        paired.setdefault(record.query, set()).add(key)
    keys = list(products)
    rng = random.Random(f"{seed}:candidates")
    out = []
    for query, taken in paired.items():
        draw = rng.sample(keys, min(len(keys), per_query + len(taken)))
        for key in [k for k in draw if k not in taken][:per_query]:
            product = products[key]
            out.append(
                Record(
                    id=f"cand-{stable_id(query, key)}",
                    query=query,
                    title=product.title,
                    brand=product.brand,
                    description=product.description,
                    attributes=dict(product.attributes),
                    meta={CANDIDATE_TAG: True, "product_id": key},
                )
            )
    return out


def build_pool(
    records: Sequence[Record], unlabeled: Sequence[Record] | None, scheme: LabelScheme, candidates_per_query: int = 0,
    seed: int = 0,
) -> tuple[list[Record], dict[str, int]]:
    """Labelled records (labels checked against `scheme`), unlabelled ones (labels dropped) and candidate pairs;
    returns the pool and its counts. Raises DataError on an empty pool or a repeated id."""
    records = list(records or [])
    labelled = [r for r in records if has_label(r)]
    labelled = validate_records(labelled, scheme, "training") if labelled else []
    unlabelled = [replace(r, label=None) for r in records if not has_label(r)]
    unlabelled += [replace(r, label=None) for r in unlabeled or []]
    pool = labelled + unlabelled
    if not pool:
        raise DataError("nothing to distil: no training records and no unlabelled records")
    candidates = candidate_pairs(pool, candidates_per_query, seed)
    pool += candidates
    seen: set[str] = set()
    for record in pool:
        if record.id in seen:
            raise DataError(f"record id {record.id!r} occurs twice in the distillation pool (labelled + unlabelled)")
        seen.add(record.id)
    counts = {
        "labelled": len(labelled), "unlabelled": len(unlabelled), "candidates": len(candidates), "total": len(pool)
    }
    return pool, counts


# ---------------------------------------------------------------------------------------------------------------------
# Teacher scores, cached


def pair_hash(record: Record) -> str:
    """A hash of what the teacher reads of a pair (query and product text)."""
    return hashlib.sha256(json.dumps(pair_texts(record), ensure_ascii=False).encode()).hexdigest()[:16]


def teacher_identity(config: DistillConfig) -> dict[str, Any]:
    """What makes the teacher's scores what they are; its `key` changes when the teacher folder's files change."""
    folder = resolve_model(config.teacher)
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        size = path.stat().st_size
        digest.update(f"{path.name}\0{size}\0".encode())
        if size <= _HASHED_FILE_LIMIT:
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    identity = {
        "model": stored_model_reference(config.teacher),
        "files_sha256": digest.hexdigest(),
        "scheme": config.scheme,
        "prompt": "direct",
        "max_length": config.teacher_max_length,
    }
    identity["key"] = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return identity


def scores_path(cache_root: str | Path, identity: dict[str, Any]) -> Path:
    """The teacher score cache of the teacher `identity` under a teacher cache root (`lref.teachers.cache`):
    ``<root>/scores-<model name>-<identity key>-<hash>/teacher_scores.jsonl``; its skip list sits beside it."""
    name = f"scores-{Path(str(identity['model'])).name}-{identity['key']}"
    return teacher_dir(cache_root, name) / SCORES_NAME


def read_teacher_cache(path: Path, teacher_key: str, n_labels: int) -> tuple[dict[tuple[str, str], list[float]], int]:
    """The cached probabilities of `teacher_key` by (id, pair hash), and how many rows were dropped (another
    teacher's, or a line cut off by a killed run). Dropped rows are removed from the file (atomically). Lines are
    split on "\\n" only (`lref.io.read_jsonl_lines`)."""
    if not path.is_file():
        return {}, 0
    kept: list[dict[str, Any]] = []
    dropped = 0
    for _, line in read_jsonl_lines(path):
        try:
            row = json.loads(line)
            usable = row["teacher"] == teacher_key and len(row["probs"]) == n_labels
        except (json.JSONDecodeError, KeyError, TypeError):
            usable = False
        if usable:
            kept.append(row)
        else:
            dropped += 1
    if dropped:
        logger.info("teacher cache %s: dropped %d rows of another teacher or cut off", path, dropped)
        write_jsonl(path, kept)
    return {(row["id"], row["pair"]): row["probs"] for row in kept}, dropped


def teacher_targets(
    config: DistillConfig, pool: Sequence[Record], scheme: LabelScheme, identity: dict[str, Any], use_cpu: bool,
    teacher_cache: str | Path | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """N x K raw teacher probabilities for `pool` (no label bias: `distill` applies the teacher's calibration once,
    on top), from the cache (`scores_path` under `teacher_cache`, default `default_cache_root(output_dir)`) where
    present, else scored and appended to it (fsynced per chunk). A pair the teacher refuses
    (`lref.teachers.base.TeacherRefusal`) is listed in the skip list beside the cache, never scored again, and gets a
    row of NaN (`distill` leaves it out); more refusals than `config.teacher_max_skips` stop with a TeacherError."""
    root = Path(teacher_cache) if teacher_cache is not None else default_cache_root(config.output_dir)
    path = scores_path(root, identity)
    skip_file = skipped_path(path)
    cache, dropped = read_teacher_cache(path, identity["key"], len(scheme))
    skipped = read_skipped(skip_file)
    keys = [(r.id, pair_hash(r)) for r in pool]
    skip_keys = [f"{key[0]}\t{key[1]}" for key in keys]
    missing = [i for i, key in enumerate(keys) if key not in cache and skip_keys[i] not in skipped]
    stats = {"hits": sum(key in cache for key in keys), "scored": len(missing), "dropped": dropped,
             "wall_time_s": 0.0, "path": str(path)}
    if missing:
        started = time.perf_counter()
        model, tokenizer, _ = load_causal_lm(config.teacher, device="cpu" if use_cpu else "cuda")
        scorer = LabelScorer(
            model, tokenizer, scheme,
            ScorerConfig(batch_size=config.teacher_batch_size, max_length=config.teacher_max_length,
                         num_threads=config.threads, label_bias=None),  # the cache holds raw scores
        )
        chunk = config.teacher_batch_size * 8
        with tqdm(total=len(missing), unit="pair", file=sys.stderr, disable=not config.progress,
                  desc="teacher") as bar:
            for start in range(0, len(missing), chunk):
                index = missing[start : start + chunk]
                scored: list[tuple[int, Any]] = []
                refused: list[dict[str, Any]] = []
                try:
                    scored = list(zip(index, scorer.score([pool[i] for i in index]).probs))
                except TeacherRefusal:
                    for i in index:  # find the refused pair(s)
                        try:
                            scored.append((i, scorer.score([pool[i]]).probs[0]))
                        except TeacherRefusal as error:
                            refused.append({"key": skip_keys[i], "id": pool[i].id, "teacher": identity["key"],
                                            "error": str(error)[:500]})
                rows = []
                for i, probs in scored:
                    cache[keys[i]] = [float(p) for p in probs]
                    rows.append({"id": keys[i][0], "pair": keys[i][1], "teacher": identity["key"],
                                 "probs": cache[keys[i]]})
                append_rows(path, rows)  # fsynced: what was scored survives a kill
                if refused:
                    check_skips(len(skipped) + len(refused), len(pool), config.teacher_max_skips,
                                where=str(skip_file), last_error=refused[-1]["error"])
                    append_rows(skip_file, refused)
                    skipped.update({row["key"]: row for row in refused})
                    for row in refused:
                        logger.warning("teacher refused pair %r (%s): skipped", row["id"], row["error"])
                bar.update(len(index))
        stats["wall_time_s"] = round(time.perf_counter() - started, 2)
        stats["pairs_per_s"] = round(len(missing) / stats["wall_time_s"], 2) if stats["wall_time_s"] > 0 else None
        del model, scorer
    n_skipped = sum(key not in cache for key in keys)
    stats["scored"] -= sum(skip_keys[i] in skipped for i in missing)
    stats.update(skipped=n_skipped, skipped_file=str(skip_file) if n_skipped else None)
    nan = [float("nan")] * len(scheme)
    return np.asarray([cache.get(key, nan) for key in keys], dtype=np.float32), stats


def labels_from_file(path: str | Path, pool: Sequence[Record], scheme: LabelScheme) -> tuple[np.ndarray, dict]:
    """N x K teacher probabilities for `pool` from a prediction file (`teacher_labels`), renormalised per pair; a
    DataError names the file and the first pool ids it has no probabilities for."""
    started = time.perf_counter()
    by_id = {p.id: p.probs for p in read_predictions(path, scheme)}
    missing = [r.id for r in pool if not by_id.get(r.id)]
    if missing:
        shown = ", ".join(repr(i) for i in missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise DataError(f"{len(missing)} of {len(pool)} pool pairs have no probabilities here ({shown}); label the "
                        "whole pool (lref judge --data POOL, or lref predict) first", path=str(path))
    probs = np.asarray([[by_id[r.id].get(label, 0.0) for label in scheme.labels] for r in pool], dtype=np.float64)
    totals = probs.sum(axis=1, keepdims=True)
    if (probs < 0).any() or (totals <= 0).any():
        row = int(np.flatnonzero((probs < 0).any(axis=1) | (totals[:, 0] <= 0))[0])
        raise DataError(f"pair {pool[row].id!r}: probabilities must be >= 0 with a positive sum", path=str(path),
                        column="probs")
    stats = {"file": str(path), "sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest(), "hits": len(pool),
             "scored": 0, "skipped": 0, "wall_time_s": round(time.perf_counter() - started, 2)}
    return (probs / totals).astype(np.float32), stats


def calibrated_probs(probs: np.ndarray, bias: Sequence[float]) -> np.ndarray:
    """softmax(log probs + bias), row by row: probabilities with a per-label logit bias applied."""
    return softmax(np.log(np.clip(probs, 1e-12, None)) + np.asarray(bias, dtype=np.float64)).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------------
# Entry point


def distill(config: DistillConfig, records: Sequence[Record], unlabeled: Sequence[Record] | None = None, *,
            teacher_cache: str | Path | None = None) -> Path:
    """Distil `config.teacher` into `config.student` on `records` (+ `unlabeled`); return the student folder.
    `teacher_cache`: the teacher cache root (default: ``teacher_cache`` beside the output folder; the pipeline gives
    ``RUN/teacher_cache``)."""
    scheme = get_scheme(config.scheme)
    output_dir = Path(config.output_dir)
    if not config.resume:  # refuse a folder holding a run before any scoring (its teacher cache stays)
        RunGuard(output_dir, resume=False)
    teacher_manifest = read_manifest(resolve_model(config.teacher)) if config.teacher else None
    scheme_for_model(teacher_manifest, scheme)  # LabelError if the teacher learnt another
    pool, counts = build_pool(records, unlabeled, scheme, config.candidates_per_query, config.seed)
    pool = records_for_model(pool, teacher_manifest)  # the student learns (and serves) from what the teacher read
    if counts["labelled"] == 0 and config.ce_weight > 0:
        logger.info("no pair has a human label: the student learns from the teacher alone (no CE term)")
    use_cpu = prepare_device(config)
    if config.teacher_labels:
        targets, cache_stats = labels_from_file(config.teacher_labels, pool, scheme)
        identity = {"labels_file": cache_stats["file"], "sha256": cache_stats["sha256"]}
    else:
        identity = teacher_identity(config)
        targets, cache_stats = teacher_targets(config, pool, scheme, identity, use_cpu, teacher_cache)
    if cache_stats["skipped"]:  # pairs the teacher refused have no soft label: the student does not see them
        keep = ~np.isnan(targets).any(axis=1)
        pool, targets = [r for r, k in zip(pool, keep) if k], targets[keep]
        if not pool:
            raise DataError("the teacher refused every pair of the distillation pool")
    counts["teacher_skipped"] = cache_stats["skipped"]
    # The one place the teacher's label bias is applied: the cached scores are raw.
    bias = (label_bias_for(resolve_model(config.teacher), scheme)
            if config.teacher_calibration and not config.teacher_labels else None)
    if bias is not None:
        targets = calibrated_probs(targets, bias)

    student_config = CrossEncoderConfig(
        **settings_values(config, TrainingSettings), model=config.student, scheme=scheme.name,
        output_dir=str(output_dir), lexical_features=config.lexical_features, lexical_prior=config.lexical_prior,
        feature_learning_rate=config.feature_learning_rate, encoder_layers=config.encoder_layers,
    )
    loss_fn = functools.partial(soft_label_loss, temperature=config.temperature, ce_weight=config.ce_weight)
    folder = train_cross_encoder(student_config, pool, targets=targets, loss_fn=loss_fn)

    manifest = read_manifest(folder) or {}
    manifest["stage"] = "distill"
    manifest["distill"] = {
        "teacher": identity,
        "pairs": counts,
        "teacher_cache": cache_stats,
        "teacher_bias": dict(zip(scheme.labels, bias)) if bias is not None else None,
        "teacher_label_shares": {
            label: round(float(share), 4) for label, share in zip(scheme.labels, np.bincount(
                targets.argmax(axis=1), minlength=len(scheme)) / len(pool))
        },
        "config": asdict(config),
    }
    write_json(folder / MANIFEST_NAME, manifest)
    logger.info("student written to %s (%d pairs, %d teacher scores cached)", folder, len(pool), cache_stats["hits"])
    return folder


__all__ = [
    "CANDIDATE_TAG",
    "SCORES_NAME",
    "DistillConfig",
    "build_pool",
    "calibrated_probs",
    "candidate_pairs",
    "distill",
    "labels_from_file",
    "pair_hash",
    "read_teacher_cache",
    "scores_path",
    "teacher_identity",
    "teacher_targets",
]
