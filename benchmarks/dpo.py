"""Stage 3 DPO de-biasing on Home Depot: the same model on dev before and after DPO.

Mines preference pairs (gold in the top-k, top-1 wrong) from a pool of train.csv pairs with the given model (by
default the SFT adapter of benchmarks/sft_quality.py, whose own training sample is left out of the pool when its
manifest lets us rebuild it), trains DPO + alpha * SFT, and scores dev with both models. Reports accuracy, macro-F1,
weighted-F1, per-class precision/recall, over/under-estimate rates, the confusion matrix and the mining statistics.

Requires ../shared/datasets/homedepot/. Writes benchmarks/results/dpo.json.

    .venv/bin/python benchmarks/dpo.py --model runs/sft_quality/adapter --pool 3000             # the full run
    .venv/bin/python benchmarks/dpo.py --model gemma-3-270m --pool 64 --dev 64 --steps 2 --out /tmp/dpo.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import shutil
import sys
import time
from pathlib import Path

from common import HOMEDEPOT, RESULTS, ROOT, sft_training_ids, utc_now

from lref.io import write_json

SCHEME = "graded3"


def summary(metrics: dict) -> dict:
    keys = ("accuracy", "macro_f1", "weighted_f1", "over_estimate_share", "under_estimate_share", "confusion", "n")
    out = {key: metrics[key] for key in keys}
    out["per_class"] = {
        label: {"precision": row["precision"], "recall": row["recall"], "f1": row["f1"], "support": row["support"]}
        for label, row in metrics["per_class"].items()
    }
    out["predicted_counts"] = dict(zip(metrics["labels"], (sum(col) for col in zip(*metrics["confusion"]))))
    return out


def score_dev(model_ref: str | Path, dev, batch_size: int, cache: Path | None = None) -> tuple[dict, float]:
    """Metrics of `model_ref` on dev and the scoring seconds; with `cache`, predictions (and their seconds) are
    reused when the same model scored the same dev pairs before."""
    from lref.metrics import evaluate
    from lref.models.loading import load_causal_lm
    from lref.models.scorer import LabelScorer, ScorerConfig
    from lref.predictions import read_predictions, write_predictions

    if cache is not None and cache.is_file():
        stored = json.loads(cache.read_text())
        return summary(evaluate(dev, read_predictions(stored["predictions"]), SCHEME, bootstrap=0)), stored["seconds"]
    model, tokenizer, _ = load_causal_lm(model_ref)
    scorer = LabelScorer(model, tokenizer, SCHEME, ScorerConfig(batch_size=batch_size, progress=True))
    started = time.perf_counter()
    predictions = scorer.predict(dev)
    seconds = time.perf_counter() - started
    if cache is not None:
        write_predictions(cache.with_suffix(".jsonl"), predictions)
        write_json(cache, {"predictions": str(cache.with_suffix(".jsonl")), "seconds": seconds})
    return summary(evaluate(dev, predictions, SCHEME, bootstrap=0)), seconds


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / "runs" / "sft_quality" / "adapter"),
                        help="model to de-bias (an SFT/CoT adapter folder, or a zoo name)")
    parser.add_argument("--pool", type=int, default=3000, help="train.csv pairs to mine from (seeded sample)")
    parser.add_argument("--dev", type=int, default=0, help="dev.csv pairs to evaluate on (seeded sample); 0 = all")
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--over-estimates-only", action="store_true")
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--alpha", type=float, default=0.65, help="weight of the SFT loss on chosen")
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--steps", type=int, default=-1, help="stop after this many optimizer steps (-1: the epochs)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--min-pairs", type=int, default=16)
    parser.add_argument("--collapse-tolerance", type=float, default=1.0)
    parser.add_argument("--guard-fraction", type=float, default=0.2, help="share of the pool held out as guard slice")
    parser.add_argument("--guard-steps", type=int, default=10)
    parser.add_argument("--guard-objective", default="weighted_f1", choices=("over_estimate", "weighted_f1"))
    parser.add_argument("--guard-tolerance", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run-dir", default=str(ROOT / "runs" / "dpo"))
    parser.add_argument("--out", default=str(RESULTS / "dpo.json"))
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if not HOMEDEPOT.is_dir():
        sys.exit(f"this benchmark needs the Home Depot data in {HOMEDEPOT}")
    from lref.data import load_records
    from lref.fingerprint import data_hash
    from lref.models.loading import read_manifest
    from lref.models.zoo import resolve_model
    from lref.stages.dpo import DPOStageConfig, train_dpo

    train_all = load_records(HOMEDEPOT / "train.csv", format="homedepot")
    dev_all = load_records(HOMEDEPOT / "dev.csv", format="homedepot")
    excluded = sft_training_ids(args.model, train_all)
    rng = random.Random(args.seed + 1)  # another draw than the SFT sample's
    candidates = [record for record in train_all if record.id not in excluded]
    pool = rng.sample(candidates, min(args.pool, len(candidates)))
    dev = dev_all if args.dev <= 0 else random.Random(args.seed).sample(dev_all, min(args.dev, len(dev_all)))

    adapter_dir = Path(args.run_dir) / "adapter"
    shutil.rmtree(adapter_dir, ignore_errors=True)  # each run starts afresh
    config = DPOStageConfig(
        model=args.model, scheme=SCHEME, output_dir=str(adapter_dir), top_k=args.top_k,
        over_estimates_only=args.over_estimates_only, min_pairs=args.min_pairs, beta=args.beta,
        sft_weight=args.alpha, learning_rate=args.lr, epochs=args.epochs, max_steps=args.steps,
        batch_size=args.batch_size, lora_r=args.lora_r, lora_alpha=2 * args.lora_r,
        collapse_tolerance=args.collapse_tolerance, seed=args.seed, save_steps=200, logging_steps=5,
        guard_fraction=args.guard_fraction, guard_steps=args.guard_steps, guard_objective=args.guard_objective,
        guard_tolerance=args.guard_tolerance,
    )

    model_key = hashlib.sha256(f"{resolve_model(args.model)}|{data_hash(dev)}".encode()).hexdigest()[:16]
    before, before_s = score_dev(args.model, dev, 16, cache=Path(args.run_dir) / f"before_{model_key}.json")
    started = time.perf_counter()
    result_model = train_dpo(config, pool)
    dpo_seconds = time.perf_counter() - started
    manifest = read_manifest(adapter_dir) or {}
    skipped = manifest.get("kind") == "skipped"
    after, after_s = (before, before_s) if skipped else score_dev(result_model, dev, 16)

    mining = manifest.get("mining", {})
    result = {
        "model": args.model,
        "beta": args.beta,
        "alpha": args.alpha,
        "top_k": args.top_k,
        "over_estimates_only": args.over_estimates_only,
        "learning_rate": args.lr,
        "epochs": args.epochs,
        "max_steps": args.steps,
        "guard": {"fraction": args.guard_fraction, "steps": args.guard_steps, "objective": args.guard_objective,
                  "tolerance": args.guard_tolerance},
        "pool_pairs": len(pool),
        "pool_excludes_sft_sample": bool(excluded),
        "dev_pairs": len(dev),
        "skipped": skipped,
        "before": before,
        "after": after,
        "delta": {key: after[key] - before[key] for key in
                  ("accuracy", "macro_f1", "weighted_f1", "over_estimate_share", "under_estimate_share")},
        "mining": mining,
        "train_metrics": manifest.get("train_metrics"),
        "collapse_guard": {k: v for k, v in (manifest.get("collapse_guard") or {}).items() if k != "log"},
        "recall_guard": manifest.get("recall_guard"),
        "dpo_seconds": round(dpo_seconds, 1),
        "dev_pairs_per_s": round(len(dev) / max(after_s, 1e-9), 1),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "date": utc_now(),
        "command": "python " + " ".join(sys.argv),
    }
    write_json(args.out, result)

    labels = list(before["per_class"])
    print(f"mining: {mining.get('errors')} errors in {mining.get('scored')} pool pairs, over-estimates "
          f"{mining.get('over_estimate_share')}, gold at rank 2 {mining.get('gold_at_rank2_share')}, "
          f"{mining.get('pairs')} pairs" + (" (DPO skipped)" if skipped else ""))
    for name, metrics in (("before", before), ("after", after)):
        per_class = ", ".join(f"{label} P {metrics['per_class'][label]['precision']:.3f} "
                              f"R {metrics['per_class'][label]['recall']:.3f}" for label in labels)
        print(f"{name:>6}: acc {metrics['accuracy']:.3f}, macro-F1 {metrics['macro_f1']:.3f}, wF1 "
              f"{metrics['weighted_f1']:.3f}, over {metrics['over_estimate_share']:.3f}, under "
              f"{metrics['under_estimate_share']:.3f}; {per_class}; confusion {metrics['confusion']}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
