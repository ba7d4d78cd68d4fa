"""The Home Depot benchmark (issue 9): every baseline and the LREF chain on the same dev pairs, from one pipeline
config, written up as benchmarks/results/homedepot.json and benchmarks/RESULTS.md (regenerated, never hand-edited).

    .venv/bin/python benchmarks/homedepot.py                  # runs configs/homedepot.yaml (resumable), then writes
    .venv/bin/python benchmarks/homedepot.py --report-only    # only rewrites the JSON and RESULTS.md from the run
    .venv/bin/python benchmarks/homedepot.py --report-only --blind ../shared/datasets/homedepot/blind.csv

`--blind PATH` scores the blind test set (pairs without labels) once with each finished system of BLIND_SYSTEMS,
with the calibration its dev evaluation used, into benchmarks/results/blind/NAME.jsonl (`lref predict` format: id,
label, probs). Nothing is trained, calibrated, selected or tuned on those pairs; a system whose stage fingerprint is
unchanged since it was scored is not scored again (benchmarks/results/blind/index.json).

It needs ../shared/datasets/homedepot (train.csv for training, dev.csv for evaluation).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common import RESULTS, ROOT, cpu_name, utc_now

from lref.io import atomic_write, write_json, write_jsonl

if TYPE_CHECKING:
    from lref.pipeline import Pipeline

NAMES = {"lexical": "lexical", "zero-shot": "zero_shot", "bert": "bert", "mpnet-base": "mpnet_base",
         "llm-base": "llm_base", "sft": "lref_select", "cot-ee": "lref_ee", "cot-ra": "lref_ra", "cot-dr": "lref_dr",
         "dpo": "lref_dpo", "distill": "student", "distill-hybrid": "student_hybrid"}
CHAIN = ("lref_select", "lref_ee", "lref_ra", "lref_dr", "lref_dpo")
STUDENTS = ("student", "student_hybrid")
STUDENT_GOALS = (("llm_base", 0.0), ("lexical", 1.5), ("bert", 1.5))
"""Issue 28: the served student against the LLM judge it learnt from and the two cheap baselines (weighted-F1 points
it must lead by)."""
BLIND_SYSTEMS = ("lexical", "bert", "mpnet_base", "llm_base", "lref_dpo", "student", "student_hybrid")
"""The finished systems scored on the blind test set (those of a run that has them)."""
BLIND = RESULTS / "blind"
METRICS = ("accuracy", "macro_f1", "weighted_f1", "over_estimate_share", "rmse", "pairs_per_s", "cohen_kappa",
           "quadratic_weighted_kappa", "spearman", "ndcg@10", "by_rater_agreement", "collapse")
ANCHORS = """\
## Anchors (not comparable one to one)

- LREF paper (arXiv 2503.09223, JD.com data, larger LLMs): +2.1 weighted-F1 over a fine-tuned DeBERTa; data
  selection +8 macro-F1 (44.9 -> 53.0) over the LLM tuned on all data; DPO +14 points of Marginal recall.
- Kaggle Home Depot Product Search Relevance: the winning RMSE was 0.431 and a mean predictor scores about 0.53, on
  the competition's own test set, with product descriptions and attributes as inputs. Here the split is this
  project's train/dev split of the labelled pairs, the inputs are query and title only, and RMSE is that of the
  expected rating (the label probabilities times each grade's rating in the scheme) against the raters' mean. The
  figures are therefore not directly comparable.
"""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "homedepot.yaml"))
    parser.add_argument("--run-dir", default=None, help="default: the config's run_dir")
    parser.add_argument("--report-only", action="store_true", help="write the results of the run as it stands")
    parser.add_argument("--out", default=str(RESULTS / "homedepot.json"))
    parser.add_argument("--results-md", default=str(ROOT / "benchmarks" / "RESULTS.md"))
    parser.add_argument("--blind", default=None, metavar="PATH",
                        help="score this unlabelled test set with the finished systems (never trained or tuned on)")
    parser.add_argument("--blind-out", default=str(BLIND), help="folder for NAME.jsonl and index.json")
    return parser.parse_args()


def score_blind(pipeline: Pipeline, path: str, out_dir: Path) -> dict[str, Any]:
    """Score the blind pairs with each finished system of BLIND_SYSTEMS (see the module docs); returns the index:
    per system its file, pairs, seconds, pairs/s and the stage fingerprint it was scored under."""
    from lref.data import load_records
    from lref.data.hints import with_match_hints
    from lref.fingerprint import data_hash
    from lref.pipeline import STAGES, read_manifest, score_calibrated
    from lref.pipeline.config import scheme_name

    config = pipeline.config
    scheme = scheme_name(config.data)
    records = load_records(path, config.data.format, scheme=scheme, **config.data.options)
    labelled = sum(r.label is not None for r in records)
    if labelled:
        raise SystemExit(f"{path}: {labelled} pairs carry a label; the blind set is scored without labels")
    if config.data.match_hints:
        records = with_match_hints(records)
    blind_hash = data_hash(records)
    index_path = out_dir / "index.json"
    index = json.loads(index_path.read_text()) if index_path.is_file() else {}
    out_dir.mkdir(parents=True, exist_ok=True)
    for stage in STAGES:
        manifest = read_manifest(pipeline.stage_dir(stage))
        if not manifest or manifest.get("status") != "done":
            continue
        for system, spec in (manifest.get("systems") or {}).items():
            name = NAMES.get(system, system)
            if name not in BLIND_SYSTEMS:
                continue
            entry = index.get(name) or {}
            target = out_dir / f"{name}.jsonl"
            if (target.is_file() and entry.get("fingerprint") == manifest["fingerprint"]
                    and entry.get("data") == blind_hash):
                print(f"blind: {name} unchanged, kept", flush=True)
                continue
            print(f"blind: scoring {len(records)} pairs with {name}", flush=True)
            started = time.perf_counter()
            result = score_calibrated(system, spec["kind"], spec["ref"], records, scheme, config.eval,
                                      pipeline.stage_dir(stage))
            seconds = time.perf_counter() - started
            write_jsonl(target, ({"id": p.id, "label": p.label, "probs": p.probs} for p in result.predictions()))
            index[name] = {"file": str(target.relative_to(ROOT)) if target.is_relative_to(ROOT) else str(target),
                           "pairs": len(records), "seconds": round(seconds, 1),
                           "pairs_per_s": round(len(records) / seconds, 2), "fingerprint": manifest["fingerprint"],
                           "data": blind_hash, "machine": f"{cpu_name()}, {os.cpu_count()} cores", "date": utc_now()}
            write_json(index_path, index)
    return index


def collect(pipeline: Pipeline) -> dict[str, Any]:
    """Systems by benchmark name (metrics, intervals, per-class figures, sizes, times) and per-stage wall times."""
    from lref.pipeline import STAGES, read_manifest

    results = pipeline.results()
    systems: dict[str, Any] = {}
    for system in results["systems"]:
        name = NAMES.get(system["name"], system["name"])
        if "skipped" in system:
            systems[name] = {"skipped": system["skipped"]}
            continue
        metrics = system["metrics"]
        systems[name] = {
            **{key: metrics.get(key) for key in METRICS},
            "ci95": metrics.get("ci95"), "per_class": metrics.get("per_class"), "n_eval": metrics.get("n"),
            "scheme": metrics.get("scheme"), "n_train": None if name == "zero_shot" else system.get("n_train"),
            "train_seconds": system.get("train_seconds"),
            "title": system["title"],
            "calibration": metrics.get("calibration"),
        }
    stages = {}
    for name in STAGES:
        manifest = read_manifest(pipeline.stage_dir(name))
        if manifest:
            stages[name] = {"status": manifest.get("status"), "started": manifest.get("started"),
                            "wall_time_s": manifest.get("wall_time_s"),
                            "reevaluated_s": (manifest.get("reevaluated") or {}).get("wall_time_s"),
                            "peak_rss_mb": manifest.get("peak_rss_mb")}
    calibration_pairs = next((s["calibration"]["pairs"] for s in systems.values() if s.get("calibration")), None)
    predictions = {NAMES.get(system["name"], system["name"]):
                   pipeline.stage_dir(system["stage"]) / f"predictions_{system['name']}.jsonl"
                   for system in results["systems"] if "skipped" not in system}
    return {"systems": systems, "stages": stages, "selection": results.get("selection"),
            "calibration_pairs": calibration_pairs, "paired": paired_differences(pipeline, systems, predictions)}


def compared(systems: dict[str, Any]) -> list[tuple[str, str]]:
    """The (system, baseline) pairs the goals judge, among the systems that have figures."""
    present = [name for name in CHAIN if (systems.get(name) or {}).get("weighted_f1") is not None]
    if not present:
        return []
    final, pairs = present[-1], []
    pairs += [(final, baseline) for baseline in ("bert", "lexical")]
    pairs += list(zip(present, ["llm_base", *present[:-1]]))
    pairs += [(student, baseline) for student in STUDENTS for baseline in (final, *(b for b, _ in STUDENT_GOALS))]
    return [(a, b) for a, b in pairs if all((systems.get(n) or {}).get("weighted_f1") is not None for n in (a, b))]


def paired_differences(pipeline: Pipeline, systems: dict[str, Any], predictions: dict[str, Path]) -> dict[str, Any]:
    """`paired_difference` for each comparison the goals make, keyed "system - baseline": the margin's own interval
    (both systems scored on the same resampled queries), narrower than the two systems' separate intervals."""
    from lref.metrics import paired_difference
    from lref.pipeline import load_data
    from lref.predictions import read_predictions

    pairs, settings = compared(systems), pipeline.config.eval
    if not pairs or settings.bootstrap < 1:
        return {}
    data = load_data(pipeline.config)
    read = {name: read_predictions(predictions[name]) for name in {n for pair in pairs for n in pair}}
    return {f"{a} - {b}": paired_difference(data.eval, read[a], read[b], data.scheme, bootstrap=settings.bootstrap,
                                            seed=pipeline.config.seed)
            for a, b in pairs}


def goals(systems: dict[str, Any], paired: dict[str, Any]) -> list[str]:
    """The issue's goals, each with the measured margin (weighted-F1 points) and its paired 95% interval."""
    def wf1(name: str) -> float | None:
        return (systems.get(name) or {}).get("weighted_f1")

    def interval(a: str, b: str, metric: str = "weighted_f1") -> str:
        low, high = (paired.get(f"{a} - {b}") or {}).get("ci95", {}).get(metric, (None, None))
        return "" if low is None else f" [paired 95% CI {100 * low:+.1f}, {100 * high:+.1f}]"

    final = next((name for name in reversed(CHAIN) if wf1(name) is not None), None)
    if final is None:
        return ["- The LREF chain has not finished, so no goal can be judged yet."]
    lines = []
    for baseline in ("bert", "lexical"):
        if wf1(baseline) is not None:
            margin = 100 * (wf1(final) - wf1(baseline))
            lines.append(f"- LREF-final ({final}) vs `{baseline}`: {margin:+.1f} pts weighted-F1"
                         f"{interval(final, baseline)} (goal: >= +2.0) -> "
                         f"{'met' if margin >= 2 else 'missed'}")
    if wf1("lref_select") is None and wf1("lref_ee") is not None:
        lines.append("- `lref_select`: no model of its own; the config has no sft stage, so the CoT stages continue "
                     "llm-base and the selection only chooses their examples (its effect is inside `lref_ee`)")
    previous = "llm_base"
    for stage in CHAIN:
        if wf1(stage) is None:
            continue
        delta = 100 * (wf1(stage) - wf1(previous)) if wf1(previous) is not None else None
        if delta is not None:
            lines.append(f"- `{stage}` vs `{previous}`: {delta:+.1f} pts weighted-F1{interval(stage, previous)} "
                         "(goal: >= 0) -> "
                         f"{'met' if delta >= 0 else 'missed'}")
        previous = stage
    if wf1("lref_dpo") is not None and wf1("lref_dr") is not None:
        before, after = systems["lref_dr"]["over_estimate_share"], systems["lref_dpo"]["over_estimate_share"]
        # Judged on the table's (calibrated) figures; each system's own label bias can move them either way, so the
        # models' raw shift is shown beside them.
        raw = [((systems[name].get("calibration") or {}).get("uncalibrated") or {}).get("over_estimate_share")
               for name in ("lref_dr", "lref_dpo")]
        uncalibrated = f"; uncalibrated {raw[0]:.3f} -> {raw[1]:.3f}" if None not in raw else ""
        lines.append(f"- DPO over-estimate share {before:.3f} -> {after:.3f}, "
                     f"{100 * (after - before):+.1f} pts{interval('lref_dpo', 'lref_dr', 'over_estimate_share')} "
                     f"(goal: lower) -> {'met' if after < before else 'missed'}{uncalibrated}")
    for student in STUDENTS:
        if wf1(student) is None:
            continue
        gap = 100 * (wf1(student) - wf1(final))
        lines.append(f"- {student} vs LREF-final: {gap:+.1f} pts{interval(student, final)}")
        for baseline, lead in STUDENT_GOALS:
            if wf1(baseline) is not None:
                margin = 100 * (wf1(student) - wf1(baseline))
                lines.append(f"- {student} vs `{baseline}`: {margin:+.1f} pts{interval(student, baseline)} (goal: "
                             f">= {lead:+.1f}) -> {'met' if margin >= lead else 'missed'}")
    return lines


def _fmt(value: Any, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def results_markdown(data: dict[str, Any]) -> str:
    systems = data["systems"]
    times = [stage["wall_time_s"] for stage in data["stages"].values() if stage.get("wall_time_s") is not None]
    stage_total = sum(times) if times else None
    reevaluations = [stage["reevaluated_s"] for stage in data["stages"].values() if stage.get("reevaluated_s")]
    reevaluated = (f" Evaluation settings changed after training, and re-evaluating {len(reevaluations)} stages took "
                   f"{_fmt(sum(reevaluations), 0)} s more." if reevaluations else "")
    lines = [
        "# Home Depot benchmark",
        "",
        f"Generated by `{data['command']}` on {data['date']} ({data['machine']}); do not edit by hand. The stages' "
        f"wall times add up to {_fmt(stage_total, 0)} s; the last `python benchmarks/homedepot.py` took "
        f"{_fmt(data['wall_time_s'], 0)} s (stages kept from an earlier run add nothing to it, and a run made with "
        "`lref run` leaves it blank)." + reevaluated,
        "",
        f"Dev pairs: {data['eval']['pairs']} ({'all' if data['eval'].get('sample') is None else 'seeded sample'} of "
        f"dev.csv), scheme {data['eval']['scheme']}. Training "
        f"pool: {data['eval']['train_pairs']} pairs of train.csv"
        + (f" ({data['calibration_pairs']} more held out for calibration)" if data.get("calibration_pairs") else "")
        + f". Sizes per stage are in `{data['config']}`.",
        "",
        "| system | train pairs | accuracy | macro-F1 | weighted-F1 [95% CI] | over-est. | RMSE | pairs/s | "
        "train s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in systems.items():
        if "skipped" in row:
            lines.append(f"| {name} | – | skipped: {row['skipped']} | | | | | | |")
            continue
        ci = (row.get("ci95") or {}).get("weighted_f1")
        interval = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
        lines.append(
            f"| {name} | {row.get('n_train') or '–'} | {_fmt(row['accuracy'])} | {_fmt(row['macro_f1'])} | "
            f"{_fmt(row['weighted_f1'])}{interval} | {_fmt(row['over_estimate_share'])} | {_fmt(row['rmse'])} | "
            f"{_fmt(row['pairs_per_s'], 1)} | {_fmt(row.get('train_seconds'), 0)} |")
    lines += agreement_table(systems)
    lines += calibration_table(systems, data.get("calibration_pairs"))
    lines += ["", "## Per-class precision / recall", "", "| system | " +
              " | ".join(data["labels"]) + " |", "|---|" + "---|" * len(data["labels"])]
    for name, row in systems.items():
        per_class = row.get("per_class") or {}
        if per_class:
            cells = [f"{per_class[label]['precision']:.3f} / {per_class[label]['recall']:.3f}"
                     if label in per_class else "–" for label in data["labels"]]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "## Goals", "", *goals(systems, data.get("paired") or {}), "",
              "Paired intervals: a bootstrap over dev queries that scores both systems on each resample, so it is "
              "the interval of the margin itself; a margin whose interval straddles 0 is not told apart from no "
              "change.", "",
              "What each run changed, what it showed and what limits the results: `docs/homedepot.md`.", "",
              *stage_changes(systems, data["labels"])]
    selection = data.get("selection")
    if selection:
        funnel = " -> ".join(f"{step['step']} {step['remaining']}" for step in selection["funnel"])
        lines += ["## Selection", "", f"Funnel: {funnel}.", "",
                  "Label mix kept: " + ", ".join(f"{label} {entry['count']}" for label, entry in
                                                 selection["label_distribution"]["selected"].items()) + ".", ""]
    # The start times show which stages one run trained and which it kept from an earlier one.
    lines += ["## Stage wall times", "", "| stage | status | started (UTC) | wall s | re-evaluation s | peak RSS MB |",
              "|---|---|---|---|---|---|"]
    for name, stage in data["stages"].items():
        lines.append(f"| {name} | {stage['status']} | {stage.get('started') or '–'} | "
                     f"{_fmt(stage['wall_time_s'], 0)} | {_fmt(stage.get('reevaluated_s'), 0)} | "
                     f"{_fmt(stage['peak_rss_mb'], 0)} |")
    lines += ["", "## Commands and sizes", "",
              "Run from the repository root with `../shared/datasets/homedepot` present:", "",
              "```", "make install", "python benchmarks/homedepot.py            # resumable; regenerates this file",
              "python benchmarks/homedepot.py --report-only", "```", "",
              f"`{data['config']}` when this file was generated (every size and setting; the run's resolved copy is "
              "its run_dir's config.yaml):", "", "```yaml", data["config_text"].rstrip(), "```",
              "", ANCHORS]
    return "\n".join(lines)


def agreement_table(systems: dict[str, Any]) -> list[str]:
    """Each system's agreement with the raters (from its `evaluate` result): κ, quadratic-weighted κ and Spearman's ρ
    with their query-bootstrap intervals, NDCG@10, and κ on the pairs the raters agreed and disagreed on."""
    def with_interval(row: dict[str, Any], key: str) -> str:
        interval = (row.get("ci95") or {}).get(key)
        return _fmt(row.get(key)) + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval and
                                     row.get(key) is not None else "")

    lines = ["", "## Agreement with the raters", "",
             "Cohen's κ and quadratic-weighted κ of the labels, Spearman's ρ of the expected rating against the "
             "raters' mean, NDCG@10 of each query's pairs ranked by expected rating (docs/metrics.md), with 95% "
             "intervals from the same query bootstrap. The raters agreed on a pair when their mean is a whole number: "
             "the agreed pairs are the ceiling to compare a judge with; on the disagreed ones the gold label is "
             "itself a guess between raters.", "",
             "| system | κ [95% CI] | QWK [95% CI] | Spearman ρ [95% CI] | NDCG@10 | κ agreed pairs | "
             "κ disagreed pairs |", "|---|---|---|---|---|---|---|"]
    for name, row in systems.items():
        if "skipped" in row:
            continue
        split = row.get("by_rater_agreement") or {}
        lines.append(f"| {name} | {with_interval(row, 'cohen_kappa')} | "
                     f"{with_interval(row, 'quadratic_weighted_kappa')} | {with_interval(row, 'spearman')} | "
                     f"{_fmt(row.get('ndcg@10'))} | {_fmt((split.get('agreed') or {}).get('cohen_kappa'))} | "
                     f"{_fmt((split.get('disagreed') or {}).get('cohen_kappa'))} |")
    return lines


def calibration_table(systems: dict[str, Any], pairs: int | None) -> list[str]:
    """Each system's fitted label bias and its dev figures without and with it."""
    rows = [(name, row["calibration"]) for name, row in systems.items() if row.get("calibration")]
    if not rows:
        return ["", "Scores are uncalibrated (the config has no `calibration` section)."]
    labels = list(rows[0][1]["bias"])
    lines = ["", "## Label-prior calibration", "",
             "The table above is calibrated: every system's per-label logit bias was fitted for weighted-F1 on "
             f"{pairs} training pairs (whole queries) that no stage trained on, then applied to the dev pairs "
             "(docs/calibration.md). Uncalibrated figures are on the same dev pairs.", "",
             "| system | bias " + " / ".join(labels) + " | weighted-F1 on the calibration pairs | dev weighted-F1 "
             "uncalibrated -> calibrated | dev over-est. uncalibrated -> calibrated |", "|---|---|---|---|---|"]
    for name, calibration in rows:
        raw, row = calibration["uncalibrated"], systems[name]
        bias = " / ".join(f"{calibration['bias'][label]:+.1f}" for label in labels)
        lines.append(f"| {name} | {bias} | {calibration['before']:.3f} -> {calibration['after']:.3f} | "
                     f"{raw['weighted_f1']:.3f} -> {row['weighted_f1']:.3f} | "
                     f"{raw['over_estimate_share']:.3f} -> {row['over_estimate_share']:.3f} |")
    return lines


def _recall(system: dict[str, Any], label: str) -> float:
    return ((system.get("per_class") or {}).get(label) or {}).get("recall", 0.0)


def stage_changes(systems: dict[str, Any], labels: list[str]) -> list[str]:
    """What each chain stage changed against the model it started from: weighted-F1, over-estimates, recalls."""
    lines = ["## What each stage changed", "",
             "| stage | from | weighted-F1 | over-est. | " + " | ".join(f"{label} recall" for label in labels) + " |",
             "|---|---|---|---|" + "---|" * len(labels)]
    previous = "llm_base"
    for stage in (*CHAIN, *STUDENTS):
        now, before = systems.get(stage) or {}, systems.get(previous) or {}
        if now.get("weighted_f1") is None or before.get("weighted_f1") is None:
            continue
        recalls = [f"{_recall(now, label) - _recall(before, label):+.3f}" for label in labels]
        over = now["over_estimate_share"] - before["over_estimate_share"]
        lines.append(f"| {stage} | {previous} | {now['weighted_f1'] - before['weighted_f1']:+.3f} | {over:+.3f} | "
                     + " | ".join(recalls) + " |")
        if stage not in STUDENTS:
            previous = stage
    return lines + [""]


def last_run_wall(path: str) -> float | None:
    """The wall time the last full run recorded, kept when only the report is rewritten."""
    try:
        return json.loads(Path(path).read_text())["wall_time_s"]
    except (OSError, ValueError, KeyError):
        return None


def main() -> None:
    args = parse_args()
    from lref.pipeline import Pipeline, load_config, read_manifest  # after the arguments: `--help` answers at once

    config = load_config(args.config)
    pipeline = Pipeline(config, args.run_dir)
    started = time.perf_counter()
    if not args.report_only:
        pipeline.run()
    collected = collect(pipeline)
    if args.blind:
        collected["blind"] = score_blind(pipeline, args.blind, Path(args.blind_out))
    evaluated = next((s for s in collected["systems"].values() if "n_eval" in s), None)
    data = {
        **collected,
        "eval": {"pairs": (evaluated or {}).get("n_eval"), "scheme": (evaluated or {}).get("scheme"),
                 "sample": config.data.eval_pairs,
                 "train_pairs": (read_manifest(pipeline.stage_dir("lexical")) or {}).get("n_train")},
        "labels": ["Exact", "Partial", "Irrelevant"],
        "config": str(Path(args.config).resolve().relative_to(ROOT)),
        "config_text": Path(args.config).read_text(encoding="utf-8"),
        "wall_time_s": round(time.perf_counter() - started, 1) if not args.report_only else last_run_wall(args.out),
        "machine": f"{cpu_name()}, {os.cpu_count()} cores",
        "date": utc_now(),
        "command": "python " + " ".join(sys.argv),
    }
    write_json(args.out, data)
    text = results_markdown(data)
    with atomic_write(args.results_md) as handle:
        handle.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
