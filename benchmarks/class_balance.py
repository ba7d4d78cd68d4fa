"""Does class-balanced loss keep the `llm-base` judge from collapsing onto the majority grade (issue 28, item 4)?

The failure case: on a skewed 4-grade scheme, llm-base (Gemma-3-270M + LoRA, 1,000 pairs, lr 2e-4, 1 epoch) answered
almost only the majority grade. This script trains llm-base as the pipeline does (`lref.stages.sft.train_sft` on a
seeded sample of the training pairs, tag "llm-base"; the pipeline's data preparation `lref.pipeline.data`: query-
disjoint evaluation split and calibration pairs held out by whole queries) once per `class_balance` value, and
scores it on held-out pairs raw and calibrated (the per-label bias fitted on the calibration pairs,
`lref.calibration.calibrate_scores`, as `lref.pipeline.evaluation` does). Datasets:

* `synthetic`: the synthetic catalog in the skewed 4-grade scheme crowdflower4 (about 48% grade 1; esci4's largest
  grade is 34%), `--synthetic-pairs` pairs, 20% of the queries held out for evaluation (the pipeline's default
  `eval_fraction`), no match hints (the pipeline's default);
* `homedepot`: train.csv for training and calibration pairs (disjoint by query), dev.csv for evaluation (a seeded
  subset of whole queries), graded3, with match hints as configs/homedepot.yaml sets them. blind.csv is never read.

Per run: weighted-F1, macro-F1, quadratic-weighted kappa, per-class recall and prediction shares
(`lref.metrics.evaluate`) raw and calibrated, `lref.collapse.check_collapse` on the evaluation pairs (raw and
calibrated) and on the calibration pairs (calibrated: what the pipeline checks), train wall time, evaluation pairs/s;
then paired differences against `none` on the same pairs (`lref.metrics.paired_difference`, query bootstrap). The
JSON is rewritten after every run,
so a run cut short keeps what finished. Adapters stay in --work-dir; a finished one is reused.

    .venv/bin/python benchmarks/class_balance.py --threads 1                 # all six runs
    .venv/bin/python benchmarks/class_balance.py --train-pairs 64 --runs synthetic:none --out /tmp/cb.json  # timing
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from common import HOMEDEPOT, RESULTS, ROOT, machine, utc_now

DATASETS = ("synthetic", "homedepot")
BALANCES = ("none", "sqrt", "inverse")
DEFAULT_RUNS = ("synthetic:none", "synthetic:sqrt", "homedepot:none", "homedepot:sqrt", "synthetic:inverse",
                "homedepot:inverse")
KEYS = ("weighted_f1", "macro_f1", "accuracy", "quadratic_weighted_kappa", "majority_floor", "over_estimate_share")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", default=list(DEFAULT_RUNS),
                        help="dataset:class_balance pairs, run in this order")
    parser.add_argument("--train-pairs", type=int, default=1000, help="llm-base training pairs")
    parser.add_argument("--calibration-pairs", type=int, default=1000,
                        help="training pairs (whole queries) held out to fit the label bias")
    parser.add_argument("--eval-pairs", type=int, default=800, help="held-out pairs scored (whole queries, at least)")
    parser.add_argument("--synthetic-pairs", type=int, default=6000, help="size of the synthetic catalog")
    parser.add_argument("--synthetic-scheme", default="crowdflower4")
    parser.add_argument("--synthetic-short", action="store_true",
                        help="synthetic products without descriptions and attribute maps (shorter prompts, about half "
                        "the cost; the titles still name the attributes and the labels are unchanged)")
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=8, help="training batch (the stage's default)")
    parser.add_argument("--score-batch-size", type=int, default=16, help="scoring batch (the pipeline's eval default)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bootstrap", type=int, default=1000, help="query resamples for intervals and differences")
    parser.add_argument("--work-dir", default=str(ROOT / "runs" / "class_balance"))
    parser.add_argument("--out", default=str(RESULTS / "class_balance.json"))
    args = parser.parse_args()
    for run in args.runs:
        dataset, _, balance = run.partition(":")
        if dataset not in DATASETS or balance not in BALANCES:
            parser.error(f"--runs: {run!r} is not DATASET:BALANCE with DATASET in {DATASETS}, BALANCE in {BALANCES}")
    return args


def whole_queries(records: list, n: int, seed: int) -> list:
    """A seeded subset of whole queries holding at least `n` of `records` (all of them when fewer), input order."""
    import random
    from collections import Counter

    from lref.data.splits import normalise_query

    queries = sorted({normalise_query(r.query) for r in records})
    random.Random(f"{seed}-class-balance-eval").shuffle(queries)
    sizes = Counter(normalise_query(r.query) for r in records)
    chosen, count = set(), 0
    for query in queries:
        if count >= n:
            break
        chosen.add(query)
        count += sizes[query]
    return [r for r in records if normalise_query(r.query) in chosen]


def load_split(args: argparse.Namespace, dataset: str) -> dict:
    """Training sample, calibration and evaluation pairs of `dataset`, prepared by the pipeline's own code."""
    from lref.calibration import CalibrationConfig
    from lref.data.hints import with_match_hints
    from lref.pipeline.config import DataConfig, PipelineConfig
    from lref.pipeline.data import load_data, sample

    if dataset == "synthetic":
        synthetic = {"n_pairs": args.synthetic_pairs, "scheme": args.synthetic_scheme}
        if args.synthetic_short:
            synthetic.update(descriptions=False, attributes=False)
        data = DataConfig(format="synthetic", synthetic=synthetic)
        hints = False
    else:
        data = DataConfig(format="homedepot", train=str(HOMEDEPOT / "train.csv"), eval=str(HOMEDEPOT / "dev.csv"),
                          scheme="graded3")
        hints = True  # configs/homedepot.yaml: match_hints: true (added below, to the used pairs only: same text)
    config = PipelineConfig(seed=args.seed, model=args.model, data=data, calibration=CalibrationConfig(),
                            calibration_pairs=args.calibration_pairs)
    run_data = load_data(config)
    train = sample(run_data.train, args.train_pairs, args.seed, "llm-base")  # the pipeline's stage sample
    held_out = whole_queries(run_data.eval, args.eval_pairs, args.seed)
    calibration = run_data.calibration
    if hints:
        train, calibration, held_out = (with_match_hints(r) for r in (train, calibration, held_out))
    return {"scheme": run_data.scheme, "train": train, "calibration": calibration, "eval": held_out,
            "match_hints": hints}


def label_shares(records: list, labels) -> dict:
    from collections import Counter

    counts = Counter(r.label for r in records)
    return {label: round(counts[label] / len(records), 4) for label in labels}


def figures(metrics: dict, check: dict) -> dict:
    """The headline of one `evaluate` result and its collapse check."""
    return {
        **{key: round(metrics[key], 4) if metrics[key] is not None else None for key in KEYS},
        "ci95": {key: [round(v, 4) for v in metrics["ci95"][key]] for key in ("weighted_f1", "macro_f1",
                                                                               "quadratic_weighted_kappa")
                 if key in metrics.get("ci95", {})},
        "per_class_recall": {label: round(row["recall"], 4) for label, row in metrics["per_class"].items()},
        "predicted_shares": check["predicted_shares"],
        "prediction_entropy": check["prediction_entropy"],
        "collapsed": check["collapsed"],
        "collapse_reasons": check["reasons"],
        "silent_labels": check["silent_labels"],
        "confusion": metrics["confusion"],
    }


def run_one(args: argparse.Namespace, dataset: str, balance: str, split: dict) -> tuple[dict, dict]:
    """Train (or reuse) one adapter, score it, return its figures and its raw and calibrated predictions."""
    from lref.calibration import CalibrationConfig, calibrate_scores
    from lref.collapse import check_collapse
    from lref.metrics import evaluate
    from lref.models.factory import make_scorer
    from lref.models.loading import read_manifest
    from lref.models.scorer import ScorerConfig
    from lref.predictions import ScoreResult
    from lref.stages.sft import SFTStageConfig, train_sft

    scheme = split["scheme"]
    folder = Path(args.work_dir) / f"{dataset}_{balance}_n{args.train_pairs}_seed{args.seed}"
    config = SFTStageConfig(model=args.model, scheme=scheme, output_dir=str(folder), learning_rate=args.lr,
                            epochs=args.epochs, batch_size=args.batch_size, class_balance=balance, seed=args.seed,
                            threads=args.threads, progress=False, bf16=False)
    manifest = read_manifest(folder) if (folder / "lref_manifest.json").is_file() else None
    reused = manifest is not None and manifest.get("config", {}).get("class_balance") == balance \
        and manifest.get("n_train") == len(split["train"])
    if not reused:
        print(f"[{utc_now()}] {dataset}/{balance}: training on {len(split['train'])} pairs", flush=True)
        train_sft(config, split["train"])
        manifest = read_manifest(folder)
    train_metrics = manifest["train_metrics"]
    scorer = make_scorer(folder, kind="llm", scheme=scheme, calibrated=False,
                         config=ScorerConfig(batch_size=args.score_batch_size, max_length=512, num_threads=args.threads,
                                             bf16=False))
    started = time.perf_counter()
    raw = scorer.score(split["eval"])
    eval_seconds = time.perf_counter() - started
    started = time.perf_counter()
    raw_calibration = scorer.score(split["calibration"])
    calibration_seconds = time.perf_counter() - started
    document = calibrate_scores(raw_calibration.logits, split["calibration"], scheme, CalibrationConfig())
    bias = list(document["bias"].values())
    calibrated = ScoreResult(raw.ids, raw.labels, raw.logits, raw.top_k, bias)
    calibrated_calibration = ScoreResult(raw_calibration.ids, raw_calibration.labels, raw_calibration.logits,
                                         raw_calibration.top_k, bias)
    gold = [r.label for r in split["eval"]]
    result = {}
    for name, scores in (("raw", raw), ("calibrated", calibrated)):
        metrics = evaluate(split["eval"], scores.predictions(), scheme, bootstrap=args.bootstrap, seed=args.seed)
        result[name] = figures(metrics, check_collapse(gold, scores.predicted, scheme))
    pipeline_check = check_collapse([r.label for r in split["calibration"]], calibrated_calibration.predicted, scheme)
    result.update(
        class_balance=balance,
        adapter=str(folder),
        reused_adapter=reused,
        class_weights=manifest.get("class_weights"),
        calibration_bias=document["bias"],
        calibration_objective={"objective": document["objective"], "before": document["before"],
                               "after": document["after"]},
        pipeline_collapse_check={"checked_on": "calibration (calibrated)", "collapsed": pipeline_check["collapsed"],
                                 "reasons": pipeline_check["reasons"],
                                 "macro_f1": pipeline_check["macro_f1"],
                                 "majority_macro_f1": pipeline_check["majority_macro_f1"],
                                 "prediction_entropy": pipeline_check["prediction_entropy"]},
        train_wall_s=train_metrics["wall_time_s"],
        train_steps=train_metrics["steps"],
        s_per_step=train_metrics["s_per_step"],
        final_loss=round(train_metrics["final_loss"], 4),
        mean_loss=round(train_metrics["mean_loss"], 4),
        eval_pairs_per_s=round(len(split["eval"]) / eval_seconds, 2),
        eval_seconds=round(eval_seconds, 1),
        calibration_score_seconds=round(calibration_seconds, 1),
    )
    for name in ("raw", "calibrated"):
        r = result[name]
        print(f"[{utc_now()}] {dataset}/{balance} {name:10s}: wF1 {r['weighted_f1']:.4f} macro-F1 {r['macro_f1']:.4f} "
              f"QWK {r['quadratic_weighted_kappa']:.4f} collapsed {r['collapsed']} shares {r['predicted_shares']}",
              flush=True)
    print(f"    train {result['train_wall_s']} s ({result['s_per_step']} s/step), eval {result['eval_pairs_per_s']} "
          "pairs/s", flush=True)
    return result, {"raw": raw.predictions(), "calibrated": calibrated.predictions()}


def main() -> None:
    args = parse_args()
    import torch

    from lref.data.splits import normalise_query
    from lref.io import write_json
    from lref.labels import get_scheme
    from lref.metrics import paired_difference

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    command = "python benchmarks/class_balance.py " + " ".join(sys.argv[1:])
    splits: dict[str, dict] = {}
    systems: dict[str, dict] = {}
    predictions: dict[str, dict] = {}
    paired: dict[str, dict] = {}
    sizes: dict[str, dict] = {}
    for run in args.runs:
        dataset, _, balance = run.partition(":")
        if dataset not in splits:
            splits[dataset] = split = load_split(args, dataset)
            labels = get_scheme(split["scheme"]).labels
            sizes[dataset] = {
                "scheme": split["scheme"], "match_hints": split["match_hints"],
                **{part: len(split[part]) for part in ("train", "calibration", "eval")},
                "eval_queries": len({normalise_query(r.query) for r in split["eval"]}),
                **{f"{part}_label_shares": label_shares(split[part], labels)
                   for part in ("train", "calibration", "eval")},
            }
            print(f"[{utc_now()}] {dataset}: {sizes[dataset]}", flush=True)
        split = splits[dataset]
        systems.setdefault(dataset, {})[balance], predictions.setdefault(dataset, {})[balance] = run_one(
            args, dataset, balance, split)
        if balance != "none" and "none" in predictions[dataset]:
            for name in ("raw", "calibrated"):
                difference = paired_difference(split["eval"], predictions[dataset][balance][name],
                                               predictions[dataset]["none"][name], split["scheme"],
                                               bootstrap=args.bootstrap, seed=args.seed)
                paired.setdefault(dataset, {})[f"{balance} - none ({name})"] = {
                    key: (round(difference[key], 4), [round(v, 4) for v in difference["ci95"][key]])
                    for key in ("weighted_f1", "macro_f1", "accuracy")}
        write_json(args.out, {
            "command": command,
            "machine": machine() + f"; torch threads {args.threads}, float32",
            "date": utc_now(),
            "settings": {k: v for k, v in vars(args).items() if k not in ("out",)},
            "sizes": sizes,
            "systems": systems,
            "paired_vs_none": paired,
            "wall_time_s": round(time.perf_counter() - started, 1),
        })
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
