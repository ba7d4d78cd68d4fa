"""Stage 2 Multi-CoT tuning on Home Depot: the Stage-1 model, then after EE, RA and DR, in direct and CoT mode.

Starting from a Stage-1 adapter (default: benchmarks/sft_quality.py's), trains EE -> RA -> DR with the offline rules
teacher and the homedepot rule set (scheme graded3) on a seeded pool of train.csv pairs (the SFT sample left out when
its manifest lets us rebuild it). Then evaluates pre/ee/ra/dr:

* direct mode (the label scorer) on `--dev-pairs` seeded dev.csv pairs;
* CoT mode (greedy generation, label parsed, direct label as fallback) on the first `--cot-dev-pairs` of them.

Reports accuracy, macro-F1, weighted-F1, the over-estimate share and pairs/s per mode and stage, the teacher's
throughput and cache hit rate, three generated chains, sizes and wall times. The run folder is resumable: finished
stages with the same inputs are skipped (`--fresh` starts over).

Requires ../shared/datasets/homedepot/. Writes benchmarks/results/cot.json.

    .venv/bin/python benchmarks/cot.py                                                   # the full run
    .venv/bin/python benchmarks/cot.py --train-pairs 200 --samples 8 --steps 2 --dev-pairs 16 --cot-dev-pairs 4 \\
        --max-new-tokens 16 --run-dir /tmp/cot_run --out /tmp/cot.json                   # a quick check
"""

from __future__ import annotations

import argparse
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
KEYS = ("accuracy", "macro_f1", "weighted_f1", "over_estimate_share")


def summary(metrics: dict, pairs: int, seconds: float) -> dict:
    out = {key: metrics[key] for key in KEYS}
    out["pairs_per_s"] = round(pairs / max(seconds, 1e-9), 2)
    out["n"] = pairs
    return out


def evaluate_model(model_ref, dev, cot_dev, args) -> tuple[dict, list[str]]:
    from lref.metrics import evaluate
    from lref.models.generation import generate_predictions
    from lref.models.loading import load_causal_lm
    from lref.models.scorer import LabelScorer, ScorerConfig

    model, tokenizer, _ = load_causal_lm(model_ref)
    scorer = LabelScorer(model, tokenizer, SCHEME, ScorerConfig(batch_size=16, progress=True))
    started = time.perf_counter()
    direct = scorer.predict(dev)
    direct_s = time.perf_counter() - started
    result = {"direct": summary(evaluate(dev, direct, SCHEME, bootstrap=0), len(dev), direct_s)}
    texts: list[str] = []
    if cot_dev:
        predictions, stats = generate_predictions(model_ref, cot_dev, SCHEME, max_new_tokens=args.max_new_tokens,
                                                  batch_size=args.cot_batch_size, model=model, tokenizer=tokenizer)
        result["cot"] = summary(evaluate(cot_dev, predictions, SCHEME, bootstrap=0), len(cot_dev), stats["seconds"])
        result["cot"].update({key: stats[key] for key in ("fallbacks", "fallback_share", "generated_tokens",
                                                          "hit_max_new_tokens")})
        # the direct scorer on the same pairs, to compare the modes like for like
        same = [p for p, r in zip(direct, dev) if r.id in {c.id for c in cot_dev}]
        result["direct_on_cot_pairs"] = {k: evaluate(cot_dev, same, SCHEME, bootstrap=0)[k] for k in KEYS}
        texts = stats["texts"]
    return result, texts


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / "runs" / "sft_quality" / "adapter"),
                        help="the Stage-1 model to start from (an SFT adapter folder, or a zoo name)")
    parser.add_argument("--train-pairs", type=int, default=2000, help="train.csv pool the stages draw from (seeded)")
    parser.add_argument("--samples", type=int, default=300,
                        help="CoT examples per stage (as many direct ones are added at --direct-share 0.5)")
    parser.add_argument("--epochs", type=float, default=1.0, help="epochs per stage")
    parser.add_argument("--dr-epochs", type=float, default=0.5, help="epochs of DR (CoTConfig's default)")
    parser.add_argument("--steps", type=int, default=-1, help="stop each stage after this many steps (-1: the epochs)")
    parser.add_argument("--direct-share", type=float, default=0.5)
    parser.add_argument("--over-estimate-share", type=float, default=0.7)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--class-balance", default="none", choices=["none", "sqrt", "inverse"],
                        help="CoTConfig.class_balance: loss weights by gold label frequency")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--rules", default="homedepot")
    parser.add_argument("--dev-pairs", type=int, default=1500, help="dev.csv pairs for direct mode (seeded sample)")
    parser.add_argument("--cot-dev-pairs", type=int, default=100, help="the first of those pairs also run in CoT mode")
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument("--cot-batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run-dir", default=str(ROOT / "runs" / "cot"))
    parser.add_argument("--fresh", action="store_true", help="delete --run-dir first instead of resuming it")
    parser.add_argument("--out", default=str(RESULTS / "cot.json"))
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if not HOMEDEPOT.is_dir():
        sys.exit(f"this benchmark needs the Home Depot data in {HOMEDEPOT}")
    from lref.data import load_records
    from lref.stages.cot import REPORT_NAME, CoTConfig, train_cot

    train_all = load_records(HOMEDEPOT / "train.csv", format="homedepot")
    dev_all = load_records(HOMEDEPOT / "dev.csv", format="homedepot")
    excluded = sft_training_ids(args.model, train_all)
    candidates = [record for record in train_all if record.id not in excluded]
    pool = random.Random(args.seed + 2).sample(candidates, min(args.train_pairs, len(candidates)))
    dev = random.Random(args.seed).sample(dev_all, min(args.dev_pairs, len(dev_all)))
    cot_dev = dev[: args.cot_dev_pairs]

    if args.fresh:
        shutil.rmtree(args.run_dir, ignore_errors=True)
    config = CoTConfig(
        model=args.model, scheme=SCHEME, output_dir=args.run_dir, teacher="rules", rules=args.rules,
        ee_samples=args.samples, ra_samples=args.samples, dr_samples=args.samples, ee_epochs=args.epochs,
        ra_epochs=args.epochs, dr_epochs=args.dr_epochs, direct_share=args.direct_share,
        over_estimate_share=args.over_estimate_share, learning_rate=args.lr, max_steps=args.steps,
        batch_size=args.batch_size, lora_r=args.lora_r, lora_alpha=2 * args.lora_r, seed=args.seed,
        class_balance=args.class_balance, save_steps=50, logging_steps=5,
    )
    started = time.perf_counter()
    adapters = train_cot(config, pool)
    train_seconds = time.perf_counter() - started
    report = json.loads((Path(args.run_dir) / REPORT_NAME).read_text())

    stages, wall, examples = {}, {}, []
    for name, model_ref in (("pre", args.model), *adapters.items()):
        began = time.perf_counter()
        stages[name], texts = evaluate_model(model_ref, dev, cot_dev, args)
        wall[f"eval_{name}_s"] = round(time.perf_counter() - began, 1)
        if name == "dr":
            examples = [{"id": r.id, "query": r.query, "title": r.title, "gold": r.label, "text": text}
                        for r, text in list(zip(cot_dev, texts))[:3]]
        print(f"{name}: " + "; ".join(
            f"{mode} acc {m['accuracy']:.3f} macro-F1 {m['macro_f1']:.3f} wF1 {m['weighted_f1']:.3f} over "
            f"{m['over_estimate_share']:.3f} {m['pairs_per_s']} pairs/s" for mode, m in stages[name].items()
            if mode in ("direct", "cot")))

    teacher = {task: {k: stage["teacher"].get(k) for k in ("requested", "cache_hits", "generated", "failed",
                                                             "rejected_disagreeing", "hit_rate", "pairs_per_s",
                                                             "seconds", "over_estimate_share")}
               for task, stage in report["stages"].items()}
    result = {
        "model": args.model,
        "teacher": {"name": report["teacher"], "rules": report["rules"], "stages": teacher},
        "stages": stages,
        "examples": examples,
        "sizes": {"train_pool": len(pool), "pool_excludes_sft_sample": bool(excluded), "samples_per_stage":
                  args.samples, "direct_share": args.direct_share, "dev_pairs": len(dev), "cot_dev_pairs": len(cot_dev),
                  "max_new_tokens": args.max_new_tokens},
        "training": {task: {"skipped": stage["skipped"], "n_cot": stage["n_cot"], "n_direct": stage["n_direct"],
                            "wall_time_s": stage["wall_time_s"], "train_metrics": stage["train_metrics"]}
                     for task, stage in report["stages"].items()},
        "wall_times_s": {"train_cot": round(train_seconds, 1), **wall},
        "settings": {"epochs": args.epochs, "dr_epochs": args.dr_epochs, "max_steps": args.steps, "lr": args.lr,
                     "batch_size": args.batch_size, "lora_r": args.lora_r,
                     "over_estimate_share": args.over_estimate_share, "class_balance": args.class_balance,
                     "seed": args.seed},
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "date": utc_now(),
        "command": "python " + " ".join(sys.argv),
    }
    write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
