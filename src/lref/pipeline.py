"""`lref run CONFIG.yaml`: baselines and the LREF chain from one YAML config into one resumable run directory.

The config names the data, the models, the settings of each stage and the seed::

    run_dir: runs/demo
    seed: 0
    model: gemma-3-270m          # the LLM of llm-base and of the LREF chain
    data: {format: homedepot, train: data/train.csv, eval: data/dev.csv, scheme: graded3}
    eval: {bootstrap: 1000}
    stages:                      # a stage runs when it is listed; its keys are its config dataclass's fields
      lexical: {}
      bert: {model: minilm-l6, epochs: 1}
      select: {im_sample: 2000}
      sft: {learning_rate: 2.0e-4}
      dpo: {beta: 0.1}

Stages, in run order (`STAGES`): the baselines `lexical`, `zero-shot`, `bert` (a cross-encoder on all training
data), `llm-base` (LoRA SFT on all training data), then the chain `select` -> `sft` (on the selected pairs, or all
pairs without `select`) -> `cot` (EE, RA, DR) -> `dpo` -> `distill`. Each chain stage starts from the model the
previous chain stage wrote; the first chain stage listed (usually `sft`) starts from the base `model`, or, with
`start_from: llm-base`, continues training the llm-base adapter (`sft` on the selected pairs; `cot` without `sft`
on CoT examples of the selected pairs). Besides its dataclass fields every trained stage takes
`pairs` (train on a seeded sample of that many of its input pairs). `scheme`, `output_dir` and `resume` are set by
the pipeline, and so is `model` (`teacher` for distill) of the chain stages; `seed` defaults to the top-level seed.

Validation happens before anything runs: unknown keys and bad values are refused with the key's path
(`stages.sft.learning_rate: expected a number, got 'fast'`). Data paths are relative to the config file;
`run_dir` is relative to the working directory.

Run directory::

    run.log                       everything logged, every run appended
    config.yaml                   the config as loaded (resolved paths)
    results.json                  every evaluated system's metrics on the held-out split
    stages/<stage>/manifest.json  status, config hash, input hashes, versions, metrics, wall time, peak memory
    stages/<stage>/model/         what the stage trained (adapters, encoder, lexical model, selection files)
    stages/<stage>/predictions[_<system>].jsonl, metrics[_<system>].json

Resuming: a stage whose manifest is `done` with the same config and input hashes is skipped (its evaluation is
redone alone when only the `eval` settings changed). A changed stage runs again, and so does every stage
downstream of it, since their inputs carry its hash. A stage that failed or was killed restarts from its
trained checkpoints (the stages' own `resume`). `--from STAGE` forces that stage and every later one to run
afresh; `--only` runs the named stages (their upstream must have finished).

Every evaluation scores the same held-out split (`data.eval`, or a by-query split of `data.train`), never training
pairs; ids shared with the training data are refused.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import logging
import os
import random
import resource
import shutil
import sys
import time
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lref.data.records import DataError, Record

logger = logging.getLogger(__name__)

STAGES = ("lexical", "zero-shot", "bert", "llm-base", "select", "sft", "cot", "dpo", "distill")
CHAIN = ("sft", "cot", "dpo", "distill")
CHAIN_STARTS = ("model", "llm-base")
RESULTS_NAME = "results.json"
MANIFEST = "manifest.json"
LOG_NAME = "run.log"
_UNSET = "<set by the pipeline>"
_NOT_HASHED = ("resume", "progress", "threads", "logging_steps")
"""Fields that change how a stage runs, not what it produces: changing them does not re-run the stage."""


class ConfigError(ValueError):
    """A pipeline config that cannot run; the message starts with the path of the offending key."""


@dataclass
class DataConfig:
    """Where the labelled pairs come from and which of them are held out for evaluation."""

    format: str = field(
        default="auto",
        metadata={"help": "Reader: auto (by extension), jsonl, csv, parquet, homedepot, esci, wands, crowdflower, or "
                  "synthetic (the generated catalog; see `synthetic`)."},
    )
    train: str | None = field(default=None, metadata={"help": "Training pairs (path relative to the config file)."})
    eval: str | None = field(
        default=None,
        metadata={"help": "Held-out evaluation pairs; without it, `eval_fraction` of the training queries is held out."},
    )
    scheme: str | None = field(default=None, metadata={"help": "Label scheme preset; default: the format's own."})
    options: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "Reader options, e.g. {encoding: latin-1} or {locale: us}."}
    )
    synthetic: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "SyntheticCatalogConfig fields for format synthetic, e.g. {n_pairs: 3000, label_noise: 0.05}."},
    )
    eval_fraction: float = field(
        default=0.2, metadata={"help": "Share of queries held out when `eval` is not given (split by query)."}
    )
    train_pairs: int | None = field(
        default=None, metadata={"help": "Use a seeded random sample of this many training pairs (None: all)."}
    )
    eval_pairs: int | None = field(
        default=None, metadata={"help": "Evaluate on a seeded random sample of this many held-out pairs (None: all)."}
    )
    match_hints: bool = field(
        default=False,
        metadata={"help": "Add a line naming the query words found, close or missing in the product text to every "
                  "pair (`lref.prompts.match_hint`), for every system but lexical; the models record it and "
                  "`lref predict` / `lref serve student` add it too."},
    )

    def __post_init__(self) -> None:
        if self.format != "synthetic" and not self.train:
            raise ValueError("train: name the training file (or use format: synthetic)")
        if not 0 < self.eval_fraction < 1:
            raise ValueError(f"eval_fraction must lie in (0, 1), not {self.eval_fraction}")
        for name in ("train_pairs", "eval_pairs"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1 or null, not {getattr(self, name)}")


@dataclass
class EvalSettings:
    """How every system is scored on the held-out split."""

    bootstrap: int = field(default=1000, metadata={"help": "Bootstrap resamples over queries for the 95% intervals."})
    batch_size: int = field(default=16, metadata={"help": "Pairs per forward pass when scoring."})
    max_length: int = field(default=512, metadata={"help": "Most prompt tokens per pair for LLM scoring."})
    threads: int | None = field(default=None, metadata={"help": "CPU threads for scoring (default: torch's choice)."})
    progress: bool = field(default=True, metadata={"help": "Show scoring progress bars."})

    def __post_init__(self) -> None:
        if self.bootstrap < 0:
            raise ValueError(f"bootstrap must be >= 0, not {self.bootstrap}")
        for name in ("batch_size", "max_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")


@dataclass
class ZeroShotConfig:
    """The untuned instruction model scored directly (the optimistic-bias baseline)."""

    model: str = field(
        default="qwen2.5-0.5b-instruct",
        metadata={"help": "Model to score without tuning: a zoo name or HF folder. A zoo model whose packages are not "
                  "installed is skipped with a message."},
    )


@dataclass
class PipelineConfig:
    """The whole run. `stages` maps a stage name to its config object."""

    run_dir: str = field(default="runs/lref", metadata={"help": "Run directory (relative to the working directory)."})
    seed: int = field(default=0, metadata={"help": "Seed of the samples and the default seed of every stage."})
    model: str = field(default="gemma-3-270m", metadata={"help": "The LLM of llm-base and of the LREF chain."})
    data: DataConfig = field(default_factory=lambda: DataConfig(format="synthetic"), metadata={"help": "The data."})
    eval: EvalSettings = field(default_factory=EvalSettings, metadata={"help": "Scoring and metrics."})
    stages: dict[str, Any] = field(default_factory=dict, metadata={"help": "Stage name -> settings."})
    pairs: dict[str, int | None] = field(default_factory=dict, metadata={"help": "Stage name -> training sample."})
    calibration: Any = field(
        default=None,
        metadata={"help": "lref.calibration.CalibrationConfig, or None: no label-prior calibration. With it, "
                  "`calibration_pairs` training pairs (whole queries) are held out of every stage and each system's "
                  "per-label bias is fitted on them, stored beside its model and applied to its evaluation."},
    )
    calibration_pairs: int | None = field(default=None, metadata={"help": "Pairs held out for calibration."})
    chain_start: str = field(
        default="model",
        metadata={"help": "What the first chain stage listed (sft; without sft, cot; and so on) starts from: 'model' "
                  "(the base LLM, as in the paper) or 'llm-base' (continue the llm-base adapter on that stage's "
                  "data)."},
    )
    source: str | None = None


# ---------------------------------------------------------------------------------------------------------------------
# Stage settings: which dataclass, which fields the pipeline owns


def _stage_class(name: str) -> type:
    if name == "lexical":
        from lref.baselines.lexical import LexicalConfig

        return LexicalConfig
    if name == "zero-shot":
        return ZeroShotConfig
    if name == "bert":
        from lref.models.cross_encoder import CrossEncoderConfig

        return CrossEncoderConfig
    if name in ("llm-base", "sft"):
        from lref.stages.sft import SFTStageConfig

        return SFTStageConfig
    if name == "select":
        from lref.stages.select import SelectConfig

        return SelectConfig
    if name == "cot":
        from lref.stages.cot import CoTConfig

        return CoTConfig
    if name == "dpo":
        from lref.stages.dpo import DPOStageConfig

        return DPOStageConfig
    if name == "distill":
        from lref.stages.distill import DistillConfig

        return DistillConfig
    raise KeyError(name)


def _owned_fields(name: str) -> tuple[str, ...]:
    """Fields the pipeline sets; a config that sets them is refused."""
    owned = ("scheme", "output_dir", "resume")
    if name in ("sft", "cot", "dpo"):
        owned += ("model",)
    if name == "distill":
        owned += ("teacher",)
    return owned


def _field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _build(cls: type, values: dict[str, Any], path: str, **owned: Any):
    """Construct dataclass `cls` from YAML `values`: unknown keys, wrong types and refused values name `path.key`."""
    names = _field_names(cls)
    for key in values:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{path}.{key}: unknown key{hint}; known: {', '.join(names)}")
    hints = typing.get_type_hints(cls)
    checked = {key: _check_type(value, hints[key], f"{path}.{key}") for key, value in values.items()}
    kwargs = {**checked, **{k: v for k, v in owned.items() if k in names}}
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as error:
        message = str(error)
        key = next((name for name in names if message.startswith(name)), None)
        key = key or next((name for name in names if f"{name} " in message or f"{name}:" in message), None)
        raise ConfigError(f"{path}.{key}: {message}" if key else f"{path}: {message}") from None


def _check_type(value: Any, hint: Any, path: str) -> Any:
    """Check (and lightly coerce) a YAML value against a dataclass field's type hint."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _check_type(value, option, path)
            except ConfigError as error:
                errors.append(str(error).split(": ", 1)[1])
        raise ConfigError(f"{path}: " + " or ".join(dict.fromkeys(errors)))
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected a whole number, got {value!r}")
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads 2e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{path}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{path}: expected a string, got {value!r}")
    if origin in (list, tuple) or hint in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        args = typing.get_args(hint)
        item = args[0] if args else Any
        items = [_check_type(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple or hint is tuple else items
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return value
    return value


def parse_config(raw: dict[str, Any], source: str | Path | None = None) -> PipelineConfig:
    """Validate a config mapping (as read from YAML) into a PipelineConfig; relative data paths resolve against the
    folder of `source`."""
    if not isinstance(raw, dict):
        raise ConfigError(f"the config must be a mapping of keys, got {type(raw).__name__}")
    top = ("run_dir", "seed", "model", "data", "eval", "calibration", "stages")
    for key in raw:
        if key not in top:
            close = difflib.get_close_matches(str(key), top, n=1)
            raise ConfigError(f"{key}: unknown key{f' (did you mean {close[0]!r}?)' if close else ''}; known: "
                              f"{', '.join(top)}")
    base = Path(source).resolve().parent if source else Path.cwd()
    seed = _check_type(raw.get("seed", 0), int, "seed")
    model = _check_type(raw.get("model", "gemma-3-270m"), str, "model")
    run_dir = _check_type(raw.get("run_dir", "runs/lref"), str, "run_dir")
    data_raw = raw.get("data")
    if not isinstance(data_raw, dict):
        raise ConfigError("data: expected a mapping with at least `train` (or format: synthetic)")
    data = _build(DataConfig, data_raw, "data")
    for key in ("train", "eval"):
        value = getattr(data, key)
        if value is not None and not Path(value).is_absolute():
            setattr(data, key, str((base / value).resolve()))
    if data.format == "synthetic":
        from lref.data.synthetic import SyntheticCatalogConfig

        _build(SyntheticCatalogConfig, data.synthetic, "data.synthetic")
        if data.eval:
            raise ConfigError("data.eval: format synthetic holds out eval_fraction of the generated queries instead")
    elif data.synthetic:
        raise ConfigError("data.synthetic: only for format: synthetic")
    for key in ("train", "eval"):
        value = getattr(data, key)
        if value is not None and data.format != "synthetic" and not Path(value).exists():
            raise ConfigError(f"data.{key}: no such file or folder: {value}")
    eval_raw = raw.get("eval") or {}
    if not isinstance(eval_raw, dict):
        raise ConfigError("eval: expected a mapping")
    eval_settings = _build(EvalSettings, eval_raw, "eval")
    calibration, calibration_pairs = _calibration_settings(raw.get("calibration"))
    stages_raw = raw.get("stages")
    if not isinstance(stages_raw, dict) or not stages_raw:
        raise ConfigError(f"stages: expected a mapping naming at least one of {', '.join(STAGES)}")
    scheme = _scheme_name(data)
    stages, pairs = {}, {}
    chain_start = "model"
    first_chain = next((name for name in CHAIN if name in stages_raw), None)
    for name, values in stages_raw.items():
        path = f"stages.{name}"
        if name not in STAGES:
            close = difflib.get_close_matches(str(name), STAGES, n=1)
            raise ConfigError(f"{path}: unknown stage{f' (did you mean {close[0]!r}?)' if close else ''}; stages: "
                              f"{', '.join(STAGES)}")
        values = dict(values or {})
        if not isinstance(stages_raw[name] or {}, dict):
            raise ConfigError(f"{path}: expected a mapping of settings (or {{}})")
        try:
            cls = _stage_class(name)
        except ImportError as error:
            raise ConfigError(f"{path}: this stage is not available ({error})") from None
        for key in _owned_fields(name):
            if key in values:
                raise ConfigError(f"{path}.{key}: set by the pipeline; remove it")
        if "pairs" in values:
            if name in ("zero-shot",):
                raise ConfigError(f"{path}.pairs: zero-shot trains nothing")
            pairs[name] = _check_type(values.pop("pairs"), int | None, f"{path}.pairs")
            if pairs[name] is not None and pairs[name] < 1:
                raise ConfigError(f"{path}.pairs: must be at least 1 or null, got {pairs[name]}")
        if "start_from" in values:
            if name != first_chain:
                raise ConfigError(f"{path}.start_from: only the first chain stage listed ({first_chain or 'none'}) "
                                  "takes it")
            chain_start = _check_type(values.pop("start_from"), str, f"{path}.start_from")
            if chain_start not in CHAIN_STARTS:
                raise ConfigError(f"{path}.start_from: expected one of {', '.join(CHAIN_STARTS)}, got {chain_start!r}")
            if chain_start == "llm-base" and "llm-base" not in stages_raw:
                raise ConfigError(f"{path}.start_from: llm-base is not among the stages; add it or remove this key")
        if "seed" in _field_names(cls):
            values.setdefault("seed", seed)
        if name == "llm-base":
            values.setdefault("model", model)
        owned = {"scheme": scheme, "output_dir": _UNSET, "model": _UNSET, "teacher": _UNSET}
        stages[name] = _build(cls, values, path, **{k: owned[k] for k in _owned_fields(name) if k in owned})
    stages = {name: stages[name] for name in STAGES if name in stages}
    return PipelineConfig(run_dir=run_dir, seed=seed, model=model, data=data, eval=eval_settings, stages=stages,
                          pairs=pairs, calibration=calibration, calibration_pairs=calibration_pairs,
                          chain_start=chain_start, source=str(source) if source else None)


def _calibration_settings(raw: Any) -> tuple[Any, int | None]:
    """`calibration: {pairs: N, objective: ...}` -> (CalibrationConfig, N); absent or null -> (None, None)."""
    from lref.calibration import CalibrationConfig

    if raw is None:
        return None, None
    if not isinstance(raw, dict):
        raise ConfigError("calibration: expected a mapping such as {pairs: 1000}")
    values = dict(raw)
    if "pairs" not in values:
        raise ConfigError("calibration.pairs: how many training pairs to hold out for calibration (e.g. 1000)")
    pairs = _check_type(values.pop("pairs"), int, "calibration.pairs")
    config = _build(CalibrationConfig, values, "calibration")
    if pairs < config.min_pairs:
        raise ConfigError(f"calibration.pairs: {pairs} is fewer than min_pairs ({config.min_pairs})")
    return config, pairs


def load_config(path: str | Path) -> PipelineConfig:
    """Read and validate a pipeline YAML file."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such config file: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from None
    try:
        return parse_config(raw, path)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None


def _scheme_name(data: DataConfig) -> str:
    from lref.data import default_scheme
    from lref.labels import get_scheme

    if data.scheme:
        try:
            return get_scheme(data.scheme).name
        except ValueError as error:
            raise ConfigError(f"data.scheme: {error}") from None
    if data.format == "synthetic":
        return str(data.synthetic.get("scheme", "graded3"))
    try:
        return default_scheme(data.format).name
    except DataError as error:
        raise ConfigError(f"data.format: {error}") from None


# ---------------------------------------------------------------------------------------------------------------------
# Data


@dataclass
class RunData:
    train: list[Record]
    eval: list[Record]
    scheme: str
    train_hash: str
    eval_hash: str
    calibration: list[Record] = field(default_factory=list)
    calibration_hash: str | None = None


def _sample(records: list[Record], n: int | None, seed: int, tag: str) -> list[Record]:
    if n is None or n >= len(records):
        return list(records)
    chosen = sorted(random.Random(f"{seed}-{tag}").sample(range(len(records)), n))
    return [records[i] for i in chosen]


def load_data(config: PipelineConfig) -> RunData:
    """The training pairs and the held-out evaluation pairs, sampled as configured; refuses overlapping ids."""
    from lref.data import load_records, split_by_query
    from lref.fingerprint import data_hash

    data, scheme = config.data, _scheme_name(config.data)
    if data.format == "synthetic":
        from lref.data.synthetic import SyntheticCatalogConfig, generate_catalog

        settings = {"scheme": scheme, "seed": config.seed, **data.synthetic}
        train = generate_catalog(SyntheticCatalogConfig(**settings))
    else:
        train = load_records(data.train, data.format, scheme=scheme, **data.options)
    if data.eval:
        held_out = load_records(data.eval, data.format, scheme=scheme, **data.options)
    else:
        split = split_by_query(train, {"train": 1 - data.eval_fraction, "eval": data.eval_fraction}, seed=config.seed)
        train, held_out = split["train"], split["eval"]
    calibration: list[Record] = []
    if config.calibration_pairs:
        train, calibration = _hold_out_calibration(train, config.calibration_pairs, config.seed)
    train = _sample(train, data.train_pairs, config.seed, "train")
    held_out = _sample(held_out, data.eval_pairs, config.seed, "eval")
    if not train or not held_out:
        raise DataError(f"need training and evaluation pairs, got {len(train)} and {len(held_out)}")
    shared = {r.id for r in train} & {r.id for r in held_out}
    if shared:
        raise DataError(f"{len(shared)} evaluation ids also occur in the training data (e.g. {sorted(shared)[:3]}); "
                        "the evaluation split must be held out")
    shared = {r.id for r in calibration} & {r.id for r in held_out}
    if shared:
        raise DataError(f"{len(shared)} evaluation ids also occur among the calibration pairs (e.g. "
                        f"{sorted(shared)[:3]}); the evaluation split must be held out")
    for name, records in (("evaluation", held_out), ("calibration", calibration)):
        unlabelled = [r.id for r in records if r.label is None]
        if unlabelled:
            raise DataError(f"{len(unlabelled)} {name} pairs have no label (e.g. {unlabelled[0]!r})")
    if data.match_hints:
        from lref.prompts import with_match_hints

        train, held_out, calibration = (with_match_hints(records) for records in (train, held_out, calibration))

    def digest(records: list[Record]) -> str:
        # The hint changes every input text, so it changes every downstream fingerprint; off, hashes stay as before.
        return _hash([data_hash(records), "match-hints"]) if data.match_hints else data_hash(records)

    return RunData(train, held_out, scheme, digest(train), digest(held_out), calibration,
                   digest(calibration) if calibration else None)


def _hold_out_calibration(train: list[Record], n: int, seed: int) -> tuple[list[Record], list[Record]]:
    """Whole queries moved out of `train` until `n` pairs are held out (the last query's surplus pairs are dropped,
    so no calibration query keeps pairs in training)."""
    from lref.data import split_by_query

    if n >= len(train) // 2:
        raise DataError(f"calibration.pairs: {n} would hold out half or more of the {len(train)} training pairs")
    share = 1.25 * n / len(train)
    while True:  # few, large queries can leave the first draw short: widen it
        # Its own draw: with the eval split's seed, the calibration side would be exactly the queries eval took.
        split = split_by_query(train, {"train": 1 - share, "calibration": share}, seed=f"{seed}-calibration")
        if len(split["calibration"]) >= n or share >= 0.5:
            break
        share = min(0.5, share * 1.25)
    if len(split["calibration"]) < n:
        raise DataError(f"calibration.pairs: only {len(split['calibration'])} pairs fell to the calibration "
                        f"queries, fewer than {n}; lower it")
    return split["train"], _sample(split["calibration"], n, seed, "calibration")


# ---------------------------------------------------------------------------------------------------------------------
# Stage runners: each returns {"outputs": {...}, "systems": {system: {"kind": ..., "ref": ...}}}


@dataclass
class StageContext:
    name: str
    config: Any
    """The stage's config object, pipeline-owned fields filled in."""
    data: RunData
    stage_dir: Path
    records: list[Record]
    """The stage's training input."""
    upstream: dict[str, Any]
    """Outputs of the chain stage before this one (model, records) and of `select`."""
    resume: bool


def _with(config: Any, **values: Any):
    names = _field_names(type(config))
    return dataclasses.replace(config, **{k: v for k, v in values.items() if k in names})


def _run_lexical(ctx: StageContext) -> dict[str, Any]:
    from lref.baselines.lexical import LexicalModel

    folder = ctx.stage_dir / "model"
    LexicalModel(ctx.config).fit(ctx.records).save(folder)
    return {"outputs": {"model": str(folder)}, "systems": {"lexical": {"kind": "lexical", "ref": str(folder)}}}


def _run_zero_shot(ctx: StageContext) -> dict[str, Any]:
    from lref.models import zoo

    name = ctx.config.model
    if name in zoo.MODELS and not zoo.is_installed(name):
        return {"skipped": f"{name} is not installed ({zoo.install_command(name)}; or `make models`)"}
    return {"outputs": {"model": name}, "systems": {"zero-shot": {"kind": "llm", "ref": name}}}


def _run_bert(ctx: StageContext) -> dict[str, Any]:
    from lref.models.cross_encoder import train_cross_encoder

    folder = train_cross_encoder(ctx.config, ctx.records)
    return {"outputs": {"model": str(folder)}, "systems": {"bert": {"kind": "encoder", "ref": str(folder)}}}


def _run_sft(ctx: StageContext) -> dict[str, Any]:
    from lref.stages.sft import train_sft

    folder = train_sft(ctx.config, ctx.records)
    return {"outputs": {"model": str(folder)}, "systems": {ctx.name: {"kind": "llm", "ref": str(folder)}}}


def _run_select(ctx: StageContext) -> dict[str, Any]:
    from lref.data.readers import write_records
    from lref.stages.select import REPORT_NAME, select

    teacher = None
    if ctx.config.use_ms and ctx.config.confusion_source == "teacher":
        from lref.teachers.rules import RulesTeacher

        teacher = RulesTeacher().fit(ctx.records).confusable
    result = select(ctx.config, ctx.records, teacher=teacher)
    selected = ctx.stage_dir / "selected.jsonl"
    write_records(selected, result.selected)
    return {"outputs": {"records": str(selected), "report": str(Path(ctx.config.output_dir) / REPORT_NAME),
                        "selected": len(result.selected)}, "systems": {}}


def _run_cot(ctx: StageContext) -> dict[str, Any]:
    from lref.stages.cot import train_cot

    # the direct examples come from the training pairs before selection, which carry the traffic's label mix
    adapters = train_cot(ctx.config, ctx.records, direct_pool=ctx.data.train)
    systems = {f"cot-{task}": {"kind": "llm", "ref": str(folder)} for task, folder in adapters.items()}
    last = list(adapters.values())[-1] if adapters else ctx.config.model
    return {"outputs": {"model": str(last), "adapters": {k: str(v) for k, v in adapters.items()}}, "systems": systems}


def _run_dpo(ctx: StageContext) -> dict[str, Any]:
    from lref.stages.dpo import train_dpo

    folder = train_dpo(ctx.config, ctx.records)
    return {"outputs": {"model": str(folder)}, "systems": {"dpo": {"kind": "llm", "ref": str(folder)}}}


def _run_distill(ctx: StageContext) -> dict[str, Any]:
    from lref.stages.distill import distill

    folder = distill(ctx.config, ctx.records)
    return {"outputs": {"model": str(folder)}, "systems": {"distill": {"kind": "encoder", "ref": str(folder)}}}


RUNNERS: dict[str, Callable[[StageContext], dict[str, Any]]] = {
    "lexical": _run_lexical, "zero-shot": _run_zero_shot, "bert": _run_bert, "llm-base": _run_sft,
    "select": _run_select, "sft": _run_sft, "cot": _run_cot, "dpo": _run_dpo, "distill": _run_distill,
}
SYSTEM_TITLES = {
    "lexical": "lexical (features + GBDT)", "zero-shot": "zero-shot LLM", "bert": "BERT cross-encoder",
    "llm-base": "LLM SFT, all data", "sft": "+ selection (SFT)", "cot-ee": "+ EE", "cot-ra": "+ RA", "cot-dr": "+ DR",
    "dpo": "+ DPO", "distill": "distilled student",
}


# ---------------------------------------------------------------------------------------------------------------------
# Evaluation


def make_scorer(kind: str, ref: str, scheme: str, settings: EvalSettings):
    """An object with `.score(records) -> ScoreResult` for a system of `kind` llm, encoder or lexical."""
    from lref.models.scorer import ScorerConfig

    scorer_config = ScorerConfig(batch_size=settings.batch_size, max_length=settings.max_length,
                                 progress=settings.progress, num_threads=settings.threads)
    if kind == "lexical":
        from lref.baselines.lexical import LexicalModel

        return LexicalModel.load(ref)
    if kind == "encoder":
        from lref.models.cross_encoder import CrossEncoderScorer

        return CrossEncoderScorer.from_pretrained(ref, scheme, dataclasses.replace(scorer_config, max_length=min(
            settings.max_length, 512)))
    from lref.models.loading import load_causal_lm
    from lref.models.scorer import LabelScorer, for_model, scheme_for_model

    model, tokenizer, manifest = load_causal_lm(ref, device="auto")
    return LabelScorer(model, tokenizer, scheme_for_model(manifest, scheme), for_model(scorer_config, manifest))


def system_calibration_path(system: str, ref: str, out_dir: Path) -> Path:
    """Where a system's calibration lives: in its model folder when the run made that folder (so `lref predict` on
    it applies it), else `calibration_<system>.json` in the stage folder (never inside a shared zoo model)."""
    from lref.calibration import calibration_path

    folder = Path(ref).resolve()
    if folder.is_dir() and folder.is_relative_to(out_dir.resolve()):
        return calibration_path(folder)
    return out_dir / f"calibration_{system}.json"


def evaluate_system(system: str, kind: str, ref: str, data: RunData, settings: EvalSettings, out_dir: Path,
                    seed: int = 0, calibration: Any = None) -> dict[str, Any]:
    """Score the held-out split, write `predictions_<system>.jsonl` and `metrics_<system>.json`, return metrics.

    With a CalibrationConfig and `data.calibration` pairs, the system's label bias is first fitted on those pairs and
    stored (`system_calibration_path`); the metrics are then those of the calibrated scores, and
    `metrics["calibration"]` holds the bias and the uncalibrated headline figures."""
    from lref.calibration import calibrate_scores
    from lref.io import write_json
    from lref.metrics import evaluate
    from lref.models.scorer import ScoreResult
    from lref.predictions import write_predictions

    scorer = make_scorer(kind, ref, data.scheme, settings)
    started = time.perf_counter()
    result = scorer.score(data.eval)
    seconds = time.perf_counter() - started
    stored = system_calibration_path(system, ref, out_dir)
    document = None
    if calibration is not None and data.calibration:
        document = calibrate_scores(scorer.score(data.calibration).logits, data.calibration, data.scheme, calibration)
        write_json(stored, document)
        raw = evaluate(data.eval, result.predictions(), data.scheme, bootstrap=0)
        document = {**document, "path": str(stored), "uncalibrated": {k: raw[k] for k in _CALIBRATION_KEYS}}
        result = ScoreResult(result.ids, result.labels, result.logits, result.top_k, list(document["bias"].values()))
    else:
        stored.unlink(missing_ok=True)  # a calibration from an earlier evaluation must not outlive it
    predictions = result.predictions()
    write_predictions(out_dir / f"predictions_{system}.jsonl", predictions)
    metrics = evaluate(data.eval, predictions, data.scheme, bootstrap=settings.bootstrap, seed=seed)
    metrics.update(system=system, kind=kind, model=ref, eval_seconds=round(seconds, 3),
                   pairs_per_s=round(len(data.eval) / seconds, 2) if seconds > 0 else None)
    if document is not None:
        metrics["calibration"] = document
    write_json(out_dir / f"metrics_{system}.json", metrics)
    return metrics


_CALIBRATION_KEYS = ("accuracy", "macro_f1", "weighted_f1", "over_estimate_share")


# ---------------------------------------------------------------------------------------------------------------------
# The run


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    from lref.fingerprint import library_versions

    versions = library_versions()
    for name in ("trl", "scikit-learn"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return versions


def _peak_memory_mb() -> dict[str, float]:
    peak = {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        peak["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return peak


def read_manifest(stage_dir: Path) -> dict[str, Any] | None:
    """A stage's manifest, its recorded paths read under the run dir it is in now (`_relocated`)."""
    path = stage_dir / MANIFEST
    if not path.is_file():
        return None
    manifest = json.loads(path.read_text())
    return _relocated(stage_dir, manifest, manifest)


def _relocated(stage_dir: Path, recorded: Any, manifest: dict[str, Any] | None = None) -> Any:
    """`recorded` (a stage's manifest or metrics) with the paths under the run dir the stage ran in rewritten to the
    run dir it is in now: a run dir that was moved or copied keeps working (fingerprints hold no paths). `manifest`
    is the stage's manifest as written (read from `stage_dir` when not given)."""
    if manifest is None:
        manifest = json.loads((stage_dir / MANIFEST).read_text())
    output_dir = (manifest.get("config") or {}).get("output_dir")  # the pipeline fills in <run dir>/stages/<name>/model
    if not output_dir:
        return recorded
    old, new = str(Path(output_dir).parents[2]), str(stage_dir.absolute().parents[1])
    if old == new:
        return recorded

    def moved(value: Any) -> Any:
        if isinstance(value, str) and (value == old or value.startswith(old + os.sep)):
            return new + value[len(old):]
        if isinstance(value, dict):
            return {key: moved(item) for key, item in value.items()}
        if isinstance(value, list):
            return [moved(item) for item in value]
        return value

    return moved(recorded)


def _stage_settings(config: Any) -> dict[str, Any]:
    return {k: v for k, v in asdict(config).items() if k not in _NOT_HASHED and v != _UNSET}


class Pipeline:
    """Runs a PipelineConfig's stages in order into `run_dir`; see the module docs."""

    def __init__(self, config: PipelineConfig, run_dir: str | Path | None = None, echo: Callable[[str], None] = print):
        self.config = config
        self.run_dir = Path(run_dir or config.run_dir)
        self.echo = echo

    def stage_dir(self, name: str) -> Path:
        return self.run_dir / "stages" / name

    def run(self, from_stage: str | None = None, only: Sequence[str] | None = None) -> dict[str, Any]:
        """Run the enabled stages; returns the results (also in `run_dir/results.json`)."""
        from lref.io import write_json

        names = list(self.config.stages)
        for option, given in (("--from", [from_stage] if from_stage else []), ("--only", list(only or []))):
            for name in given:
                if name not in names:
                    raise ConfigError(f"{option} {name}: not a stage of this config (stages: {', '.join(names)})")
        forced = set(names[names.index(from_stage):]) if from_stage else set()
        selected = [n for n in names if not only or n in only]
        self.run_dir.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(self.run_dir / LOG_NAME, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        previous_level = root.level
        root.addHandler(handler)
        root.setLevel(min(previous_level, logging.INFO) if previous_level else logging.INFO)
        try:
            if self.config.source:
                import yaml

                with_paths = {"source": self.config.source, "data": asdict(self.config.data)}
                (self.run_dir / "config.yaml").write_text(
                    Path(self.config.source).read_text(encoding="utf-8") + "\n# resolved:\n"
                    + "\n".join("# " + line for line in yaml.safe_dump(with_paths).splitlines()) + "\n")
            data = load_data(self.config)
            logger.info("data: %d training pairs, %d held-out pairs, scheme %s", len(data.train), len(data.eval),
                        data.scheme)
            self.echo(f"data: {len(data.train)} training pairs, {len(data.eval)} held-out pairs"
                      + (f", {len(data.calibration)} calibration pairs" if data.calibration else "")
                      + f" ({data.scheme})")
            done: dict[str, dict[str, Any]] = {}
            for index, name in enumerate(names, start=1):
                prefix = f"[{index}/{len(names)}] {name}"
                if name not in selected:
                    manifest = read_manifest(self.stage_dir(name))
                    if manifest and manifest.get("status") in ("done", "skipped"):
                        done[name] = manifest
                    continue
                done[name] = self._run_stage(name, data, done, force=name in forced, prefix=prefix)
                write_json(self.run_dir / RESULTS_NAME, self.results(data))
            return self.results(data)
        finally:
            root.removeHandler(handler)
            root.setLevel(previous_level)
            handler.close()

    # ---------------------------------------------------------------- one stage

    def _inputs(self, name: str, data: RunData, done: dict[str, dict[str, Any]]) -> tuple[list[Record], dict, dict]:
        """The stage's training records, the upstream outputs it starts from, and the hashes of its inputs."""
        from lref.data import load_records

        upstream: dict[str, Any] = {}
        inputs: dict[str, Any] = {"train": data.train_hash}
        records = data.train
        if name in CHAIN:
            before = [n for n in CHAIN[: CHAIN.index(name)] if n in self.config.stages]
            if before:
                previous = before[-1]
                if previous not in done or done[previous].get("status") != "done":
                    raise ConfigError(f"stage {name} needs {previous}, which has not finished: run it first")
                upstream["model"] = done[previous]["outputs"]["model"]
                inputs[previous] = done[previous]["fingerprint"]
            elif self.config.chain_start == "llm-base":
                if "llm-base" not in done or done["llm-base"].get("status") != "done":
                    raise ConfigError(f"stage {name} starts from llm-base (start_from), which has not finished: run "
                                      "it first")
                upstream["model"] = done["llm-base"]["outputs"]["model"]
                inputs["llm-base"] = done["llm-base"]["fingerprint"]
            else:
                upstream["model"] = self.config.model
            if name in ("sft", "cot") and "select" in self.config.stages:
                if "select" not in done or done["select"].get("status") != "done":
                    raise ConfigError(f"stage {name} needs select, which has not finished: run it first")
                records = load_records(done["select"]["outputs"]["records"], "jsonl", scheme=data.scheme)
                inputs["select"] = done["select"]["fingerprint"]
        records = _sample(records, self.config.pairs.get(name), self.config.seed, name)
        return records, upstream, inputs

    def _run_stage(self, name: str, data: RunData, done: dict[str, dict[str, Any]], force: bool,
                   prefix: str) -> dict[str, Any]:
        from lref.calibration import FIT_VERSION
        from lref.fingerprint import data_hash
        from lref.io import write_json

        stage_dir = self.stage_dir(name)
        records, upstream, inputs = self._inputs(name, data, done)
        inputs["records"] = data_hash(records)
        model_field = "teacher" if name == "distill" else "model"
        config = self.config.stages[name]
        filled = {"output_dir": str(stage_dir / "model")}
        if name in CHAIN:
            filled[model_field] = upstream["model"]
        config = _with(config, **filled)
        # The upstream model is hashed through the upstream fingerprint, not its path, so a moved run dir keeps.
        settings = _stage_settings(_with(config, output_dir=_UNSET, **{model_field: _UNSET} if name in CHAIN else {}))
        fingerprint = _hash({"stage": name, "config": settings, "pairs": self.config.pairs.get(name),
                             "inputs": inputs})
        eval_fingerprint = _hash({"eval": asdict(self.config.eval), "data": data.eval_hash, "seed": self.config.seed,
                                  **({"calibration": asdict(self.config.calibration), "fit": FIT_VERSION,
                                      "calibration_data": data.calibration_hash} if self.config.calibration else {})})
        previous = read_manifest(stage_dir)
        if previous and not force and previous.get("fingerprint") == fingerprint:
            if previous.get("status") == "skipped":
                self.echo(f"{prefix}: skipped ({previous['reason']})")
                return previous
            if previous.get("status") == "done":
                if previous.get("eval_fingerprint") == eval_fingerprint:
                    self.echo(f"{prefix}: unchanged, kept ({_headline(previous)})")
                    return previous
                self.echo(f"{prefix}: evaluation settings changed, re-evaluating")
                started = time.perf_counter()
                previous.update(metrics=self._evaluate(previous["systems"], data, stage_dir),
                                eval_fingerprint=eval_fingerprint)
                # wall_time_s stays the training run's; this says what scoring the new evaluation cost.
                previous["reevaluated"] = {
                    "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "wall_time_s": round(time.perf_counter() - started, 2)}
                write_json(stage_dir / MANIFEST, previous)
                return previous
        resume = bool(previous and not force and previous.get("fingerprint") == fingerprint
                      and previous.get("status") == "running")
        if not resume and stage_dir.exists():
            shutil.rmtree(stage_dir)
        stage_dir.mkdir(parents=True, exist_ok=True)
        config = _with(config, resume=resume)
        manifest: dict[str, Any] = {
            "stage": name, "status": "running", "fingerprint": fingerprint, "eval_fingerprint": eval_fingerprint,
            "config": asdict(config), "pairs": self.config.pairs.get(name), "n_train": len(records),
            "inputs": inputs, "upstream": upstream, "versions": _versions(),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "resumed": resume,
        }
        # A resumed stage keeps its first start and counts its interrupted attempts' time, so it reports what it cost.
        earlier_s = float(previous.get("interrupted_s") or 0.0) if resume else 0.0
        if resume:
            manifest.update(started=previous.get("started", manifest["started"]), resumed_at=manifest["started"],
                            interrupted_s=earlier_s)
        write_json(stage_dir / MANIFEST, manifest)
        self.echo(f"{prefix}: {'resuming' if resume else 'running'} on {len(records)} pairs")
        logger.info("stage %s: %s (fingerprint %s)", name, "resuming" if resume else "starting", fingerprint[:12])
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        context = StageContext(name, config, data, stage_dir, records, upstream, resume)
        try:
            result = RUNNERS[name](context)
        except BaseException:
            manifest["interrupted_s"] = round(earlier_s + time.perf_counter() - started, 2)
            write_json(stage_dir / MANIFEST, manifest)
            logger.exception("stage %s failed", name)
            self.echo(f"{prefix}: FAILED after {time.perf_counter() - started:.1f} s (see {self.run_dir / LOG_NAME})")
            raise
        train_seconds = earlier_s + time.perf_counter() - started
        if "skipped" in result:
            manifest.update(status="skipped", reason=result["skipped"])
            write_json(stage_dir / MANIFEST, manifest)
            self.echo(f"{prefix}: skipped ({result['skipped']})")
            logger.warning("stage %s skipped: %s", name, result["skipped"])
            return manifest
        manifest.update(outputs=result["outputs"], systems=result["systems"], train_seconds=round(train_seconds, 2))
        manifest["metrics"] = self._evaluate(result["systems"], data, stage_dir)
        manifest.update(status="done", wall_time_s=round(earlier_s + time.perf_counter() - started, 2),
                        **_peak_memory_mb(),
                        finished=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        write_json(stage_dir / MANIFEST, manifest)
        self.echo(f"{prefix}: done in {manifest['wall_time_s']:.1f} s ({_headline(manifest)})")
        return manifest

    def _evaluate(self, systems: dict[str, dict[str, str]], data: RunData, stage_dir: Path) -> dict[str, Any]:
        metrics = {}
        for system, spec in systems.items():
            result = evaluate_system(system, spec["kind"], spec["ref"], data, self.config.eval, stage_dir,
                                     self.config.seed, self.config.calibration)
            metrics[system] = {k: result[k] for k in _SUMMARY_KEYS if k in result}
            logger.info("%s: %s", system, _summary_line(result))
        return metrics

    # ---------------------------------------------------------------- results

    def results(self, data: RunData | None = None) -> dict[str, Any]:
        """All evaluated systems in stage order, with their full metrics, plus the selection funnel."""
        systems = []
        selection = None
        for name in STAGES:
            manifest = read_manifest(self.stage_dir(name))
            if not manifest:
                continue
            if name == "select" and manifest.get("status") == "done":
                report = Path(manifest["outputs"]["report"])
                if report.is_file():
                    selection = json.loads(report.read_text())
            if manifest.get("status") == "skipped":
                systems.append({"name": name, "title": SYSTEM_TITLES.get(name, name), "stage": name,
                                "skipped": manifest.get("reason")})
                continue
            if manifest.get("status") != "done":
                continue
            for system in manifest.get("systems", {}):
                path = self.stage_dir(name) / f"metrics_{system}.json"
                if path.is_file():
                    systems.append({"name": system, "title": SYSTEM_TITLES.get(system, system), "stage": name,
                                    "n_train": manifest.get("n_train"), "train_seconds": manifest.get("train_seconds"),
                                    "metrics": _relocated(self.stage_dir(name), json.loads(path.read_text()))})
        out: dict[str, Any] = {"run_dir": str(self.run_dir), "systems": systems}
        if data is not None:
            out["eval"] = {"pairs": len(data.eval), "hash": data.eval_hash, "train_pairs": len(data.train),
                           "calibration_pairs": len(data.calibration), "scheme": data.scheme}
        if selection is not None:
            out["selection"] = {k: selection.get(k) for k in ("pool_size", "selected", "selected_fraction", "rule",
                                                              "funnel", "conditions", "label_distribution")}
        return out


_SUMMARY_KEYS = ("n", "accuracy", "macro_f1", "weighted_f1", "rmse", "over_estimate_share", "under_estimate_share",
                 "ci95", "pairs_per_s", "calibration")


def _summary_line(metrics: dict[str, Any]) -> str:
    line = (f"acc {metrics['accuracy']:.3f}, macro-F1 {metrics['macro_f1']:.3f}, wF1 {metrics['weighted_f1']:.3f}, "
            f"over {metrics['over_estimate_share']:.3f}")
    if metrics.get("rmse") is not None:
        line += f", RMSE {metrics['rmse']:.3f}"
    return line


def _headline(manifest: dict[str, Any]) -> str:
    metrics = manifest.get("metrics") or {}
    if not metrics:
        outputs = manifest.get("outputs") or {}
        return f"{outputs['selected']} pairs selected" if "selected" in outputs else "no evaluation"
    return "; ".join(f"{system}: {_summary_line(m)}" for system, m in metrics.items())


def run_pipeline(config: PipelineConfig | str | Path, *, run_dir: str | Path | None = None,
                 from_stage: str | None = None, only: Sequence[str] | None = None,
                 echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Load (if a path) and run a pipeline config; returns the results written to `run_dir/results.json`."""
    if not isinstance(config, PipelineConfig):
        config = load_config(config)
    return Pipeline(config, run_dir, echo).run(from_stage=from_stage, only=only)


def config_reference() -> str:
    """Markdown tables of every config section and stage: key, default, help (for docs/pipeline.md)."""
    from lref.calibration import CalibrationConfig
    from lref.config import field_default

    sections = [("data", DataConfig), ("eval", EvalSettings), ("calibration", CalibrationConfig)]
    for name in STAGES:
        try:
            sections.append((f"stages.{name}", _stage_class(name)))
        except ImportError:
            continue
    lines = []
    for title, cls in sections:
        owned = _owned_fields(title.split(".", 1)[1]) if title.startswith("stages.") else ()
        lines += [f"### `{title}` ({cls.__module__}.{cls.__name__})", "", "| key | default | help |", "|---|---|---|"]
        if title.startswith("stages.") and title != "stages.zero-shot":
            lines.append("| `pairs` | `null` | Train on a seeded sample of this many of the stage's input pairs. |")
        if title == "calibration":
            lines.append("| `pairs` | (required) | Training pairs (whole queries) held out of every stage; each system's "
                         "label bias is fitted on them and applied to its evaluation. Leave `calibration` out for "
                         "raw scores. |")
        if title in ("stages.sft", "stages.cot"):
            help_text = PipelineConfig.__dataclass_fields__["chain_start"].metadata["help"]
            lines.append(f"| `start_from` | `\"model\"` | {help_text} |")
        for f in dataclasses.fields(cls):
            if f.name in owned:
                continue
            try:
                default = json.dumps(field_default(cls, f.name))
            except KeyError:
                default = "(required)"
            text = f.metadata.get("help", "").replace("|", "\\|")
            lines.append(f"| `{f.name}` | `{default}` | {text} |")
        lines.append("")
    return "\n".join(lines)


__all__ = [
    "CHAIN", "ConfigError", "DataConfig", "EvalSettings", "Pipeline", "PipelineConfig", "RunData", "STAGES",
    "ZeroShotConfig", "config_reference", "evaluate_system", "load_config", "load_data", "make_scorer",
    "parse_config", "run_pipeline",
]
