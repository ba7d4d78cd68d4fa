"""How much does a teacher's soft labels add to a cross-encoder student, by training-set size (issue 28)?

    python benchmarks/learning_curve.py --teacher-labels teacher.jsonl --sizes 15000 30000 0

For each size N (0: the whole pool) the same seeded N training pairs train two students with the same settings:

* `human`: the encoder on the human labels alone (cross-entropy);
* `teacher`: the encoder distilled from the teacher's soft labels plus the human labels
  (`lref.stages.distill`, KL + lambda CE, as the pipeline's distill stage).

With `--hybrid` both are hybrid students (`lref.models.hybrid`). The pool is Home Depot train.csv less the
`--calibration-pairs` held out as the pipeline holds them out (whole queries); each student's label bias is fitted on
those and applied on all of dev.csv, where weighted-F1 and the paired difference teacher - human (query bootstrap)
are measured. Nothing is fitted on dev; blind.csv is never read.

The teacher's labels come from a prediction file covering the pool (`id` and `probs` per pair), e.g.
`lref judge --model runs/homedepot/stages/dpo/model --data ../shared/datasets/homedepot/train.csv --format homedepot
--out teacher.jsonl` (the judge applies the model's calibration), or, with `--lexical-teacher`, from the lexical
model's out-of-fold probabilities on the pool (5 folds by query; a cheap teacher, not the LLM, for checking the
script and for the question "does any second opinion help?").

Writes benchmarks/results/learning_curve.json (resumable: the students are kept in --work-dir).
"""

from __future__ import annotations

import argparse
import time

from common import RESULTS, homedepot_with_held_out, machine, utc_now


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--teacher-labels", help="prediction file with the teacher's probabilities of every pool pair")
    source.add_argument("--lexical-teacher", action="store_true",
                        help="use the lexical model's out-of-fold probabilities as the teacher")
    parser.add_argument("--sizes", type=int, nargs="+", default=[15000, 30000, 0],
                        help="training pairs per point (0: the whole pool)")
    parser.add_argument("--calibration-pairs", type=int, default=2000)
    parser.add_argument("--student", default="minilm-l6")
    parser.add_argument("--hybrid", action="store_true", help="hybrid students (lexical features joined)")
    parser.add_argument("--no-match-hints", action="store_true", help="leave out the match hint line")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--ce-weight", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work-dir", default="runs/learning_curve", help="students and teacher labels are kept here")
    parser.add_argument("--out", default=str(RESULTS / "learning_curve.json"))
    return parser.parse_args()


def lexical_teacher_labels(pool, path, seed: int) -> None:
    """The lexical model's out-of-fold probabilities of every pool pair (5 folds by query), as a prediction file."""
    import numpy as np

    from lref.baselines.lexical import LexicalModel
    from lref.data.splits import split_by_query
    from lref.predictions import Prediction, write_predictions

    folds = split_by_query(pool, {str(k): 0.2 for k in range(5)}, seed=f"{seed}-teacher-folds")
    rows = {}
    for name, held in folds.items():
        rest = [r for other, records in folds.items() if other != name for r in records]
        model = LexicalModel().fit(rest)
        for record, probs in zip(held, model.predict_proba(held)):
            labels = model.scheme.labels
            rows[record.id] = Prediction(record.id, labels[int(np.argmax(probs))], dict(zip(labels, probs.tolist())))
    write_predictions(path, [rows[r.id] for r in pool])


def main() -> None:
    args = parse_args()
    from pathlib import Path

    import numpy as np
    import torch

    from lref.calibration import fit_label_bias
    from lref.data.hints import with_match_hints
    from lref.io import write_json
    from lref.labels import get_scheme
    from lref.metrics import evaluate, paired_difference
    from lref.models.cross_encoder import CrossEncoderScorer
    from lref.models.scorer import ScorerConfig
    from lref.pipeline.data import sample
    from lref.predictions import ScoreResult
    from lref.stages.distill import DistillConfig, distill
    from lref.training.cross_encoder import CrossEncoderConfig, train_cross_encoder

    torch.set_num_threads(args.threads)
    scheme = get_scheme("graded3")
    pool, held_out, dev = homedepot_with_held_out(args.calibration_pairs, args.seed)
    if not args.no_match_hints:
        pool, held_out, dev = (with_match_hints(records) for records in (pool, held_out, dev))
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    teacher_file = Path(args.teacher_labels) if args.teacher_labels else work / "lexical_teacher.jsonl"
    if args.lexical_teacher and not teacher_file.is_file():
        lexical_teacher_labels(pool, teacher_file, args.seed)

    settings = dict(epochs=args.epochs, batch_size=args.batch_size, max_length=args.max_length, seed=args.seed,
                    threads=args.threads, progress=True, lexical_features=args.hybrid)
    gold_held = np.array([scheme.index(r.label) for r in held_out])
    ids = [r.id for r in dev]
    points, timings = [], {}
    for size in args.sizes:
        train = sample(pool, size or None, args.seed, "student")
        predictions = {}
        for arm in ("human", "teacher"):
            folder = work / f"{arm}_{len(train)}{'_hybrid' if args.hybrid else ''}"
            if not (folder / "lref_manifest.json").is_file():
                resume = (folder / "checkpoints").is_dir()
                started = time.perf_counter()
                if arm == "human":
                    train_cross_encoder(CrossEncoderConfig(model=args.student, output_dir=str(folder), resume=resume,
                                                           **settings), train)
                else:
                    distill(DistillConfig(teacher_labels=str(teacher_file), student=args.student,
                                          output_dir=str(folder), temperature=args.temperature,
                                          ce_weight=args.ce_weight, resume=resume, **settings), train)
                timings[folder.name + "_train_s"] = round(time.perf_counter() - started, 1)
            scorer = CrossEncoderScorer.from_pretrained(
                folder, config=ScorerConfig(batch_size=64, max_length=args.max_length, num_threads=args.threads))
            bias = fit_label_bias(scorer.score(held_out).logits, gold_held)
            predictions[arm] = ScoreResult(ids, scheme.labels, scorer.score(dev).logits, 3, list(bias)).predictions()
        figures = {arm: {k: evaluate(dev, p, scheme, bootstrap=1000, seed=args.seed)[k]
                         for k in ("weighted_f1", "macro_f1", "quadratic_weighted_kappa", "ci95")}
                   for arm, p in predictions.items()}
        difference = paired_difference(dev, predictions["teacher"], predictions["human"], scheme, bootstrap=1000,
                                       seed=args.seed)
        points.append({"pairs": len(train), **figures, "teacher - human": difference})
        low, high = difference["ci95"]["weighted_f1"]
        print(f"{len(train):6d} pairs: human {figures['human']['weighted_f1']:.4f}  teacher "
              f"{figures['teacher']['weighted_f1']:.4f}  difference {100 * difference['weighted_f1']:+.2f} "
              f"[{100 * low:+.2f}, {100 * high:+.2f}] points")
    write_json(args.out, {
        "command": "python benchmarks/learning_curve.py " + " ".join(
            f"--{k.replace('_', '-')}" + ("" if v is True else " " + (" ".join(map(str, v)) if isinstance(v, list)
                                                                          else str(v)))
            for k, v in vars(args).items() if k != "out" and v not in (False, None)),
        "machine": machine(), "date": utc_now(),
        "teacher": str(teacher_file), "sizes": {"pool": len(pool), "held_out": len(held_out), "dev": len(dev)},
        "points": points, "timings": timings,
    })


if __name__ == "__main__":
    main()
