"""Does stage 1 selection help on real labels? Home Depot systems comparison and selection cost (issue 4, items 2-3).

On a seeded pool of Home Depot train pairs (graded3), `lref.stages.select.select` runs with the encoder backbone
(MiniLM by default; `--backbone lexical` for the lexical selectors) and each `--ms-methods` entry (`supervisor`, the
paper's Mislabeled Supervisor, by default; `cleanlab` for confident learning). Reported:

* disagreement: the share of pairs whose raters disagreed (`meta["rater_disagreement"]`: the mean rating is not a
  whole number) in the pool and in the selected set;
* flags: for the MS flags, cleanlab's flags (`find_label_issues` on IM's out-of-fold probabilities) and random
  flags of the same sizes (mean over `--random-draws`), the share of flagged pairs whose raters disagreed, against
  the pool's rate;
* systems: the downstream model (`--downstream llm`: Gemma-3-270m LoRA SFT; `--downstream lexical`: the lexical
  baseline, features + gradient boosting, seconds per system) trained on `full` (the whole pool), `selected` (the
  full rule),
  `random_same_size` (a seeded random subset of the pool, as large as `selected`) and the conditions added one at a
  time, cumulatively: `plus_im` (IM(x) != L(x)), `plus_ci` (IM and CI), `plus_ms` (IM, CI and MS: the rule without
  `--label-floor`'s top-up; when that added nothing it is `selected`'s set, reused and marked
  `"same_as": "selected"`); each scored on a seeded dev sample with `LabelScorer` and `lref.metrics.evaluate`. A
  subset with fewer than 8 pairs is recorded as skipped. A second `--ms-methods` entry M adds `selected_M`,
  `random_same_size_M` and `plus_ms_M`. With `--downstream lexical` each random system is the mean over
  `--random-draws` seeded subsets (each draw's figures are kept);
* cost: wall time of each selector (training and pool scoring) for the encoder selectors and, with
  `--llm-cost-sample N`, for LLM selectors (Gemma) with sample N on the same pool: seconds per selector and per pool
  pair.

Resumable: the selectors are cached by `select` under `--run-dir`/select_<backbone>; each SFT adapter lives in
`--run-dir`/adapters/<hash of its training data and settings> (reused when finished, resumed from its last
checkpoint otherwise) and its dev predictions in `--run-dir`/predictions/. Writes `systems`, `disagreement`,
`funnel`, `cost`, `sizes`, `settings`, `machine`, `wall_time_s`, `date` and `command` into
benchmarks/results/selection.json, keeping the other keys there (`noise_audit` comes from selection_noise.py).

    .venv/bin/python benchmarks/selection_homedepot.py                  # the full comparison
    .venv/bin/python benchmarks/selection_homedepot.py --pool 120 --sample 40 --dev 40 --epochs 0.05 \\
        --run-dir /tmp/shd --out /tmp/shd.json                          # a quick check
    .venv/bin/python benchmarks/selection_homedepot.py --backbone lexical --downstream lexical --pool 15000 \\
        --sample 2500 --dev 0 --ms-methods supervisor cleanlab --random-draws 10 \\
        --out benchmarks/results/selection_homedepot_lexical.json       # all lexical: minutes on a CPU
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import sys
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from common import HOMEDEPOT, RESULTS, ROOT, utc_now

from lref.io import write_json

if TYPE_CHECKING:
    from lref.data.records import Record

SCHEME = "graded3"
MIN_TRAIN = 8
"""Fewer pairs than one SFT batch is no system worth comparing."""
SYSTEMS = ("full", "selected", "random_same_size", "plus_im", "plus_ci", "plus_ms")
METRICS = ("accuracy", "macro_f1", "weighted_f1", "over_estimate_share")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(HOMEDEPOT), help="folder with the Home Depot train.csv and dev.csv")
    parser.add_argument("--pool", type=int, default=2000, help="seeded sample of train.csv that selection runs on")
    parser.add_argument("--dev", type=int, default=2000, help="seeded sample of dev.csv to score; 0 = all pairs")
    parser.add_argument("--backbone", default="encoder", choices=["encoder", "llm", "lexical"],
                        help="selector backbone")
    parser.add_argument("--ms-methods", nargs="+", default=["supervisor"], choices=["supervisor", "cleanlab"],
                        help="SelectConfig.ms_method of each selection run; the first one's systems keep the plain "
                             "names, later ones get a _<method> suffix")
    parser.add_argument("--downstream", default="llm", choices=["llm", "lexical"],
                        help="model trained on each system's pairs: 'llm' (--model, LoRA SFT) or 'lexical' (the "
                             "lexical baseline, seconds per system)")
    parser.add_argument("--random-draws", type=int, default=1,
                        help="random subsets per random system (lexical downstream) and random flag sets, averaged")
    parser.add_argument("--selector-model", default=None, help="selector base model (default: the backbone's)")
    parser.add_argument("--sample", type=int, default=600, help="training sample of each selector (IM, CI, MS)")
    parser.add_argument("--confusion-slice", type=int, default=None,
                        help="held-out pairs for IM's confusion matrix (default: the pool outside IM's sample, "
                             "at most 1000)")
    parser.add_argument("--folds", type=int, default=2)
    parser.add_argument("--label-floor", type=float, default=0.1,
                        help="SelectConfig.label_floor: top up a grade the rule leaves below this share (0: off)")
    parser.add_argument("--selector-epochs", type=float, default=1.0)
    parser.add_argument("--selector-max-steps", type=int, default=-1)
    parser.add_argument("--selector-lr", type=float, default=None, help="default: the backbone's")
    parser.add_argument("--selector-batch-size", type=int, default=16)
    parser.add_argument("--model", default="gemma-3-270m", help="LLM that each system fine-tunes")
    parser.add_argument("--epochs", type=float, default=1.0, help="SFT epochs of each system")
    parser.add_argument("--lr", type=float, default=2e-4, help="SFT learning rate")
    parser.add_argument("--batch-size", type=int, default=8, help="SFT batch size")
    parser.add_argument("--score-batch-size", type=int, default=16, help="dev pairs per forward pass")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% intervals")
    parser.add_argument("--llm-cost-sample", type=int, default=0,
                        help="also time LLM selectors (gemma-3-270m) with this sample on the same pool; 0 = skip")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--run-dir", default=str(ROOT / "runs" / "selection_homedepot"))
    parser.add_argument("--out", default=str(RESULTS / "selection.json"))
    args = parser.parse_args()
    if len(set(args.ms_methods)) != len(args.ms_methods):
        parser.error("--ms-methods repeats a method")
    if args.downstream == "llm" and args.random_draws != 1:
        parser.error("--random-draws above 1 needs --downstream lexical (each LLM system takes minutes)")
    if args.pool < 1 or args.dev < 0 or args.sample < 1 or args.llm_cost_sample < 0 or args.random_draws < 1:
        parser.error("--pool and --sample must be positive, --dev and --llm-cost-sample not negative")
    if args.sample >= args.pool:
        parser.error(f"--sample ({args.sample}) must be smaller than --pool ({args.pool}): IM's confusion matrix "
                     "is measured on pool pairs outside its sample")
    return args


def _hash(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------------------------------
# Selection


def run_selection(args: argparse.Namespace, pool: list[Record], backbone: str, sample: int,
                  ms_method: str = "supervisor") -> dict[str, Any]:
    """Run `select` on the pool and return its report, pass masks, kept mask and selector pool probabilities (read
    back from the scores files when nothing was kept), with selector timings that survive a re-run from cached
    scores."""
    from lref.stages.select import REPORT_NAME, SCORES_NAME, EmptySelectionError, SelectConfig, select

    output_dir = Path(args.run_dir) / (f"select_{backbone}" + ("" if ms_method == "supervisor" else f"_{ms_method}"))
    llm = backbone == "llm"
    config = SelectConfig(
        output_dir=str(output_dir), scheme=SCHEME, backbone=backbone,
        model=(args.selector_model if backbone == args.backbone else None),
        im_sample=sample, ci_sample=sample, ms_sample=sample,
        confusion_slice=args.confusion_slice or min(1000, len(pool) - sample), folds=args.folds,
        epochs=args.selector_epochs, max_steps=args.selector_max_steps,
        learning_rate=None if llm else args.selector_lr, batch_size=8 if llm else args.selector_batch_size,
        score_batch_size=args.score_batch_size if llm else 64, seed=args.seed, threads=args.threads,
        label_floor=args.label_floor, ms_method=ms_method,
    )
    started = time.perf_counter()
    try:
        result = select(config, pool)
        report, passes, kept, probs = result.report, result.passes, result.kept, result.probs
    except EmptySelectionError as error:  # nothing kept: the report, per-pair scores and score caches are on disk
        print(f"warning ({backbone} selection): {error}", file=sys.stderr)
        report = json.loads((output_dir / REPORT_NAME).read_text())
        rows = [json.loads(line) for line in (output_dir / SCORES_NAME).read_text().splitlines() if line.strip()]
        passes = {name: np.array([row[f"pass_{name}"] for row in rows]) for name in report["conditions"]}
        kept = np.array([row["kept"] for row in rows])
        probs = {role: np.load(path)["probs"] for role in ("im", "ci", "ms")
                 if (path := output_dir / "selectors" / role / "scores.npz").is_file()}
    wall = time.perf_counter() - started
    return {"report": report, "passes": passes, "kept": kept, "probs": probs,
            "timings": lasting_timings(output_dir, report["timings"]), "wall_s": wall, "config": config}


def lasting_timings(output_dir: Path, timings: dict[str, Any]) -> dict[str, Any]:
    """Selector timings as first measured: a selector reused from cached scores reports 0 s, so the measured times
    are kept in `output_dir/timings.json` and read back for it."""
    path = output_dir / "timings.json"
    stored = json.loads(path.read_text()) if path.is_file() else {}
    for role, timing in timings.items():
        if not timing.get("reused") or role not in stored:
            stored[role] = {key: value for key, value in timing.items() if key != "reused"}
    write_json(path, stored)
    return {role: {**stored[role], "reused": bool(timings[role].get("reused"))} for role in timings}


def cost_summary(run: dict[str, Any], pool_size: int, sample: int) -> dict[str, Any]:
    """Seconds per selector and per pool pair, so the encoder and LLM selectors can be compared."""
    from lref.stages.select import ROLES

    per_selector = {}
    for role in ROLES:
        if role in run["timings"]:
            timing = run["timings"][role]
            total = timing["train_s"] + timing["score_s"]
            per_selector[role] = {**timing, "total_s": round(total, 2),
                                  "s_per_pool_pair": round(total / pool_size, 5)}
    total = sum(t["total_s"] for t in per_selector.values())
    return {
        "backbone": run["config"].backbone,
        "model": run["config"].model_name,
        "sample": sample,
        "pool": pool_size,
        "folds": run["config"].folds,
        "per_selector": per_selector,
        "selectors_total_s": round(total, 2),
        "s_per_selector": round(total / len(per_selector), 2) if per_selector else None,
        "s_per_pool_pair": round(total / pool_size, 5),
        "wall_time_s": round(run["wall_s"], 1),
        "selected": int(run["kept"].sum()),
    }


def random_masks(pool_size: int, size: int, seed: int, draws: int = 1) -> list[np.ndarray]:
    """`draws` seeded random subsets of `size` pool pairs (the first is the single-draw subset of earlier runs)."""
    masks = []
    for draw in range(draws):
        mask = np.zeros(pool_size, dtype=bool)
        tag = f"random_same_size-{seed}" + (f"-{draw}" if draw else "")
        mask[random.Random(tag).sample(range(pool_size), size)] = True
        masks.append(mask)
    return masks


def subsets(run: dict[str, Any], pool_size: int, seed: int) -> dict[str, np.ndarray]:
    """Boolean masks over the pool: every system's training set (plus_ms is the same set as selected)."""
    passes, kept = run["passes"], np.asarray(run["kept"], dtype=bool)
    masks = {"full": np.ones(pool_size, dtype=bool), "selected": kept,
             "random_same_size": random_masks(pool_size, int(kept.sum()), seed)[0]}
    running = np.ones(pool_size, dtype=bool)
    for name in ("im", "ci", "ms"):
        if name in passes:
            running = running & np.asarray(passes[name], dtype=bool)
        masks[f"plus_{name}"] = running.copy()
    return masks


# ---------------------------------------------------------------------------------------------------------------------
# Systems


def train_and_score(
    args: argparse.Namespace, name: str, train: list[Record], dev: list[Record], seen: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """Fine-tune the LLM on `train`, score `dev` and evaluate; a finished adapter and its predictions are reused."""
    from lref.fingerprint import data_hash
    from lref.metrics import evaluate
    from lref.models.loading import read_manifest
    from lref.models.scorer import ScorerConfig
    from lref.predictions import read_predictions, write_predictions
    from lref.stages.sft import SFTStageConfig
    from lref.training.backbones import LLMBackbone

    sft = SFTStageConfig(model=args.model, scheme=SCHEME, epochs=args.epochs, batch_size=args.batch_size,
                         learning_rate=args.lr, seed=args.seed, threads=args.threads, save_steps=100)
    backbone = LLMBackbone(sft, ScorerConfig(batch_size=args.score_batch_size, max_length=sft.max_length,
                                             progress=True, num_threads=args.threads))
    key = _hash(data_hash(train), backbone.settings())[:16]
    if key in seen:  # two systems with the same training set (e.g. plus_ci = selected when MS drops nothing)
        return {**seen[key], "same_data_as": seen[key]["system"]}
    run_dir = Path(args.run_dir)
    adapter_dir = run_dir / "adapters" / key
    before = read_manifest(adapter_dir) if adapter_dir.is_dir() else None
    print(f"[{name}] SFT on {len(train)} pairs -> {adapter_dir}", flush=True)
    adapter = backbone.fit(train, adapter_dir, args.seed)
    manifest = read_manifest(adapter)
    reused_adapter = bool(before) and before.get("created") == manifest.get("created")
    train_s = manifest["train_metrics"]["wall_time_s"]  # of the last run only, when it resumed a checkpoint

    predictions_path = run_dir / "predictions" / f"{key}-{data_hash(dev)[:16]}.jsonl"
    timing_path = predictions_path.with_suffix(".timing.json")
    if predictions_path.is_file() and timing_path.is_file():
        predictions = read_predictions(predictions_path)
        eval_s = json.loads(timing_path.read_text())["eval_s"]
        reused_predictions = True
    else:
        print(f"[{name}] scoring {len(dev)} dev pairs", flush=True)
        started = time.perf_counter()
        predictions = backbone.score(adapter, dev).predictions()
        eval_s = round(time.perf_counter() - started, 2)
        write_predictions(predictions_path, predictions)
        write_json(timing_path, {"eval_s": eval_s})
        reused_predictions = False
    metrics = evaluate(dev, predictions, SCHEME, bootstrap=args.bootstrap, seed=args.seed)
    entry = {
        **{metric: round(metrics[metric], 4) for metric in METRICS},
        "n_train": len(train),
        "train_s": round(train_s, 1),
        "eval_s": round(eval_s, 1),
        "ci95": metrics["ci95"],
        "train_label_counts": manifest.get("label_counts"),
        "train_steps": manifest["train_metrics"].get("steps"),
        "resumed_from_step": manifest["train_metrics"].get("resumed_from_step"),
        "rater_disagreement_share": disagreement_share(train),
        "reused": {"adapter": reused_adapter, "predictions": reused_predictions},
        "adapter": str(adapter),
        "system": name,
    }
    seen[key] = entry
    return entry


def train_and_score_lexical(args: argparse.Namespace, name: str, train: list[Record], dev: list[Record]
                            ) -> dict[str, Any]:
    """Fit the lexical baseline on `train`, score `dev` and evaluate (seconds: nothing is cached)."""
    from lref.baselines.lexical import LexicalConfig, LexicalModel
    from lref.data.records import DataError
    from lref.metrics import evaluate

    started = time.perf_counter()
    try:
        model = LexicalModel(LexicalConfig(scheme=SCHEME, seed=args.seed)).fit(train)
    except (DataError, ValueError) as error:  # e.g. a grade with a single pair: gbdt's validation split fails
        return {"skipped": f"the lexical model cannot fit these pairs: {error}", "n_train": len(train)}
    train_s = time.perf_counter() - started
    started = time.perf_counter()
    predictions = model.predict(dev)
    eval_s = time.perf_counter() - started
    metrics = evaluate(dev, predictions, SCHEME, bootstrap=args.bootstrap, seed=args.seed)
    return {
        **{metric: round(metrics[metric], 4) for metric in METRICS},
        "n_train": len(train),
        "train_s": round(train_s, 1),
        "eval_s": round(eval_s, 1),
        "ci95": metrics["ci95"],
        "train_label_counts": dict(Counter(r.label for r in train)),
        "rater_disagreement_share": disagreement_share(train),
        "system": name,
    }


def random_system(args: argparse.Namespace, name: str, pool: list[Record], size: int, dev: list[Record]
                  ) -> dict[str, Any]:
    """The lexical downstream on `--random-draws` random subsets of `size` pairs: mean figures, and each draw's."""
    tried = [train_and_score_lexical(args, f"{name}[{k}]", [r for r, keep in zip(pool, mask) if keep], dev)
             for k, mask in enumerate(random_masks(len(pool), size, args.seed, args.random_draws))]
    draws = [d for d in tried if "skipped" not in d]
    if not draws:
        return tried[0]
    mean = {metric: round(float(np.mean([d[metric] for d in draws])), 4) for metric in METRICS}
    return {**draws[0], **mean, "system": name, "draws": len(draws), "draws_skipped": len(tried) - len(draws),
            "sd": {metric: round(float(np.std([d[metric] for d in draws])), 4) for metric in METRICS},
            "per_draw": [{metric: d[metric] for metric in ("accuracy", "macro_f1", "weighted_f1")} for d in draws],
            "rater_disagreement_share": round(float(np.mean([d["rater_disagreement_share"] for d in draws])), 4)}


def flag_audit(args: argparse.Namespace, pool: list[Record], runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The share of rater-disagreement pairs among the MS flags, cleanlab's flags (on IM's out-of-fold
    probabilities) and random flags of the same sizes, against the pool's rate."""
    from lref.labels import get_scheme
    from lref.stages.select import confident_learning_flags

    disagree = np.array([bool(r.meta.get("rater_disagreement")) for r in pool])
    flags: dict[str, np.ndarray] = {}
    for method, run in runs.items():
        if "ms" in run["passes"]:
            flags[method] = ~np.asarray(run["passes"]["ms"], dtype=bool)
    if "cleanlab" not in flags:
        im = next((run["probs"]["im"] for run in runs.values() if "im" in run["probs"]), None)
        if im is not None:
            flags["cleanlab"] = confident_learning_flags([r.label for r in pool], im, get_scheme(SCHEME))
    result: dict[str, Any] = {"pool": {"pairs": len(pool), "rater_disagreement_share":
                                       round(float(disagree.mean()), 4)}}
    for method, mask in flags.items():
        size = int(mask.sum())
        randoms = [float(disagree[m].mean()) for m in random_masks(len(pool), size, args.seed + 1,
                                                                    max(args.random_draws, 20))] if size else []
        result[method] = {
            "flagged": size,
            "rater_disagreement_share": round(float(disagree[mask].mean()), 4) if size else None,
            "random_same_size_share": round(float(np.mean(randoms)), 4) if randoms else None,
            "random_draws": len(randoms),
            "flagged_label_counts": dict(Counter(r.label for r, m in zip(pool, mask) if m)),
        }
    if {"supervisor", "cleanlab"} <= set(flags):
        result["overlap_supervisor_cleanlab"] = int((flags["supervisor"] & flags["cleanlab"]).sum())
    result["definition"] = "the raters' mean relevance is not a whole number (meta.rater_disagreement)"
    return result


def disagreement_share(records: list[Record]) -> float | None:
    flags = [bool(r.meta["rater_disagreement"]) for r in records if "rater_disagreement" in r.meta]
    return round(sum(flags) / len(flags), 4) if flags else None


def systems_table(systems: dict[str, dict[str, Any]], downstream: str = "llm"):
    """The paper-style comparison table (rich)."""
    from rich import box
    from rich.table import Table

    model = "Gemma LoRA SFT" if downstream == "llm" else "lexical baseline"
    table = Table(title=f"Home Depot dev, {model} per training set", box=box.SIMPLE_HEAD)
    for column in ("system", "n_train", "accuracy", "macro-F1", "weighted-F1"):
        table.add_column(column, justify="left" if column == "system" else "right")
    for name, entry in systems.items():
        if "skipped" in entry:
            table.add_row(name, str(entry["n_train"]), "skipped", "", "")
            continue
        figures = systems[entry["same_as"]] if "same_as" in entry else entry
        table.add_row(name + (f" (= {entry['same_as']})" if "same_as" in entry else ""), str(figures["n_train"]),
                      *(f"{100 * figures[m]:.2f}" for m in ("accuracy", "macro_f1", "weighted_f1")))
    return table


# ---------------------------------------------------------------------------------------------------------------------


def main() -> None:
    args = parse_args()
    data = Path(args.data)
    if not (data / "train.csv").is_file() or not (data / "dev.csv").is_file():
        sys.exit(f"this benchmark needs the Home Depot train.csv and dev.csv in {data}")
    from rich.console import Console

    from lref.data import load_records
    from lref.stages.select import funnel_table

    started_all = time.perf_counter()
    train_all = load_records(data / "train.csv", format="homedepot")
    dev_all = load_records(data / "dev.csv", format="homedepot")
    if args.pool > len(train_all):
        sys.exit(f"--pool {args.pool} is larger than train.csv ({len(train_all)} pairs)")
    pool = random.Random(f"pool-{args.seed}").sample(train_all, args.pool)
    dev = dev_all if args.dev <= 0 else random.Random(f"dev-{args.seed}").sample(dev_all, min(args.dev, len(dev_all)))

    console = Console()
    runs = {}
    for method in args.ms_methods:
        runs[method] = run_selection(args, pool, args.backbone, args.sample, method)
        console.print(funnel_table(runs[method]["report"]))
    selection = runs[args.ms_methods[0]]
    report = selection["report"]

    masks = subsets(selection, len(pool), args.seed)
    for method in args.ms_methods[1:]:
        extra = subsets(runs[method], len(pool), args.seed)
        for name in ("selected", "random_same_size", "plus_ms"):
            if name in extra:
                masks[f"{name}_{method}"] = extra[name]
    systems: dict[str, dict[str, Any]] = {}
    seen: dict[str, dict[str, Any]] = {}
    for name in list(SYSTEMS) + [name for name in masks if name not in SYSTEMS]:
        mask = masks.get(name)
        selected_name = name.replace("plus_ms", "selected")
        if name.startswith("plus_ms") and mask is not None and np.array_equal(mask, masks[selected_name]):
            systems[name] = {"same_as": selected_name, "n_train": int(mask.sum())}
            continue
        if mask is None:
            systems[name] = {"skipped": "the condition did not run", "n_train": 0}
            continue
        train = [record for record, keep in zip(pool, mask) if keep]
        if len(train) < MIN_TRAIN:
            systems[name] = {"skipped": f"{len(train)} training pairs, fewer than {MIN_TRAIN}",
                             "n_train": len(train)}
            continue
        if args.downstream == "llm":
            systems[name] = train_and_score(args, name, train, dev, seen)
        elif name.startswith("random_same_size"):
            systems[name] = random_system(args, name, pool, len(train), dev)
        else:
            systems[name] = train_and_score_lexical(args, name, train, dev)
        if "skipped" not in systems[name]:
            print(f"[{name}] " + ", ".join(f"{m} {systems[name][m]:.4f}" for m in METRICS), flush=True)
    console.print(systems_table(systems, args.downstream))
    flags = flag_audit(args, pool, runs)
    print("rater disagreement among flagged pairs: " + "; ".join(
        f"{name} {entry['rater_disagreement_share']} (random {entry['random_same_size_share']}, n {entry['flagged']})"
        for name, entry in flags.items() if isinstance(entry, dict) and "flagged" in entry)
        + f"; pool {flags['pool']['rater_disagreement_share']}")

    cost = {args.backbone: cost_summary(selection, len(pool), args.sample)}
    if args.backbone == "llm":
        cost["encoder"] = {"skipped": "--backbone llm: only the LLM selectors ran"}
    elif args.llm_cost_sample > 0:
        if args.llm_cost_sample >= len(pool):
            sys.exit(f"--llm-cost-sample ({args.llm_cost_sample}) must be smaller than --pool ({len(pool)})")
        cost["llm"] = cost_summary(run_selection(args, pool, "llm", args.llm_cost_sample), len(pool),
                                   args.llm_cost_sample)
    else:
        cost["llm"] = {"skipped": "--llm-cost-sample 0"}

    selected = [record for record, keep in zip(pool, selection["kept"]) if keep]
    disagreement = {
        "pool_share": disagreement_share(pool),
        "selected_share": disagreement_share(selected),
        **{f"selected_share_{method}": disagreement_share([r for r, keep in zip(pool, run["kept"]) if keep])
           for method, run in list(runs.items())[1:]},
        "pool": len(pool),
        "selected": len(selected),
        "definition": "the raters' mean relevance is not a whole number (meta.rater_disagreement)",
    }
    wall = time.perf_counter() - started_all
    out = Path(args.out)
    existing = json.loads(out.read_text()) if out.is_file() else {}
    existing.update(
        {
            "systems": systems,
            "disagreement": disagreement,
            "flags": flags,
            "downstream": args.downstream,
            "funnel": {key: report[key] for key in ("funnel", "conditions", "rule", "label_distribution", "band_mix",
                                                    "selector_pool_accuracy", "confusion")},
            **({"funnels": {method: {key: run["report"][key] for key in ("funnel", "conditions", "rule",
                                                                         "label_distribution")}
                            for method, run in runs.items()}} if len(runs) > 1 else {}),
            "cost": cost,
            "sizes": {"train_csv": len(train_all), "dev_csv": len(dev_all), "pool": len(pool), "dev": len(dev),
                      "selector_sample": args.sample, "selected": disagreement["selected"],
                      **{f"n_train_{name}": entry["n_train"] for name, entry in systems.items()}},
            "settings": {**vars(args), "scheme": SCHEME, "selection": asdict(selection["config"])},
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "wall_time_s": round(wall, 1),
            "date": utc_now(),
            "command": "python " + " ".join(sys.argv),
        }
    )
    write_json(out, existing)
    print(f"rater disagreement: pool {disagreement['pool_share']}, selected {disagreement['selected_share']}; "
          f"{wall / 60:.1f} min; wrote {out}")


if __name__ == "__main__":
    main()
