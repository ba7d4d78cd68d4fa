"""Quality check of the LLM backbone: LoRA SFT of a real LLM on Home Depot train pairs, evaluated on dev.

Requires ../shared/datasets/homedepot/. Writes benchmarks/results/sft_quality.json.

    .venv/bin/python benchmarks/sft_quality.py --train-pairs 6000            # the full run
    .venv/bin/python benchmarks/sft_quality.py --train-pairs 64 --dev-pairs 64 --out /tmp/q.json   # a quick check
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import resource
import sys
import time
from dataclasses import asdict
from pathlib import Path

from common import HOMEDEPOT, RESULTS, ROOT, utc_now

from lref.io import write_json


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--train-pairs", type=int, default=6000, help="random sample of train.csv (seeded)")
    parser.add_argument("--dev-pairs", type=int, default=0, help="random sample of dev.csv; 0 = all pairs")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--class-balance", default="none", choices=["none", "sqrt", "inverse"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run-dir", default=str(ROOT / "runs" / "sft_quality"))
    parser.add_argument("--out", default=str(RESULTS / "sft_quality.json"))
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if not HOMEDEPOT.is_dir():
        sys.exit(f"this benchmark needs the Home Depot data in {HOMEDEPOT}")
    from rich.console import Console

    from lref.data import describe_records, load_records
    from lref.metrics import evaluate, format_report
    from lref.models.loading import load_causal_lm
    from lref.models.scorer import LabelScorer, ScorerConfig
    from lref.predictions import write_predictions
    from lref.stages.sft import SFTStageConfig, train_sft

    rng = random.Random(args.seed)
    train_all = load_records(HOMEDEPOT / "train.csv", format="homedepot")
    dev_all = load_records(HOMEDEPOT / "dev.csv", format="homedepot")
    train = rng.sample(train_all, min(args.train_pairs, len(train_all)))
    dev = dev_all if args.dev_pairs <= 0 else rng.sample(dev_all, min(args.dev_pairs, len(dev_all)))

    config = SFTStageConfig(
        model=args.model,
        scheme="graded3",
        output_dir=str(Path(args.run_dir) / "adapter"),
        learning_rate=args.lr,
        lora_r=args.lora_r,
        lora_alpha=2 * args.lora_r,
        epochs=args.epochs,
        batch_size=args.batch_size,
        class_balance=args.class_balance,
        seed=args.seed,
        save_steps=200,
    )
    started = time.perf_counter()
    adapter = train_sft(config, train)
    train_seconds = time.perf_counter() - started

    model, tokenizer, manifest = load_causal_lm(adapter)
    scorer = LabelScorer(model, tokenizer, "graded3", ScorerConfig(progress=True))
    started = time.perf_counter()
    predictions = scorer.predict(dev)
    score_seconds = time.perf_counter() - started
    write_predictions(Path(args.run_dir) / "dev_predictions.jsonl", predictions)
    metrics = evaluate(dev, predictions, "graded3", bootstrap=1000, seed=args.seed)

    Console().print(format_report(metrics, "graded3"))
    result = {
        "model": args.model,
        "config": asdict(config),
        "train_pairs": len(train),
        "train_label_counts": describe_records(train, "graded3")["label_counts"],
        "dev_pairs": len(dev),
        "train_seconds": round(train_seconds, 1),
        "train_steps": manifest.get("train_metrics", {}).get("steps") if manifest else None,
        "seconds_per_step": (
            round(train_seconds / manifest["train_metrics"]["steps"], 3)
            if manifest and manifest.get("train_metrics", {}).get("steps")
            else None
        ),
        "dev_pairs_per_s": round(len(dev) / score_seconds, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "metrics": metrics,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "date": utc_now(),
        "command": "python " + " ".join(sys.argv),
    }
    write_json(args.out, result)
    print(
        f"dev: accuracy {metrics['accuracy']:.3f} (majority floor {metrics['majority_floor']:.3f}), "
        f"macro-F1 {metrics['macro_f1']:.3f}, weighted-F1 {metrics['weighted_f1']:.3f}, RMSE {metrics.get('rmse')}; "
        f"SFT {train_seconds / 60:.1f} min; wrote {args.out}"
    )


if __name__ == "__main__":
    main()
