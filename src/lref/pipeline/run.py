"""The run: `Pipeline` runs a config's stages in order into one resumable run directory, with a manifest per stage
(status, fingerprints, versions, metrics, wall time, peak memory), and gathers `results.json`."""

from __future__ import annotations

import json
import logging
import os
import resource
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lref.calibration import FIT_VERSION
from lref.collapse import collapse_summary
from lref.data import load_records
from lref.data.records import Record
from lref.fingerprint import data_hash, library_versions, settings_of, sha256_json
from lref.io import write_json
from lref.models.loading import read_manifest as read_model_manifest
from lref.pipeline.config import CHAIN, STAGES, STUDENT_STAGES, UNSET, ConfigError, PipelineConfig, load_config
from lref.pipeline.data import RunData, load_data, sample
from lref.pipeline.evaluation import evaluate_system
from lref.pipeline.progress import SELECTED_SHARE, RunClock, stage_work
from lref.pipeline.runners import RUNNERS, SYSTEM_TITLES, StageContext, with_fields
from lref.predictions import read_predictions

logger = logging.getLogger("lref.pipeline")

RESULTS_NAME = "results.json"
MANIFEST = "manifest.json"
LOG_NAME = "run.log"
NOT_HASHED = ("resume", "progress", "threads", "logging_steps")
"""Fields that change how a stage runs, not what it produces: changing them does not re-run the stage."""


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
    return {k: v for k, v in settings_of(config, NOT_HASHED).items() if v != UNSET}


class Pipeline:
    """Runs a PipelineConfig's stages in order into `run_dir`; see the module docs."""

    def __init__(self, config: PipelineConfig, run_dir: str | Path | None = None, echo: Callable[[str], None] = print):
        self.config = config
        self.run_dir = Path(run_dir or config.run_dir)
        self.echo = echo
        self.clock = RunClock({})
        self.ran = False
        """Whether the stage being run did its work now (not kept from an earlier run), for the clock."""

    def stage_dir(self, name: str) -> Path:
        return self.run_dir / "stages" / name

    def run(self, from_stage: str | None = None, only: Sequence[str] | None = None) -> dict[str, Any]:
        """Run the enabled stages; returns the results (also in `run_dir/results.json`)."""
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
                      + f" ({data.scheme})"
                      + (f"; {data.corrections.changed} labels corrected by {Path(data.corrections.path).name}"
                         if data.corrections else ""))
            done: dict[str, dict[str, Any]] = {}
            self.clock = RunClock(self.expected_work(selected, data))
            for index, name in enumerate(names, start=1):
                prefix = f"[{index}/{len(names)}] {name}"
                if name not in selected:
                    manifest = read_manifest(self.stage_dir(name))
                    if manifest and manifest.get("status") in ("done", "skipped"):
                        done[name] = manifest
                    continue
                started = time.perf_counter()
                self.ran = False
                done[name] = self._run_stage(name, data, done, force=name in forced, prefix=prefix)
                self.clock.finish(name, time.perf_counter() - started, self.ran)
                write_json(self.run_dir / RESULTS_NAME, self.results(data))
            self.echo(f"finished: {self.clock.summary()}")
            return self.results(data)
        finally:
            root.removeHandler(handler)
            root.setLevel(previous_level)
            handler.close()

    def expected_work(self, names: Sequence[str], data: RunData) -> dict[str, float]:
        """Each stage's estimated work (`lref.pipeline.progress.stage_work`) from its config and the run's sizes."""
        scored = len(data.eval) + len(data.calibration)
        select_pool = min(self.config.pairs.get("select") or len(data.train), len(data.train))
        work = {}
        for name in names:
            n_train = len(data.train)
            if name in ("sft", "cot") and "select" in self.config.stages:
                n_train = max(1, round(SELECTED_SHARE * select_pool))
            n_train = min(self.config.pairs.get(name) or n_train, n_train)
            cached_teacher = name == "distill-hybrid" and "distill" in self.config.stages
            work[name] = stage_work(name, self.config.stages[name], n_train, scored, cached_teacher)
        return work

    # ---------------------------------------------------------------- one stage

    def _inputs(self, name: str, data: RunData, done: dict[str, dict[str, Any]]) -> tuple[list[Record], dict, dict]:
        """The stage's training records, the upstream outputs it starts from, and the hashes of its inputs."""
        upstream: dict[str, Any] = {}
        inputs: dict[str, Any] = {"train": data.train_hash}
        if data.corrections:  # recorded (count, sha256, labels changed); the path stays out of the fingerprint
            inputs["corrections"] = {k: v for k, v in data.corrections.to_dict().items() if k != "path"}
        records = data.train
        if name in CHAIN:
            before = [n for n in CHAIN[: CHAIN.index(name)] if n in self.config.stages and n not in STUDENT_STAGES]
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
        # both students draw the same pairs: a like-for-like comparison, and the teacher labels them once
        tag = "distill" if name in STUDENT_STAGES else name
        records = sample(records, self.config.pairs.get(name), self.config.seed, tag)
        return records, upstream, inputs

    def _run_stage(self, name: str, data: RunData, done: dict[str, dict[str, Any]], force: bool,
                   prefix: str) -> dict[str, Any]:
        stage_dir = self.stage_dir(name)
        records, upstream, inputs = self._inputs(name, data, done)
        inputs["records"] = data_hash(records)
        model_field = "teacher" if name in STUDENT_STAGES else "model"
        config = self.config.stages[name]
        filled = {"output_dir": str(stage_dir / "model")}
        if name in CHAIN:
            filled[model_field] = upstream["model"]
        config = with_fields(config, **filled)
        # The upstream model is hashed through the upstream fingerprint, not its path, so a moved run dir keeps.
        unset = {"output_dir": UNSET, **({model_field: UNSET} if name in CHAIN else {})}
        settings = _stage_settings(with_fields(config, **unset))
        fingerprint = sha256_json({"stage": name, "config": settings, "pairs": self.config.pairs.get(name),
                                   "inputs": inputs})
        calibration = ({"calibration": asdict(self.config.calibration), "fit": FIT_VERSION,
                        "calibration_data": data.calibration_hash} if self.config.calibration else {})
        eval_fingerprint = sha256_json({"eval": asdict(self.config.eval), "data": data.eval_hash,
                                        "seed": self.config.seed, **calibration})
        previous = read_manifest(stage_dir)
        refusal = self.collapsed_teacher(name, config, upstream, done)
        if refusal is not None:
            if not (previous and previous.get("status") == "skipped" and previous.get("fingerprint") == fingerprint):
                if stage_dir.exists():
                    shutil.rmtree(stage_dir)
                stage_dir.mkdir(parents=True, exist_ok=True)
                write_json(stage_dir / MANIFEST, {
                    "stage": name, "status": "skipped", "reason": refusal, "fingerprint": fingerprint,
                    "config": asdict(config), "inputs": inputs, "upstream": upstream,
                    "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")})
            logger.warning("stage %s skipped: %s", name, refusal)
            self.echo(f"{prefix}: SKIPPED: {refusal}")
            return read_manifest(stage_dir)
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
        config = with_fields(config, resume=resume)
        manifest: dict[str, Any] = {
            "stage": name, "status": "running", "fingerprint": fingerprint, "eval_fingerprint": eval_fingerprint,
            "config": asdict(config), "pairs": self.config.pairs.get(name),
            "n_train": 0 if name in TRAINS_NOTHING else len(records),
            "inputs": inputs, "upstream": upstream, "versions": library_versions(("trl", "scikit-learn")),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "resumed": resume,
        }
        # A resumed stage keeps its first start and counts its interrupted attempts' time, so it reports what it cost.
        earlier_s = float(previous.get("interrupted_s") or 0.0) if resume else 0.0
        if resume:
            manifest.update(started=previous.get("started", manifest["started"]), resumed_at=manifest["started"],
                            interrupted_s=earlier_s)
        write_json(stage_dir / MANIFEST, manifest)
        self.ran = True
        what = "scoring only" if name in TRAINS_NOTHING else f"on {len(records)} pairs"
        self.echo(f"{prefix}: {'resuming' if resume else 'running'} {what} ({self.clock.status()})")
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
        notes = [note for folder in dict.fromkeys([stage_dir / "model", *(
            Path(spec["ref"]) for spec in result["systems"].values())]) for note in training_notes(folder)]
        for note in notes:
            self.echo(f"  note: {note}")
        if notes:
            manifest["notes"] = notes
        manifest["metrics"] = self._evaluate(result["systems"], data, stage_dir)
        manifest.update(status="done", wall_time_s=round(earlier_s + time.perf_counter() - started, 2),
                        **_peak_memory_mb(),
                        finished=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        write_json(stage_dir / MANIFEST, manifest)
        self.echo(f"{prefix}: done in {manifest['wall_time_s']:.1f} s ({_headline(manifest)})")
        return manifest

    def collapsed_teacher(self, name: str, config: Any, upstream: dict[str, Any],
                          done: dict[str, dict[str, Any]]) -> str | None:
        """Why the distill stage must not learn from its teacher (the chain model before it collapsed, by the
        `collapse` check of its evaluation), or None: another stage, a sound or unchecked teacher, or
        `allow_collapsed_teacher`."""
        if name not in STUDENT_STAGES or getattr(config, "allow_collapsed_teacher", False) or "model" not in upstream:
            return None
        for manifest in done.values():
            for system, spec in (manifest.get("systems") or {}).items():
                check = ((manifest.get("metrics") or {}).get(system) or {}).get("collapse") or {}
                if spec.get("ref") == upstream["model"] and check.get("collapsed"):
                    return (f"its teacher {system} collapsed on its {check['pairs']} {check['checked_on']} pairs ("
                            + "; ".join(check["reasons"]) + "): a student would learn the collapse. Fix the "
                            "teacher's training (e.g. class_balance: sqrt, more pairs or epochs) or set "
                            f"{name}.allow_collapsed_teacher: true to distil from it anyway")
        return None

    def _evaluate(self, systems: dict[str, dict[str, str]], data: RunData, stage_dir: Path) -> dict[str, Any]:
        metrics = {}
        for system, spec in systems.items():
            result = evaluate_system(system, spec["kind"], spec["ref"], data, self.config.eval, stage_dir,
                                     self.config.seed, self.config.calibration)
            metrics[system] = {k: result[k] for k in SUMMARY_KEYS if k in result}
            logger.info("%s: %s", system, _summary_line(result))
            warning = collapse_summary(result["collapse"])
            if warning:
                logger.warning("%s: %s", system, warning)
                self.echo(f"  {'WARNING ' if result['collapse']['collapsed'] else 'note: '}{system} on its "
                          f"{result['collapse']['pairs']} {result['collapse']['checked_on']} pairs: {warning}")
            change = self.label_changes(system)
            if change is not None:
                metrics[system]["changed_from"] = change
                self.echo(f"  {system}: {change['labels']} of {change['pairs']} held-out labels differ from "
                          f"{change['system']}" + ("" if change["labels"] else ": this step changed no decision"))
        return metrics

    def label_changes(self, system: str) -> dict[str, Any] | None:
        """How many held-out labels LLM system `system` changed from the system it continued (llm-base: zero-shot;
        sft: llm-base with `start_from: llm-base`, else zero-shot; then cot-ee, cot-ra, cot-dr, dpo in turn); None
        for other systems or when either prediction file is missing."""
        if system not in CHAIN_SYSTEMS or system == "zero-shot":
            return None
        if system == "llm-base":
            candidates = ["zero-shot"]
        else:
            start = "llm-base" if self.config.chain_start == "llm-base" else "zero-shot"
            candidates = [s for s in CHAIN_SYSTEMS[CHAIN_SYSTEMS.index("sft"): CHAIN_SYSTEMS.index(system)]][::-1]
            candidates.append(start)
        after = self.stage_dir(SYSTEM_STAGES.get(system, system)) / f"predictions_{system}.jsonl"
        for previous in candidates:
            before = self.stage_dir(SYSTEM_STAGES.get(previous, previous)) / f"predictions_{previous}.jsonl"
            if before.is_file() and after.is_file():
                old = {p.id: p.label for p in read_predictions(before)}
                new = {p.id: p.label for p in read_predictions(after)}
                shared = old.keys() & new.keys()
                return {"system": previous, "labels": sum(old[i] != new[i] for i in shared), "pairs": len(shared)}
        return None

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


TRAINS_NOTHING = ("zero-shot",)
"""Stages that only score: their manifest reports 0 training pairs."""
CHAIN_SYSTEMS = ("zero-shot", "llm-base", "sft", "cot-ee", "cot-ra", "cot-dr", "dpo")
"""The LLM systems in the order each continues the one before it (sft continues zero-shot or llm-base)."""
SYSTEM_STAGES = {"cot-ee": "cot", "cot-ra": "cot", "cot-dr": "cot"}
"""The stage of each system whose name is not its stage's."""
SUMMARY_KEYS = ("n", "accuracy", "macro_f1", "weighted_f1", "rmse", "over_estimate_share", "under_estimate_share",
                 "ci95", "pairs_per_s", "calibration", "collapse")


def training_notes(folder: Path) -> list[str]:
    """Why the model in `folder` may equal the one it started from, from its manifest: a stage skipped for too few
    examples, a DPO guard that kept the start, a run whose steps were all warmup steps."""
    manifest = read_model_manifest(folder) if folder.is_dir() else None
    if not manifest:
        return []
    notes = []
    if manifest.get("kind") == "skipped":
        notes.append(f"not trained: {manifest.get('skipped_reason')}")
    guard = manifest.get("recall_guard") or {}
    if guard.get("unchanged"):
        notes.append(f"the DPO guard kept the starting model: no check on its {guard.get('n_guard')} guard pairs beat "
                     f"it on {guard.get('objective')}")
    idle = (manifest.get("train_metrics") or {}).get("idle_warmup")
    if idle:
        notes.append(f"{manifest.get('stage', folder.name)}: {idle}")
    return notes


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


__all__ = ["CHAIN_SYSTEMS", "LOG_NAME", "MANIFEST", "NOT_HASHED", "Pipeline", "RESULTS_NAME", "SUMMARY_KEYS",
           "TRAINS_NOTHING", "read_manifest", "run_pipeline", "training_notes"]
