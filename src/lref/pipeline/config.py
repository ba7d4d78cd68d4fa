"""The pipeline's YAML config: the dataclasses, a type checker that names the offending key, and the reference
tables of every key (`config_reference`)."""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lref.calibration import CalibrationConfig
from lref.config import field_default
from lref.data import default_scheme
from lref.data.records import DataError
from lref.data.synthetic import SyntheticCatalogConfig
from lref.labels import get_scheme

STAGES = ("lexical", "zero-shot", "bert", "mpnet-base", "llm-base", "select", "sft", "cot", "dpo", "distill",
          "distill-hybrid")
CHAIN = ("sft", "cot", "dpo", "distill", "distill-hybrid")
STUDENT_STAGES = ("distill", "distill-hybrid")
"""Stages that distil the chain's last LLM into a cross-encoder; each learns from that LLM, never from the other
student (the teacher's labels are cached once for both)."""
CHAIN_STARTS = ("model", "llm-base")

UNSET = "<set by the pipeline>"
"""The value of a stage field the pipeline fills in when the stage runs (model, output_dir)."""


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
        metadata={"help": "Held-out evaluation pairs; without it, `eval_fraction` of the training queries is held "
                  "out."},
    )
    scheme: str | None = field(default=None, metadata={"help": "Label scheme preset; default: the format's own."})
    options: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "Reader options, e.g. {encoding: latin-1} or {locale: us}."}
    )
    synthetic: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "SyntheticCatalogConfig fields for format synthetic, e.g. {n_pairs: 3000, label_noise: "
                  "0.05}."},
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
                  "pair (`lref.data.hints.match_hint`), for every system but lexical; the models record it and "
                  "`lref predict` / `lref serve student` add it too."},
    )
    corrections: str | None = field(
        default=None,
        metadata={"help": "Label corrections from human review (`lref review import`; path relative to the config "
                  "file): each listed id's gold label is replaced before anything reads the pairs; an id not in the "
                  "data is an error. Its sha256 enters the data fingerprints (docs/review.md)."},
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
    source: str | None = field(default=None, metadata={"help": "The YAML file the config was read from, if any."})


# ---------------------------------------------------------------------------------------------------------------------
# Stage settings: which dataclass, which fields the pipeline owns


STAGE_DEFAULTS = {"stages.mpnet-base": {"model": "mpnet-base"}, "stages.distill-hybrid": {"lexical_features": True}}
"""Defaults a stage has that differ from its config class's (mpnet-base shares bert's CrossEncoderConfig, the hybrid
student distill's DistillConfig)."""


def stage_class(name: str) -> type:
    """The config dataclass of stage `name`. Imported when asked for: a stage whose optional dependencies are
    missing raises ImportError, and only a config that lists it fails."""
    if name == "lexical":
        from lref.baselines.lexical import LexicalConfig

        return LexicalConfig
    if name == "zero-shot":
        return ZeroShotConfig
    if name in ("bert", "mpnet-base"):
        from lref.training.cross_encoder import CrossEncoderConfig

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
    if name in STUDENT_STAGES:
        from lref.stages.distill import DistillConfig

        return DistillConfig
    raise KeyError(name)


def owned_fields(name: str) -> tuple[str, ...]:
    """Fields the pipeline sets; a config that sets them is refused."""
    owned = ("scheme", "output_dir", "resume")
    if name in ("sft", "cot", "dpo"):
        owned += ("model",)
    if name in STUDENT_STAGES:
        owned += ("teacher",)
    return owned


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def build_config(cls: type, values: dict[str, Any], path: str, **owned: Any):
    """Construct dataclass `cls` from YAML `values`: unknown keys, wrong types and refused values name `path.key`."""
    names = field_names(cls)
    for key in values:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{path}.{key}: unknown key{hint}; known: {', '.join(names)}")
    hints = typing.get_type_hints(cls)
    checked = {key: check_type(value, hints[key], f"{path}.{key}") for key, value in values.items()}
    kwargs = {**checked, **{k: v for k, v in owned.items() if k in names}}
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as error:
        message = str(error)
        key = next((name for name in names if message.startswith(name)), None)
        key = key or next((name for name in names if f"{name} " in message or f"{name}:" in message), None)
        raise ConfigError(f"{path}.{key}: {message}" if key else f"{path}: {message}") from None


def check_type(value: Any, hint: Any, path: str) -> Any:
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
                return check_type(value, option, path)
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
        items = [check_type(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
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
    seed = check_type(raw.get("seed", 0), int, "seed")
    model = check_type(raw.get("model", "gemma-3-270m"), str, "model")
    run_dir = check_type(raw.get("run_dir", "runs/lref"), str, "run_dir")
    data_raw = raw.get("data")
    if not isinstance(data_raw, dict):
        raise ConfigError("data: expected a mapping with at least `train` (or format: synthetic)")
    data = build_config(DataConfig, data_raw, "data")
    for key in ("train", "eval", "corrections"):
        value = getattr(data, key)
        if value is not None and not Path(value).is_absolute():
            setattr(data, key, str((base / value).resolve()))
    if data.format == "synthetic":
        build_config(SyntheticCatalogConfig, data.synthetic, "data.synthetic")
        if data.eval:
            raise ConfigError("data.eval: format synthetic holds out eval_fraction of the generated queries instead")
    elif data.synthetic:
        raise ConfigError("data.synthetic: only for format: synthetic")
    for key in ("train", "eval"):
        value = getattr(data, key)
        if value is not None and data.format != "synthetic" and not Path(value).exists():
            raise ConfigError(f"data.{key}: no such file or folder: {value}")
    if data.corrections is not None and not Path(data.corrections).is_file():
        raise ConfigError(f"data.corrections: no such file: {data.corrections}")
    eval_raw = raw.get("eval") or {}
    if not isinstance(eval_raw, dict):
        raise ConfigError("eval: expected a mapping")
    eval_settings = build_config(EvalSettings, eval_raw, "eval")
    calibration, calibration_pairs = calibration_settings(raw.get("calibration"))
    stages_raw = raw.get("stages")
    if not isinstance(stages_raw, dict) or not stages_raw:
        raise ConfigError(f"stages: expected a mapping naming at least one of {', '.join(STAGES)}")
    scheme = scheme_name(data)
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
            cls = stage_class(name)
        except ImportError as error:
            raise ConfigError(f"{path}: this stage is not available ({error})") from None
        for key in owned_fields(name):
            if key in values:
                raise ConfigError(f"{path}.{key}: set by the pipeline; remove it")
        if "pairs" in values:
            if name in ("zero-shot",):
                raise ConfigError(f"{path}.pairs: zero-shot trains nothing")
            pairs[name] = check_type(values.pop("pairs"), int | None, f"{path}.pairs")
            if pairs[name] is not None and pairs[name] < 1:
                raise ConfigError(f"{path}.pairs: must be at least 1 or null, got {pairs[name]}")
        if "start_from" in values:
            if name != first_chain:
                raise ConfigError(f"{path}.start_from: only the first chain stage listed ({first_chain or 'none'}) "
                                  "takes it")
            chain_start = check_type(values.pop("start_from"), str, f"{path}.start_from")
            if chain_start not in CHAIN_STARTS:
                raise ConfigError(f"{path}.start_from: expected one of {', '.join(CHAIN_STARTS)}, got {chain_start!r}")
            if chain_start == "llm-base" and "llm-base" not in stages_raw:
                raise ConfigError(f"{path}.start_from: llm-base is not among the stages; add it or remove this key")
        if "seed" in field_names(cls):
            values.setdefault("seed", seed)
        if name == "llm-base":
            values.setdefault("model", model)
        for key, value in STAGE_DEFAULTS.get(path, {}).items():
            values.setdefault(key, value)
        owned = {"scheme": scheme, "output_dir": UNSET, "model": UNSET, "teacher": UNSET}
        stages[name] = build_config(cls, values, path, **{k: owned[k] for k in owned_fields(name) if k in owned})
    stages = {name: stages[name] for name in STAGES if name in stages}
    return PipelineConfig(run_dir=run_dir, seed=seed, model=model, data=data, eval=eval_settings, stages=stages,
                          pairs=pairs, calibration=calibration, calibration_pairs=calibration_pairs,
                          chain_start=chain_start, source=str(source) if source else None)


def calibration_settings(raw: Any) -> tuple[Any, int | None]:
    """`calibration: {pairs: N, objective: ...}` -> (CalibrationConfig, N); absent or null -> (None, None)."""
    if raw is None:
        return None, None
    if not isinstance(raw, dict):
        raise ConfigError("calibration: expected a mapping such as {pairs: 1000}")
    values = dict(raw)
    if "pairs" not in values:
        raise ConfigError("calibration.pairs: how many training pairs to hold out for calibration (e.g. 1000)")
    pairs = check_type(values.pop("pairs"), int, "calibration.pairs")
    config = build_config(CalibrationConfig, values, "calibration")
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


def scheme_name(data: DataConfig) -> str:
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


def config_reference() -> str:
    """Markdown tables of every config section and stage: key, default, help (for docs/pipeline.md)."""
    sections = [("data", DataConfig), ("eval", EvalSettings), ("calibration", CalibrationConfig)]
    for name in STAGES:
        try:
            sections.append((f"stages.{name}", stage_class(name)))
        except ImportError:
            continue
    lines = []
    for title, cls in sections:
        owned = owned_fields(title.split(".", 1)[1]) if title.startswith("stages.") else ()
        # the pipeline's own sections under the package users import them from
        module = "lref.pipeline" if cls.__module__.startswith("lref.pipeline.") else cls.__module__
        lines += [f"### `{title}` ({module}.{cls.__name__})", "", "| key | default | help |", "|---|---|---|"]
        if title.startswith("stages.") and title != "stages.zero-shot":
            lines.append("| `pairs` | `null` | Train on a seeded sample of this many of the stage's input pairs. |")
        if title == "calibration":
            lines.append("| `pairs` | (required) | Training pairs (whole queries) held out of every stage; each "
                         "system's label bias is fitted on them and applied to its evaluation. Leave `calibration` "
                         "out for raw scores. |")
        if title in ("stages.sft", "stages.cot"):
            help_text = PipelineConfig.__dataclass_fields__["chain_start"].metadata["help"]
            lines.append(f"| `start_from` | `\"model\"` | {help_text} |")
        for f in dataclasses.fields(cls):
            if f.name in owned:
                continue
            try:
                default = json.dumps(STAGE_DEFAULTS.get(title, {}).get(f.name, field_default(cls, f.name)))
            except KeyError:
                default = "(required)"
            text = f.metadata.get("help", "").replace("|", "\\|")
            lines.append(f"| `{f.name}` | `{default}` | {text} |")
        lines.append("")
    return "\n".join(lines)


__all__ = [
    "CHAIN", "CHAIN_STARTS", "STUDENT_STAGES", "ConfigError", "DataConfig", "EvalSettings", "PipelineConfig",
    "STAGES", "UNSET",
    "ZeroShotConfig", "build_config", "check_type", "config_reference", "field_names", "load_config", "owned_fields",
    "parse_config", "scheme_name", "stage_class",
]
