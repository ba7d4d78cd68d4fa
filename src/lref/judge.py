"""`lref judge`: label pairs that have no gold label with one model or a committee, flag the labels worth a second
look, and pick the few a human review budget can cover.

What a row holds
    ``id``, ``label`` (the top label of the combined distribution), ``confidence`` (its probability), the flags
    ``low_confidence`` (confidence below `JudgeConfig.min_confidence`) and ``disagreement`` (the models' own top
    labels differ; never with one model), ``probs`` (label -> probability) and ``topk`` (labels, most probable
    first), so a labels file reads back with `lref.predictions.read_predictions` and `lref eval`. With several models,
    ``models`` maps each model (as given) to its own top label.

Committee
    Each model is scored as `lref predict` scores it (`lref.models.factory`: its scheme, match hints and its own
    label calibration, calibration.json), then the calibrated probabilities are averaged, weighted by
    `JudgeConfig.weights` (equal by default). Every model must label in the same scheme.

Review budget
    `review_order` ranks the pairs for a human: first those the models disagree on, then by the combined confidence,
    lowest first (least-confidence sampling), ties broken by the smaller margin between the two most probable labels,
    then by input order. Disagreement comes first because it is direct evidence that at least one model is wrong,
    whatever the models' probabilities say; within each group, 1 - confidence is the judge's own estimate of the
    chance that its label is wrong, so reviewing the least confident pairs first corrects the most labels per pair
    looked at. The margin only orders equal confidences (with three or more labels the runner-up's share varies).

Output formats
    ``jsonl`` (the rows above), ``csv`` (a header, one column per field and per label probability) and TREC
    ``qrels`` (``query_id 0 doc_id grade``): the grade is an integer, 0 for the scheme's least relevant label rising
    by one per grade (graded3: Irrelevant 0, Partial 1, Exact 2), the doc_id the pair's id and the query_id the
    record's ``meta["query_id"]`` when it has one, else a stable id of the normalised query (`query_id`).

Scale-out and resume
    ``shard="i/N"`` judges the blocks of shard i (`lref.sharding`) and writes the sidecar `lref merge` needs (JSONL
    output only); the merged file equals an unsharded run byte for byte. Scores are appended to ``OUT.partial`` every
    `JudgeConfig.checkpoint_pairs` pairs; a rerun after a kill takes what it holds (when it came from the same models,
    data and settings) and scores the rest. Outputs are written to a temporary file and renamed.

    lref judge -m runs/student/export -m runs/dpo/model -d pool.jsonl -o labels.jsonl --budget 200
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from lref.data import load_records
from lref.data.records import DataError, Record, stable_id
from lref.data.splits import normalise_query
from lref.device import machine_info
from lref.fingerprint import data_hash, sha256_json
from lref.io import atomic_write, read_jsonl_lines, write_json, write_jsonl
from lref.labels import PRESETS, LabelError, LabelScheme, get_scheme
from lref.models.factory import ScorerSpec, build_scorer, scorer_spec
from lref.sharding import (
    DEFAULT_BLOCK_SIZE,
    ScoringPool,
    available_cores,
    parse_shard,
    select_shard,
    shard_info_path,
    useful_workers,
    write_shard_info,
)

OUTPUT_FORMATS = ("jsonl", "csv", "qrels")
DEFAULT_MIN_CONFIDENCE = 0.5
"""Below even odds the judge itself thinks its label more likely wrong than right: worth a flag whatever the
number of labels (with three labels a uniform guess is 0.33, so 0.5 is well above chance)."""
PARTIAL_SUFFIX = ".partial"
PARTIAL_VERSION = 1


@dataclass
class JudgeConfig:
    """Settings of `judge`. Each field's help text feeds `lref judge` (`lref.config.field_help`)."""

    models: list[str] = field(
        default_factory=list,
        metadata={"help": "Models that judge (repeatable): a zoo name, LLM or adapter folder, cross-encoder student, "
                  "ONNX export or lexical model folder, anything `lref predict` takes. Several form a committee."},
    )
    out: str = field(default="labels.jsonl", metadata={"help": "The labels file."})
    output_format: str = field(
        default="auto",
        metadata={"help": "jsonl, csv or qrels (TREC: query_id 0 doc_id grade); auto: by the extension of the "
                  "labels file (.csv, .qrels or .txt, else jsonl)."},
    )
    weights: list[float] | None = field(
        default=None,
        metadata={"help": "Committee weight of each model, in --model order (repeatable); default: equal."},
    )
    scheme: str | None = field(
        default=None,
        metadata={"help": "Label scheme preset; default: the one in the models' manifests, else the data format's."},
    )
    min_confidence: float = field(
        default=DEFAULT_MIN_CONFIDENCE,
        metadata={"help": "Flag low_confidence when the top label's combined probability is below this (0.5: the "
                  "judge gives its own label less than even odds)."},
    )
    budget: int = field(
        default=0,
        metadata={"help": "Also write the N pairs most worth a human look (disagreement first, then lowest "
                  "confidence) to the review file; 0: none. Clipped to the pool."},
    )
    review_out: str | None = field(
        default=None, metadata={"help": "The review file (JSONL); default: beside the labels, NAME.review.jsonl."}
    )
    batch_size: int = field(default=16, metadata={"help": "Pairs per forward pass."})
    max_length: int | None = field(
        default=None,
        metadata={"help": "Most tokens per pair; default: each model's own (512 for an LLM, a student's trained "
                  "length)."},
    )
    threads: int | None = field(
        default=None, metadata={"help": "Threads per scoring process (torch / onnxruntime); default: their own."}
    )
    workers: int = field(default=1, metadata={"help": "Scoring processes on this machine (cores split evenly)."})
    block_size: int = field(
        default=DEFAULT_BLOCK_SIZE,
        metadata={"help": "Pairs per scoring block, the unit of sharding; keep it equal across shards."},
    )
    shard: str | None = field(
        default=None,
        metadata={"help": "Judge only shard i/N (0-based; blocks i, i+N, ...); join the outputs with `lref merge` "
                  "(JSONL only)."},
    )
    calibrated: bool = field(
        default=True,
        metadata={"help": "Apply each model folder's label-prior calibration (calibration.json) when it has one."},
    )
    checkpoint_pairs: int = field(
        default=2048,
        metadata={"help": "Pairs scored between two saves to the resume file OUT.partial (rounded up to whole "
                  "blocks, times --workers; the workers stay up across saves)."},
    )
    progress: bool = field(default=True, metadata={"help": "Show a progress bar on stderr."})

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("name at least one model to judge with")
        if len(set(self.models)) != len(self.models):
            raise ValueError(f"a model is named twice in {self.models}; give it a larger weight instead")
        if self.weights is not None:
            if len(self.weights) != len(self.models):
                raise ValueError(f"{len(self.weights)} weights for {len(self.models)} models; give one per model")
            if any(not math.isfinite(w) or w < 0 for w in self.weights) or sum(self.weights) <= 0:
                raise ValueError(f"weights must be finite, non-negative and not all 0, got {self.weights}")
        if self.output_format not in ("auto", *OUTPUT_FORMATS):
            raise ValueError(f"output_format must be auto or one of {', '.join(OUTPUT_FORMATS)}, "
                             f"not {self.output_format!r}")
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ValueError(f"min_confidence must lie in [0, 1], got {self.min_confidence}")
        if self.budget < 0:
            raise ValueError(f"budget must be at least 0, got {self.budget}")
        for name in ("batch_size", "workers", "block_size", "checkpoint_pairs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be at least 1, got {self.threads}")
        if self.max_length is not None and self.max_length < 2:
            raise ValueError(f"max_length must be at least 2, got {self.max_length}")
        if self.shard is not None:
            parse_shard(self.shard)
        if self.shard is not None and self.labels_format != "jsonl":
            raise ValueError(f"--shard writes JSONL (what `lref merge` joins), not {self.labels_format}")

    @property
    def labels_format(self) -> str:
        """The output format, `output_format` with auto resolved by the labels file's extension."""
        if self.output_format != "auto":
            return self.output_format
        suffix = Path(self.out).suffix.lower()
        return "csv" if suffix == ".csv" else "qrels" if suffix in (".qrels", ".txt") else "jsonl"

    def weight_vector(self) -> np.ndarray:
        """The committee weights, normalised to sum to 1."""
        weights = np.asarray(self.weights if self.weights is not None else [1.0] * len(self.models), dtype=np.float64)
        return weights / weights.sum()


def sibling_path(out: str | os.PathLike, suffix: str) -> Path:
    """`labels.jsonl` -> `labels<suffix>` beside it (the review and cost files)."""
    out = Path(out)
    return out.with_name((out.stem if out.suffix else out.name) + suffix)


def review_path(config: JudgeConfig) -> Path:
    return Path(config.review_out) if config.review_out else sibling_path(config.out, ".review.jsonl")


def cost_path(out: str | os.PathLike) -> Path:
    return sibling_path(out, ".cost.json")


def partial_path(out: str | os.PathLike) -> Path:
    out = Path(out)
    return out.with_name(out.name + PARTIAL_SUFFIX)


# ------------------------------------------------------------------------------------------------------ models
def committee_specs(config: JudgeConfig, default_scheme: LabelScheme | str | None = None) -> list[ScorerSpec]:
    """Each model's `ScorerSpec` as `lref predict` decides it (scheme, match hints, calibration), with the judge's
    batch size, length and threads. Raises before any weights load: an unknown model (ZooError), a model trained on
    another scheme than `config.scheme`, or committee members whose schemes differ (LabelError naming both)."""
    specs = []
    threads = config.threads
    if config.workers > 1 and threads is None:  # onnxruntime would start one thread per core in every worker
        threads = max(1, available_cores() // config.workers)
    for model in config.models:
        try:
            spec = scorer_spec(model, scheme=config.scheme, default_scheme=default_scheme, config=None,
                               calibrated=config.calibrated)
        except LabelError as error:
            raise LabelError(f"model {model}: {error}") from None
        changes: dict[str, Any] = {"batch_size": config.batch_size, "num_threads": threads, "progress": False}
        if config.max_length is not None:
            changes["max_length"] = config.max_length
        specs.append(dataclasses.replace(spec, config=dataclasses.replace(spec.config, **changes)))
    first = specs[0]
    for model, spec in zip(config.models[1:], specs[1:]):
        if spec.scheme.labels != first.scheme.labels:
            raise LabelError(
                f"the committee's label schemes differ: {config.models[0]} labels in {first.scheme.name!r} "
                f"({', '.join(first.scheme.labels)}), {model} in {spec.scheme.name!r} "
                f"({', '.join(spec.scheme.labels)}); every model must use one scheme"
            )
    return specs


def read_pool(path: str | os.PathLike, fmt: str = "auto", scheme: LabelScheme | str | None = None,
              **options: Any) -> list[Record]:
    """The pairs to judge, without labels. A label column is ignored: read in `scheme` (default: the format's own)
    when its labels parse there, else in the first preset where they do; DataError when the file has no pairs."""
    candidates: list[LabelScheme | None] = [get_scheme(scheme) if scheme is not None else None]
    candidates += [preset for preset in PRESETS.values() if preset not in candidates]
    first_error: DataError | None = None
    for candidate in candidates:
        try:
            records = load_records(path, fmt, scheme=candidate, **options)
            break
        except DataError as error:
            if error.column is None:  # not about a column, so not about labels: another scheme cannot help
                raise
            first_error = first_error or error
    else:
        raise first_error
    if not records:
        raise DataError("no pairs to judge", path=str(path))
    return [dataclasses.replace(r, label=None) if r.label is not None else r for r in records]


# ------------------------------------------------------------------------------------------ combining and flags
def judgements(ids: Sequence[str], labels: Sequence[str], model_probs: Sequence[np.ndarray],
               weights: Sequence[float] | None = None, *, min_confidence: float = DEFAULT_MIN_CONFIDENCE,
               model_names: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One row per pair from each model's N x K probabilities (scheme order): the weighted average, its top label
    and confidence, the flags, and with several models each model's own top label (module docs)."""
    stacked = np.stack([np.asarray(p, dtype=np.float64) for p in model_probs])
    if stacked.ndim != 3 or stacked.shape[1] != len(ids) or stacked.shape[2] != len(labels):
        raise ValueError(f"need one {len(ids)} x {len(labels)} probability matrix per model, got {stacked.shape}")
    weights = np.ones(len(stacked)) if weights is None else np.asarray(weights, dtype=np.float64)
    if len(weights) != len(stacked):
        raise ValueError(f"{len(weights)} weights for {len(stacked)} models")
    combined = np.tensordot(weights / weights.sum(), stacked, axes=1)
    names = list(model_names) if model_names is not None else [f"model{m}" for m in range(len(stacked))]
    own = stacked.argmax(axis=2)  # models x pairs
    order = np.argsort(-combined, axis=1, kind="stable")  # ties: scheme order, as in ScoreResult
    rows = []
    for i, pair_id in enumerate(ids):
        top = int(order[i, 0])
        confidence = float(combined[i, top])
        row: dict[str, Any] = {
            "id": pair_id,
            "label": labels[top],
            "confidence": confidence,
            "low_confidence": confidence < min_confidence,
            "disagreement": len(set(own[:, i].tolist())) > 1,
            "probs": {label: float(p) for label, p in zip(labels, combined[i])},
            "topk": [labels[int(j)] for j in order[i]],
        }
        if len(stacked) > 1:
            row["models"] = {name: labels[int(own[m, i])] for m, name in enumerate(names)}
        rows.append(row)
    return rows


def margin(row: dict[str, Any]) -> float:
    """The gap between the two most probable labels of a row."""
    top = sorted(row["probs"].values(), reverse=True)
    return top[0] - (top[1] if len(top) > 1 else 0.0)


def review_order(rows: Sequence[dict[str, Any]]) -> list[int]:
    """Row positions, most worth a human look first: disagreements, then lowest confidence, then smallest margin,
    then input order (module docs)."""
    return sorted(range(len(rows)),
                  key=lambda i: (not rows[i]["disagreement"], rows[i]["confidence"], margin(rows[i]), i))


def review_reason(row: dict[str, Any]) -> str:
    if row["disagreement"]:
        return "models disagree"
    return "low confidence" if row["low_confidence"] else "least confident of the rest"


def select_for_review(rows: Sequence[dict[str, Any]], records: Sequence[Record], budget: int) -> list[dict[str, Any]]:
    """The `budget` rows `review_order` puts first, each with its rank, the reason and the pair's text."""
    selected = []
    for rank, i in enumerate(review_order(rows)[:budget], start=1):
        record = records[i]
        pair = {"query": record.query, "title": record.title}
        pair.update({key: value for key, value in (("brand", record.brand), ("description", record.description))
                     if value})
        selected.append({"rank": rank, "reason": review_reason(rows[i]), **rows[i], **pair})
    return selected


# ------------------------------------------------------------------------------------------------------ writers
def grade(scheme: LabelScheme, label: str) -> int:
    """The integer qrels grade of `label`: 0 for the scheme's least relevant label, rising by one per grade."""
    return len(scheme) - 1 - scheme.index(label)


def query_id(record: Record) -> str:
    """The record's ``meta["query_id"]`` when it has one, else a stable id of its normalised query."""
    given = record.meta.get("query_id")
    if given is not None and str(given).strip():
        return str(given).strip()
    return stable_id(normalise_query(record.query))


def write_labels(path: str | os.PathLike, rows: Sequence[dict[str, Any]], records: Sequence[Record],
                 scheme: LabelScheme, fmt: str = "jsonl") -> int:
    """Write the rows as `fmt` (jsonl, csv or qrels), atomically; `records` are the rows' pairs, in order."""
    if fmt == "jsonl":
        return write_jsonl(path, rows)
    if fmt == "qrels":
        lines = []
        for row, record in zip(rows, records):
            fields = {"query_id": query_id(record), "doc_id": row["id"]}
            for column, value in fields.items():
                if not value or any(c.isspace() for c in value):
                    raise DataError(f"{column} {value!r} of pair {row['id']!r} is empty or holds whitespace, "
                                    "which qrels cannot carry; write jsonl or csv", path=str(path), column=column)
            lines.append(f"{fields['query_id']} 0 {fields['doc_id']} {grade(scheme, row['label'])}\n")
        with atomic_write(path) as handle:
            handle.writelines(lines)
        return len(lines)
    if fmt == "csv":
        models = list(rows[0].get("models", {})) if rows else []
        header = ["id", "query_id", "label", "grade", "confidence", "low_confidence", "disagreement",
                  *(f"prob_{label}" for label in scheme.labels), *(f"label_{model}" for model in models)]
        with atomic_write(path, encoding="utf-8") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(header)
            for row, record in zip(rows, records):
                writer.writerow([row["id"], query_id(record), row["label"], grade(scheme, row["label"]),
                                 repr(row["confidence"]), str(row["low_confidence"]).lower(),
                                 str(row["disagreement"]).lower(), *(repr(row["probs"][label]) for label in
                                                                     scheme.labels),
                                 *(row["models"][model] for model in models)])
        return len(rows)
    raise ValueError(f"output format must be one of {', '.join(OUTPUT_FORMATS)}, not {fmt!r}")


# -------------------------------------------------------------------------------------------- scoring and resume
@dataclass
class ModelCost:
    """What scoring with one model cost in this run."""

    model: str
    kind: str
    pairs_scored: int = 0
    resumed_pairs: int = 0
    wall_s: float = 0.0
    """Loading the model included (with --workers > 1, once in each worker)."""
    cpu_s: float = 0.0
    load_s: float | None = None
    """Seconds to load the model in this process (None when it was not loaded here: resumed, or --workers > 1)."""

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "kind": self.kind, "pairs_scored": self.pairs_scored,
                "resumed_pairs": self.resumed_pairs, "wall_s": round(self.wall_s, 3), "cpu_s": round(self.cpu_s, 3),
                "load_s": None if self.load_s is None else round(self.load_s, 3),
                **rates(self.pairs_scored, self.wall_s, self.cpu_s)}


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the worker pools), user and system."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def rates(pairs: int, wall_s: float, cpu_s: float) -> dict[str, float | None]:
    return {"pairs_per_s": round(pairs / wall_s, 2) if pairs and wall_s > 0 else None,
            "cpu_s_per_1000_pairs": round(1000 * cpu_s / pairs, 3) if pairs else None}


def run_fingerprint(specs: Sequence[ScorerSpec], records: Sequence[Record], block_size: int) -> str:
    """What the stored scores depend on: the models and their settings (threads and progress aside), the pairs and
    the block size. A partial file with another fingerprint is not resumed."""
    models = [{"folder": str(Path(spec.folder).resolve()), "kind": spec.kind, "scheme": spec.scheme.name,
               "config": {k: v for k, v in dataclasses.asdict(spec.config).items()
                          if k not in ("num_threads", "progress")}}
              for spec in specs]
    return sha256_json({"version": PARTIAL_VERSION, "models": models, "data": data_hash(records),
                        "block_size": block_size})


class ScoreCheckpoint:
    """The resume file: a header line with the run's fingerprint, then one line per scored chunk (model index,
    first position, logits), appended and fsynced as each chunk finishes. Models are scored one after another and
    chunks in order, so the lines that can be trusted are the leading run of expected chunks; a torn last line and
    anything after a mismatch are dropped."""

    def __init__(self, path: Path, fingerprint: str, models: int, pairs: int):
        self.path, self.fingerprint = path, fingerprint
        self.logits: list[list[np.ndarray]] = [[] for _ in range(models)]
        self.pairs = pairs
        self.note: str | None = None
        self._load()

    def done(self, model: int) -> int:
        return sum(len(part) for part in self.logits[model])

    def _load(self) -> None:
        kept = [json.dumps({"fingerprint": self.fingerprint})]
        if self.path.is_file():
            try:
                lines = [line for _, line in read_jsonl_lines(self.path)]
                header = json.loads(lines[0]) if lines else {}
            except (UnicodeDecodeError, json.JSONDecodeError):
                lines, header = [], {}
            if not isinstance(header, dict) or header.get("fingerprint") != self.fingerprint:
                self.note = (f"{self.path} comes from another run (other models, pairs or settings): starting over")
            else:
                model = 0
                for line in lines[1:]:
                    try:
                        chunk = json.loads(line)
                        logits = np.asarray(chunk["logits"], dtype=np.float32)
                    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                        break  # torn by a kill
                    if not isinstance(chunk, dict):
                        break
                    while model < len(self.logits) and self.done(model) >= self.pairs:
                        model += 1
                    if chunk.get("model") != model or chunk.get("start") != self.done(model) or logits.ndim != 2 \
                            or not 0 < len(logits) <= self.pairs - self.done(model):
                        break
                    self.logits[model].append(logits)
                    kept.append(line)
                resumed = sum(self.done(m) for m in range(len(self.logits)))
                if resumed:
                    self.note = f"resuming from {self.path}: {resumed} pair scores kept"
        with atomic_write(self.path) as handle:  # drop a torn or stale tail before appending to it
            handle.write("".join(line + "\n" for line in kept))

    def append(self, model: int, start: int, logits: np.ndarray) -> None:
        line = json.dumps({"model": model, "start": start, "logits": np.asarray(logits, dtype=np.float32).tolist()})
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.logits[model].append(np.asarray(logits, dtype=np.float32))

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def score_committee(config: JudgeConfig, specs: Sequence[ScorerSpec], records: Sequence[Record],
                    checkpoint: ScoreCheckpoint) -> tuple[list[np.ndarray], list[ModelCost]]:
    """Each model's N x K probabilities for `records`, scored block by block (`lref.sharding`) in chunks that are
    saved to `checkpoint` as they finish; chunks it already holds are not scored again."""
    from tqdm.auto import tqdm

    from lref.predictions import softmax

    blocks_per_chunk = math.ceil(config.checkpoint_pairs / config.block_size) * config.workers
    chunk = blocks_per_chunk * config.block_size  # whole blocks, so re-cutting a chunk gives the input's blocks
    costs = []
    total = len(specs) * len(records)
    resumed = sum(checkpoint.done(m) for m in range(len(specs)))
    probs = []
    with tqdm(total=total, initial=resumed, unit="pair", desc="judging", file=sys.stderr,
              disable=not config.progress or not total) as bar:
        for m, (model, spec) in enumerate(zip(config.models, specs)):
            cost = ModelCost(model, spec.kind, resumed_pairs=checkpoint.done(m))
            wall, cpu = time.perf_counter(), cpu_seconds()
            if len(specs) > 1:
                bar.set_description(f"judging ({m + 1}/{len(specs)} {Path(model).name})")
            if checkpoint.done(m) < len(records):
                workers = useful_workers(config.workers, len(records) - checkpoint.done(m), config.block_size)
                loading = time.perf_counter()
                # one pool per model, kept across the checkpointed chunks: each worker loads the model once
                with ScoringPool(partial(build_scorer, spec), workers, spec.config.num_threads) as pool:
                    if workers == 1:
                        cost.load_s = time.perf_counter() - loading
                    for start in range(checkpoint.done(m), len(records), chunk):
                        part = records[start : start + chunk]
                        result = pool.score(part, config.block_size, on_block=bar.update)
                        checkpoint.append(m, start, result.logits)
                        cost.pairs_scored += len(part)
            cost.wall_s, cost.cpu_s = time.perf_counter() - wall, cpu_seconds() - cpu
            costs.append(cost)
            parts = checkpoint.logits[m]
            logits = np.concatenate(parts) if parts else np.zeros((0, len(spec.scheme)), dtype=np.float32)
            probs.append(softmax(logits))  # the stored logits already hold the model's calibration
    return probs, costs


# -------------------------------------------------------------------------------------------------- the entry
@dataclass
class JudgeReport:
    """What `judge` wrote and what it cost."""

    out: Path
    pairs: int
    scheme: LabelScheme
    low_confidence: int
    disagreements: int
    review: Path | None
    reviewed: int
    cost_file: Path
    cost: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def judge(config: JudgeConfig, records: Sequence[Record], *, specs: Sequence[ScorerSpec] | None = None,
          default_scheme: LabelScheme | str | None = None) -> JudgeReport:
    """Label `records` (their labels, if any, are ignored) with `config.models` and write the labels file, the review
    file (with a budget), the cost file and, with a shard, the shard sidecar. `specs`: from `committee_specs`
    when the caller already built them; `default_scheme`: the scheme of models whose manifest names none."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    if not records:
        raise DataError("no pairs to judge")
    specs = list(specs) if specs is not None else committee_specs(config, default_scheme)
    scheme = specs[0].scheme
    notes = []
    selected = select_shard(list(records), config.shard, config.block_size)
    checkpoint = ScoreCheckpoint(partial_path(config.out), run_fingerprint(specs, selected, config.block_size),
                                 len(specs), len(selected))
    if checkpoint.note:
        notes.append(checkpoint.note)
    probs, costs = score_committee(config, specs, selected, checkpoint)
    rows = judgements([r.id for r in selected], scheme.labels, probs, config.weight_vector(),
                      min_confidence=config.min_confidence, model_names=config.models)
    count = write_labels(config.out, rows, selected, scheme, config.labels_format)
    if config.shard is not None:
        write_shard_info(config.out, config.shard, [r.id for r in records], config.block_size)
    else:
        shard_info_path(config.out).unlink(missing_ok=True)  # a stale sidecar would let `lref merge` take this file
    review, reviewed = None, 0
    if config.budget:
        budget = config.budget
        if budget > len(rows):
            notes.append(f"--budget {budget} is more than the {len(rows)} pairs judged: all {len(rows)} go to review")
            budget = len(rows)
        review = review_path(config)
        reviewed = write_jsonl(review, select_for_review(rows, selected, budget))
    checkpoint.remove()
    wall_s, cpu_s = time.perf_counter() - wall, cpu_seconds() - cpu
    cost = {
        "pairs": len(selected),
        "models": [c.to_dict() for c in costs],
        "wall_s": round(wall_s, 3),
        "cpu_s": round(cpu_s, 3),
        **rates(len(selected), wall_s, cpu_s),
        "resumed_pairs": sum(c.resumed_pairs for c in costs),
        "workers": config.workers,
        "threads": specs[0].config.num_threads,
        "cores": available_cores(),
        "shard": config.shard,
        "machine": machine_info(),
    }
    cost_file = cost_path(config.out)
    write_json(cost_file, cost)
    return JudgeReport(Path(config.out), count, scheme, sum(r["low_confidence"] for r in rows),
                       sum(r["disagreement"] for r in rows), review, reviewed, cost_file, cost, notes)


__all__ = ["DEFAULT_MIN_CONFIDENCE", "JudgeConfig", "JudgeReport", "ModelCost", "OUTPUT_FORMATS", "ScoreCheckpoint",
           "committee_specs", "cost_path", "grade", "judge", "judgements", "margin", "partial_path", "query_id",
           "read_pool", "review_order", "review_path", "select_for_review", "write_labels"]
