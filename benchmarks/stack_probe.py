"""The two hybrid designs of issue 28 on Home Depot dev: does a gradient-boosting stack over a cross-encoder student's
logits and the lexical match features, or the hybrid student (the same features joined with the encoder inside one
model, `lref.models.hybrid`), beat either part alone?

    python benchmarks/stack_probe.py --train-pairs 8000 --calibration-pairs 2000

1. `calibration-pairs` training pairs (whole queries) are held out, as the pipeline's calibration does.
2. A MiniLM cross-encoder student learns from `train-pairs` human-labelled pairs of the rest (one epoch).
3. The lexical model (25 match features + gradient boosting) learns from all of the rest.
4. On the held-out pairs: the student's label bias is fitted (its calibrated form), the lexical model's too, and two
   stacks (scikit-learn's HistGradientBoostingClassifier) are fitted: `stack` on the student's 3 logits and the 25
   lexical features, `stack_on_lexical` on the student's logits and the lexical model's 3 log-probabilities.
   Nothing is fitted on dev.
5. With `--hybrid`: a hybrid student learns from the same `train-pairs` pairs with the same settings, and its label
   bias is fitted on the held-out pairs like the student's.
6. All of dev: weighted-F1 and the paired differences (query bootstrap), and the per-pair cost of each part.

Writes benchmarks/results/stack_probe.json. Needs ../shared/datasets/homedepot (train.csv, dev.csv).
"""

from __future__ import annotations

import argparse
import time

from common import RESULTS, compare_on_dev, homedepot_with_held_out, machine, probe_student, utc_now


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-pairs", type=int, default=8000, help="human-labelled pairs the student learns from")
    parser.add_argument("--calibration-pairs", type=int, default=2000, help="held-out pairs the stack is fitted on")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hybrid", action="store_true", help="also train and score the hybrid student")
    parser.add_argument("--feature-learning-rate", type=float, default=1e-3, help="the hybrid's feature-head rate")
    parser.add_argument("--work-dir", default="runs/stack_probe", help="the students are kept here (resumable)")
    parser.add_argument("--out", default=str(RESULTS / "stack_probe.json"))
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    from pathlib import Path

    import numpy as np
    import torch
    from sklearn.ensemble import HistGradientBoostingClassifier

    from lref.baselines.lexical import LexicalModel
    from lref.calibration import fit_label_bias
    from lref.io import write_json
    from lref.labels import get_scheme
    from lref.models.cross_encoder import CrossEncoderScorer
    from lref.models.scorer import ScorerConfig
    from lref.pipeline.data import sample
    from lref.predictions import ScoreResult

    torch.set_num_threads(args.threads)
    scheme = get_scheme("graded3")
    train, held_out, dev = homedepot_with_held_out(args.calibration_pairs, args.seed)
    student_train = sample(train, args.train_pairs, args.seed, "student")
    timings: dict[str, float] = {}

    def trained(name: str, **options) -> CrossEncoderScorer:
        folder, seconds = probe_student(Path(args.work_dir) / f"{name}_{args.train_pairs}", student_train, args,
                                        **options)
        if seconds is not None:
            timings[f"{name}_train_s"] = seconds
        return CrossEncoderScorer.from_pretrained(
            folder, config=ScorerConfig(batch_size=64, max_length=args.max_length, num_threads=args.threads))

    student = trained("student")
    hybrid = (trained("hybrid", lexical_features=True, feature_learning_rate=args.feature_learning_rate)
              if args.hybrid else None)
    started = time.perf_counter()
    lexical = LexicalModel().fit(train)
    timings["lexical_fit_s"] = round(time.perf_counter() - started, 1)

    def timed(name: str, function, records):
        started = time.perf_counter()
        value = function(records)
        timings[f"{name}_ms_per_pair"] = round(1000 * (time.perf_counter() - started) / len(records), 3)
        return value

    student_held = student.score(held_out).logits
    student_dev = timed("student", lambda r: student.score(r).logits, dev)
    lexical_held = lexical.score(held_out).logits
    lexical_dev = lexical.score(dev).logits
    features_held = lexical.features_.transform(held_out)
    features_dev = timed("lexical_features", lexical.features_.transform, dev)

    gold_held = np.array([scheme.index(r.label) for r in held_out])
    ids = [r.id for r in dev]

    def calibrated(held: np.ndarray, scored: np.ndarray) -> ScoreResult:
        return ScoreResult(ids, scheme.labels, scored, 3, list(fit_label_bias(held, gold_held)))

    stack = HistGradientBoostingClassifier(max_iter=200, learning_rate=0.05, max_leaf_nodes=15,
                                           l2_regularization=1.0, random_state=args.seed)
    stack.fit(np.hstack([student_held, features_held]), gold_held)
    stack_probs = timed("stack_predict", lambda _: stack.predict_proba(np.hstack([student_dev, features_dev])), dev)
    stack_logits = np.log(np.clip(stack_probs, 1e-9, None))
    # the stack's own label prior can still be off on dev's mix: give it the same bias fit as the others
    stack_held = np.log(np.clip(stack.predict_proba(np.hstack([student_held, features_held])), 1e-9, None))
    # the second design: the lexical model's own probabilities (it learnt from the whole pool) instead of its raw
    # features, so the 2,000 held-out pairs only have to learn how to weigh two judges
    blend = HistGradientBoostingClassifier(max_iter=200, learning_rate=0.05, max_leaf_nodes=15,
                                           l2_regularization=1.0, random_state=args.seed)
    blend.fit(np.hstack([student_held, lexical_held]), gold_held)
    blend_logits = np.log(np.clip(blend.predict_proba(np.hstack([student_dev, lexical_dev])), 1e-9, None))
    systems = {
        "student": calibrated(student_held, student_dev).predictions(),
        "lexical": calibrated(lexical_held, lexical_dev).predictions(),
        "stack": ScoreResult(ids, scheme.labels, stack_logits, 3).predictions(),
        "stack_calibrated": calibrated(stack_held, stack_logits).predictions(),
        "stack_on_lexical": ScoreResult(ids, scheme.labels, blend_logits, 3).predictions(),
    }
    pairs = [("stack", "student"), ("stack", "lexical"), ("student", "lexical"), ("stack_calibrated", "stack"),
             ("stack_on_lexical", "lexical"), ("stack_on_lexical", "student")]
    if hybrid is not None:
        hybrid_held = hybrid.score(held_out).logits
        hybrid_dev = timed("hybrid", lambda r: hybrid.score(r).logits, dev)
        systems["hybrid"] = calibrated(hybrid_held, hybrid_dev).predictions()
        pairs += [("hybrid", "student"), ("hybrid", "lexical"), ("hybrid", "stack_on_lexical")]
    results, paired = compare_on_dev(dev, systems, pairs, scheme, args.seed)
    write_json(args.out, {
        "command": "python benchmarks/stack_probe.py " + " ".join(
            f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}") for k, v in vars(args).items()
            if k != "out" and v is not False),
        "machine": machine(), "date": utc_now(),
        "sizes": {"student_train": len(student_train), "lexical_train": len(train), "held_out": len(held_out),
                  "dev": len(dev)},
        "systems": results, "paired": paired, "timings": timings,
    })
    print(timings)


if __name__ == "__main__":
    main()
