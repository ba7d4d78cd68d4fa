"""Distillation on Home Depot: the LLM teacher, the student distilled from it, and the same encoder on human labels.

Train pool: the first --pool pairs of a seeded shuffle of train.csv; dev: dev.csv (or --dev-limit pairs of it).
(a) "student": `lref.stages.distill.distill` from the teacher's soft labels (+ λ·CE on the human labels);
(b) "bert": the same architecture and settings on the human labels only (`train_cross_encoder`, plain CE).
The teacher is evaluated from --teacher-dev-predictions when that file covers the dev pairs, else scored.
Requires ../shared/datasets/homedepot/. Writes benchmarks/results/distill.json. A re-run in the same --run-dir reuses
the cached teacher scores and resumes both trainings; use a fresh --run-dir for another pool or other settings.

    .venv/bin/python benchmarks/distill.py                     # the full comparison (teacher: runs/sft_quality/adapter)
    .venv/bin/python benchmarks/distill.py --pool 64 --dev-limit 64 --epochs 0.1 --out /tmp/d.json  # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from dataclasses import asdict
from pathlib import Path

from common import HOMEDEPOT, RESULTS, ROOT, utc_now

from lref.io import write_json
from lref.labels import get_scheme

SCHEME = get_scheme("graded3")
METRICS = ("accuracy", "macro_f1", "weighted_f1", "rmse", "over_estimate_share", "majority_floor")


def teacher_predictions(args, dev, run_dir: Path):
    """The teacher's dev predictions: from the given file when it covers every dev pair, else scored now."""
    from lref.predictions import read_predictions, write_predictions

    path = Path(args.teacher_dev_predictions) if args.teacher_dev_predictions else None
    if path and path.is_file():
        by_id = {p.id: p for p in read_predictions(path, SCHEME)}
        if all(r.id in by_id for r in dev):
            return [by_id[r.id] for r in dev], f"read from {path}", 0.0
        print(f"{path} does not cover every dev pair; scoring the teacher", file=sys.stderr)
    from lref.models.loading import load_causal_lm
    from lref.models.scorer import LabelScorer, ScorerConfig

    model, tokenizer, _ = load_causal_lm(args.teacher)
    started = time.perf_counter()
    predictions = LabelScorer(model, tokenizer, SCHEME, ScorerConfig(progress=True)).predict(dev)
    seconds = time.perf_counter() - started
    write_predictions(run_dir / "teacher_dev_predictions.jsonl", predictions)
    return predictions, "scored", seconds


def summary(metrics: dict) -> dict:
    return {key: metrics.get(key) for key in METRICS} | {"per_class": metrics.get("per_class")}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default=str(ROOT / "runs" / "sft_quality" / "adapter"))
    parser.add_argument(
        "--teacher-dev-predictions", default=str(ROOT / "runs" / "sft_quality" / "dev_predictions.jsonl")
    )
    parser.add_argument("--student", default="minilm-l6", help="minilm-l6, mpnet-base or an HF encoder folder")
    parser.add_argument("--pool", type=int, default=6000, help="first N pairs of a seeded shuffle of train.csv")
    parser.add_argument("--dev-limit", type=int, default=0, help="first N dev pairs; 0 = all")
    parser.add_argument("--candidates-per-query", type=int, default=0)
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--ce-weight", type=float, default=0.5)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run-dir", default=str(ROOT / "runs" / "distill"))
    parser.add_argument("--out", default=str(RESULTS / "distill.json"))
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if not HOMEDEPOT.is_dir():
        sys.exit(f"this benchmark needs the Home Depot data in {HOMEDEPOT}")
    from lref.data import load_records
    from lref.metrics import evaluate
    from lref.models.cross_encoder import CrossEncoderScorer
    from lref.models.scorer import ScorerConfig
    from lref.predictions import write_predictions
    from lref.stages.distill import DistillConfig, distill
    from lref.training.cross_encoder import CrossEncoderConfig, train_cross_encoder

    run_dir = Path(args.run_dir)
    train_all = load_records(HOMEDEPOT / "train.csv", format="homedepot", scheme=SCHEME)
    random.Random(args.seed).shuffle(train_all)
    pool = train_all[: args.pool]
    dev = load_records(HOMEDEPOT / "dev.csv", format="homedepot", scheme=SCHEME)
    dev = dev[: args.dev_limit] if args.dev_limit > 0 else dev
    timings: dict[str, float] = {}

    teacher_preds, teacher_source, timings["teacher_dev_scoring_s"] = teacher_predictions(args, dev, run_dir)

    config = DistillConfig(
        teacher=args.teacher, student=args.student, scheme=SCHEME.name, output_dir=str(run_dir / "student"),
        temperature=args.temperature, ce_weight=args.ce_weight, candidates_per_query=args.candidates_per_query,
        epochs=args.epochs, learning_rate=args.lr, batch_size=args.batch_size, max_length=args.max_length,
        threads=args.threads, seed=args.seed, resume=(run_dir / "student" / "checkpoints").is_dir(),
    )
    started = time.perf_counter()
    student_dir = distill(config, pool)
    timings["student_total_s"] = round(time.perf_counter() - started, 1)

    bert_config = CrossEncoderConfig(
        model=args.student, scheme=SCHEME.name, output_dir=str(run_dir / "bert"), learning_rate=args.lr,
        epochs=args.epochs, batch_size=args.batch_size, max_length=args.max_length, seed=args.seed,
        threads=args.threads, resume=(run_dir / "bert" / "checkpoints").is_dir(),
    )
    started = time.perf_counter()
    bert_dir = train_cross_encoder(bert_config, pool)
    timings["bert_train_s"] = round(time.perf_counter() - started, 1)

    scorer_config = ScorerConfig(batch_size=64, max_length=args.max_length, progress=True, num_threads=args.threads)
    results = {"teacher": evaluate(dev, teacher_preds, SCHEME, bootstrap=0)}
    for name, folder in (("student", student_dir), ("bert", bert_dir)):
        started = time.perf_counter()
        predictions = CrossEncoderScorer.from_pretrained(folder, config=scorer_config).predict(dev)
        timings[f"{name}_dev_scoring_s"] = round(time.perf_counter() - started, 1)
        write_predictions(run_dir / f"{name}_dev_predictions.jsonl", predictions)
        results[name] = evaluate(dev, predictions, SCHEME, bootstrap=0)

    print(f"{'model':<8} {'acc':>6} {'macroF1':>8} {'wF1':>6} {'RMSE':>6}")
    for name, metrics in results.items():
        rmse = metrics.get("rmse")
        print(f"{name:<8} {metrics['accuracy']:6.3f} {metrics['macro_f1']:8.3f} {metrics['weighted_f1']:6.3f} "
              f"{rmse if rmse is None else f'{rmse:6.3f}':>6}")
    distill_info = json.loads((student_dir / "lref_manifest.json").read_text())["distill"]
    write_json(args.out, {
        **{name: summary(metrics) for name, metrics in results.items()},
        "sizes": {"pool": len(pool), "dev": len(dev), "pairs": distill_info["pairs"]},
        "teacher": summary(results["teacher"]) | {"model": args.teacher, "dev_predictions": teacher_source},
        "settings": {"distill": asdict(config), "bert": asdict(bert_config)},
        "teacher_cache": distill_info["teacher_cache"],
        "wall_times_s": timings,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "date": utc_now(),
        "command": "python " + " ".join(sys.argv),
    })
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
