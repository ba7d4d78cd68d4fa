"""How small can the served student be? Students with only the first N of MiniLM-L6's transformer layers
(`encoder_layers`), hybrid by default (the lexical match features joined in, `lref.models.hybrid`; with
`--lexical-prior` also the lexical model's out-of-fold log-probabilities added to the logits), each trained on
the same human-labelled Home Depot pairs, exported to ONNX and scored on all of dev as they would serve.

    python benchmarks/student_size.py --train-pairs 8000 --layers 6 3 2 1 [--plain | --lexical-prior] [--work-dir DIR]

1. `calibration-pairs` training pairs (whole queries) are held out, as the pipeline holds out its calibration pairs;
   the students learn from a seeded sample of `train-pairs` of the rest (one epoch), the lexical model from all of it.
2. Each student is exported (`lref.models.onnx.export_student`: fp32 and int8 graphs). Each graph scores the held-out
   pairs (its label bias is fitted there) and all of dev, `batch-size` pairs a call as `lref judge` scores: the dev
   pass is timed (pairs/s), then `latency-pairs` dev pairs are scored one call each (p50/p99 ms, tokenising and
   match features included), as one request to `lref serve student` would be.
3. The lexical match features of one pair at a time, on the sparse path and the per-pair path
   (`LexicalFeatures.transform(method=...)`), p50/p99 ms over the same `latency-pairs` pairs.
4. Weighted-F1 on all dev with query-bootstrap intervals, and paired differences against the deepest student and
   against lexical, for the graph that serves (int8).

The students are kept in --work-dir and resumed; a depth of 6 with the default settings is the hybrid of
benchmarks/stack_probe.py --hybrid (the same folder name), so one work dir serves both. Speed figures depend on the
CPU and on what else runs: the machine, the thread count and the load average before and after each timing are
written with them. Writes benchmarks/results/student_size.json. Needs ../shared/datasets/homedepot.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time

from common import (
    RESULTS,
    compare_on_dev,
    homedepot_with_held_out,
    load_average,
    machine,
    probe_student,
    utc_now,
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-pairs", type=int, default=8000, help="labelled training pairs (0: all)")
    parser.add_argument("--calibration-pairs", type=int, default=2000, help="held-out pairs for the label bias")
    parser.add_argument("--layers", type=int, nargs="+", default=[6, 3, 2, 1], help="encoder depths to train")
    parser.add_argument("--plain", action="store_true", help="plain cross-encoders instead of hybrids")
    parser.add_argument("--lexical-prior", action="store_true",
                        help="hybrids with the lexical prior (CrossEncoderConfig.lexical_prior)")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=32, help="training pairs per step and scoring pairs per call")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=5e-5, help="the encoder's peak rate")
    parser.add_argument("--feature-learning-rate", type=float, default=1e-3, help="the hybrid's feature-head rate")
    parser.add_argument("--latency-pairs", type=int, default=300, help="dev pairs scored one call each")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work-dir", default="runs/student_size", help="the students are kept here (resumable)")
    parser.add_argument("--out", default=str(RESULTS / "student_size.json"))
    args = parser.parse_args()
    if any(n < 1 for n in args.layers):
        parser.error("--layers takes depths >= 1")
    if args.plain and args.lexical_prior:
        parser.error("--lexical-prior is a hybrid's; drop --plain")
    return args


def one_call_latencies(function, records) -> dict[str, float]:
    """p50 and p99 milliseconds of `function([record])` over `records`, one call each (what one served pair costs)."""
    import numpy as np

    latencies = []
    for record in records:
        started = time.perf_counter()
        function([record])
        latencies.append(1000 * (time.perf_counter() - started))
    return {"p50_ms": round(float(np.percentile(latencies, 50)), 3),
            "p99_ms": round(float(np.percentile(latencies, 99)), 3)}


def main() -> None:
    args = parse_args()
    from pathlib import Path

    import numpy as np
    import torch

    from lref.baselines.lexical import LexicalModel
    from lref.calibration import fit_label_bias
    from lref.io import write_json
    from lref.labels import get_scheme
    from lref.models.factory import make_scorer
    from lref.models.onnx import ExportConfig, export_student
    from lref.models.scorer import ScorerConfig
    from lref.pipeline.data import sample
    from lref.predictions import ScoreResult

    torch.set_num_threads(args.threads)
    scheme = get_scheme("graded3")
    train, held_out, dev = homedepot_with_held_out(args.calibration_pairs, args.seed)
    student_train = sample(train, args.train_pairs or None, args.seed, "student")
    gold_held = np.array([scheme.index(r.label) for r in held_out])
    ids = [r.id for r in dev]
    kind = "student" if args.plain else "hybrid_prior" if args.lexical_prior else "hybrid"
    options = {"learning_rate": args.learning_rate}
    options |= {} if args.plain else {"lexical_features": True, "feature_learning_rate": args.feature_learning_rate,
                                     "lexical_prior": args.lexical_prior}

    def calibrated(held: np.ndarray, scored: np.ndarray):
        return ScoreResult(ids, scheme.labels, scored, 3, list(fit_label_bias(held, gold_held))).predictions()

    systems, depths = {}, {}
    for layers in sorted(set(args.layers), reverse=True):
        size = args.train_pairs or "all"
        name = f"{kind}_{size}" if layers == 6 else f"{kind}_L{layers}_{size}"
        if (args.learning_rate, args.feature_learning_rate) != (5e-5, 1e-3):  # a kept folder must match its rates
            name += f"_lr{args.learning_rate:g}_flr{args.feature_learning_rate:g}"
        folder, train_s = probe_student(Path(args.work_dir) / name, student_train, args,
                                        **options, **({} if layers == 6 else {"encoder_layers": layers}))
        export = folder / "onnx"
        if not (export / "model.int8.onnx").is_file():
            export_student(ExportConfig(model=str(folder), output_dir=str(export)))
        entry = {"folder": str(folder), "train_s": train_s,
                 "parameters": sum(int(np.prod(t.shape)) for t in weight_arrays(folder).values()),
                 "onnx_mb": {v: round((export / f).stat().st_size / 2**20, 1)
                             for v, f in (("fp32", "model.onnx"), ("int8", "model.int8.onnx"))}}
        for variant in ("int8", "fp32"):
            scorer = make_scorer(str(export), kind="onnx", variant=variant, config=ScorerConfig(
                batch_size=args.batch_size, max_length=args.max_length, num_threads=args.threads))
            held = scorer.score(held_out).logits
            before = load_average()
            started = time.perf_counter()
            scored = scorer.score(dev).logits
            seconds = time.perf_counter() - started
            systems[f"L{layers}_{variant}"] = calibrated(held, scored)
            entry[variant] = {"pairs_per_s": round(len(dev) / seconds, 1),
                              **one_call_latencies(scorer.score, dev[: args.latency_pairs]),
                              "load_average_before_after": [before, load_average()]}
            print(f"L{layers} {variant}: {entry[variant]}", flush=True)
        depths[f"L{layers}"] = entry

    started = time.perf_counter()
    lexical = LexicalModel().fit(train)
    lexical_fit_s = round(time.perf_counter() - started, 1)
    # what a served request of one pair pays for the hybrid's features, on each path
    features_one_pair = {method: one_call_latencies(functools.partial(lexical.features_.transform, method=method),
                                                    dev[: args.latency_pairs])
                         for method in ("sparse", "per_pair")}
    systems["lexical"] = calibrated(lexical.score(held_out).logits, lexical.score(dev).logits)

    deepest = f"L{max(args.layers)}_int8"
    pairs = [(name, other) for name in systems if name.endswith("_int8")
             for other in (deepest, "lexical") if other != name]
    pairs += [(f"L{n}_int8", f"L{n}_fp32") for n in sorted(set(args.layers), reverse=True)]
    results, paired = compare_on_dev(dev, systems, pairs, scheme, args.seed)
    lexical_labels = [p.label for p in systems["lexical"]]
    for name, predictions in systems.items():  # how far each student's labels leave lexical's (calibrated)
        results[name]["label_agreement_with_lexical"] = round(
            float(np.mean([p.label == q for p, q in zip(predictions, lexical_labels)])), 4)
    write_json(args.out, {
        "command": " ".join(["python benchmarks/student_size.py", *sys.argv[1:]]),
        "machine": machine(), "date": utc_now(), "threads": args.threads, "kind": kind,
        "sizes": {"student_train": len(student_train), "lexical_train": len(train), "held_out": len(held_out),
                  "dev": len(dev)},
        "depths": depths, "lexical_fit_s": lexical_fit_s,
        "match_features_one_pair": features_one_pair, "systems": results, "paired": paired,
    })


def weight_arrays(folder):
    from safetensors.numpy import load_file

    weights = load_file(str(folder / "model.safetensors"))
    head = folder / "feature_head.safetensors"
    return {**weights, **(load_file(str(head)) if head.is_file() else {})}


if __name__ == "__main__":
    main()
