"""Noise audit of stage 1: the Mislabeled Supervisor against cleanlab's confident learning and random flags.

A synthetic catalog with `--noise` (default 15%) of its labels replaced (`meta["label_noise"]` marks them) goes
through `lref.stages.select.select` (MS method `supervisor`, `--backbone` selectors, lexical by default). On the
same pool, from the same run, four sets of flagged pairs are scored against the injected noise:

* `ms`: the pairs failing the MS condition (what flagged.jsonl holds with `ms_method: supervisor`);
* `cleanlab`: `cleanlab.filter.find_label_issues` (default `prune_by_noise_rate`) on IM's out-of-fold pool
  probabilities, exactly what `ms_method: cleanlab` flags. IM is the input because its probabilities estimate
  P(label | pair) on the pool's own label mix and, with `--folds` >= 2, no pair is scored by a model that trained on
  it; MS's probabilities estimate P(confusable label | pair), which is not what confident learning expects;
* `cleanlab_ci`: the same on CI's out-of-fold probabilities (CI trains on a band-balanced sample), for reference;
* `cleanlab_top_ms_size`: the pairs with the lowest `cleanlab.rank.get_label_quality_scores` on IM's probabilities,
  as many as MS flags: both methods at the same flag count, so the same recall scale (precision at equal size);
* `random_<method>`: flags of the same size drawn at random, mean over `--random-draws` seeded draws.

Also per seed: `within_rule`, the same scores among the pairs that pass CI(x) = L(x) ∧ IM(x) ≠ L(x) (where the
last condition acts in the keep rule), and `rule_selection`, the size and noise rate of that set alone and with
each finder as its last condition (no label floor).

Per set: precision (flagged pairs that are noisy), recall (noisy pairs flagged), F1. Repeated for each `--seeds`
value (a new catalog and new selector samples each), with the mean over seeds. Writes
benchmarks/results/selection_noise_audit.json.

    .venv/bin/python benchmarks/noise_audit.py                                          # the full audit
    .venv/bin/python benchmarks/noise_audit.py --pool 600 --sample 200 --seeds 0 --out /tmp/na.json  # quick
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from common import RESULTS, ROOT, machine, utc_now

from lref.io import write_json

FLAG_SETS = ("ms", "cleanlab", "cleanlab_ci", "cleanlab_top_ms_size")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pool", type=int, default=6000, help="pairs in the synthetic pool")
    parser.add_argument("--noise", type=float, default=0.15, help="injected label-noise rate")
    parser.add_argument("--scheme", default="graded3")
    parser.add_argument("--sample", type=int, default=1800, help="training sample of each selector (IM, CI, MS)")
    parser.add_argument("--confusion-slice", type=int, default=None,
                        help="held-out pairs for IM's confusion matrix (default: min(1000, pool - sample))")
    parser.add_argument("--confusion-source", default="im_confusion", choices=["im_confusion", "neighbour"])
    parser.add_argument("--backbone", default="lexical", choices=["lexical", "encoder", "llm"])
    parser.add_argument("--model", default=None, help="selector base model (encoder/llm; default: the backbone's)")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--folds", type=int, default=2)
    parser.add_argument("--first-model-rest", action="store_true",
                        help="score pairs outside a selector's sample with its first fold model only (K times "
                             "cheaper; still out of sample)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="one catalog and selection per seed")
    parser.add_argument("--random-draws", type=int, default=200, help="random flag sets per method, averaged")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--run-dir", default=str(ROOT / "runs" / "noise_audit"))
    parser.add_argument("--out", default=str(RESULTS / "selection_noise_audit.json"))
    args = parser.parse_args()
    if args.folds < 2:
        parser.error("--folds must be at least 2: cleanlab needs out-of-sample probabilities for every pair")
    return args


def scores(noisy, flagged) -> dict:
    """Precision, recall and F1 of `flagged` (boolean mask) as a finder of the `noisy` pairs."""
    import numpy as np
    from sklearn.metrics import f1_score, precision_score, recall_score

    noisy, flagged = np.asarray(noisy, dtype=bool), np.asarray(flagged, dtype=bool)
    return {
        "flagged": int(flagged.sum()),
        "noisy_flagged": int((noisy & flagged).sum()),
        "precision": round(float(precision_score(noisy, flagged, zero_division=0)), 4),
        "recall": round(float(recall_score(noisy, flagged, zero_division=0)), 4),
        "f1": round(float(f1_score(noisy, flagged, zero_division=0)), 4),
    }


def random_scores(noisy, size: int, draws: int, seed: int) -> dict:
    """Mean precision, recall and F1 of `draws` random flag sets of `size` pairs."""
    import numpy as np

    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(draws):
        flagged = np.zeros(len(noisy), dtype=bool)
        flagged[rng.choice(len(noisy), size=size, replace=False)] = True
        rows.append(scores(noisy, flagged))
    return {"flagged": size, "draws": draws,
            **{key: round(float(np.mean([row[key] for row in rows])), 4) for key in ("precision", "recall", "f1")}}


def pool_probs(result, output_dir: Path) -> dict:
    """Each selector's out-of-fold pool probabilities: from the result, or from the score caches select wrote
    when it kept nothing."""
    import numpy as np

    if result is not None:
        return result.probs
    return {role: np.load(path)["probs"] for role in ("im", "ci", "ms")
            if (path := output_dir / "selectors" / role / "scores.npz").is_file()}


def audit_seed(args: argparse.Namespace, seed: int) -> dict:
    import numpy as np
    from cleanlab.rank import get_label_quality_scores

    from lref.data.synthetic import SyntheticCatalogConfig, generate_catalog
    from lref.labels import get_scheme
    from lref.stages.select import (
        SCORES_NAME,
        EmptySelectionError,
        SelectConfig,
        confident_learning_flags,
        select,
    )

    scheme = get_scheme(args.scheme)
    pool = generate_catalog(
        SyntheticCatalogConfig(n_pairs=args.pool, label_noise=args.noise, scheme=args.scheme, seed=seed)
    )
    output_dir = Path(args.run_dir) / f"seed{seed}"
    config = SelectConfig(
        output_dir=str(output_dir), scheme=args.scheme, backbone=args.backbone, model=args.model,
        im_sample=args.sample, ci_sample=args.sample, ms_sample=args.sample,
        confusion_slice=args.confusion_slice or min(1000, args.pool - args.sample),
        confusion_source=args.confusion_source, folds=args.folds, epochs=args.epochs, learning_rate=args.lr,
        batch_size=16, seed=seed, threads=args.threads, score_batch_size=64, ms_method="supervisor",
        ensemble_rest=not args.first_model_rest,
    )
    started = time.perf_counter()
    try:
        result = select(config, pool)
        report, passes = result.report, result.passes
    except EmptySelectionError as error:  # the MS flags and the selector scores are on disk all the same
        print(f"warning (seed {seed}): {error}", file=sys.stderr)
        result = None
        report = json.loads((output_dir / "selection_report.json").read_text())
        rows = [json.loads(line) for line in (output_dir / SCORES_NAME).read_text().splitlines() if line.strip()]
        passes = {name: np.array([row[f"pass_{name}"] for row in rows]) for name in ("ci", "im", "ms")}
    select_s = time.perf_counter() - started
    probs = pool_probs(result, output_dir)
    labels = [r.label for r in pool]
    noisy = np.array([bool(r.meta["label_noise"]) for r in pool])

    started = time.perf_counter()
    flags = {"ms": ~np.asarray(passes["ms"], dtype=bool),
             "cleanlab": confident_learning_flags(labels, probs["im"], scheme),
             "cleanlab_ci": confident_learning_flags(labels, probs["ci"], scheme)}
    cleanlab_s = time.perf_counter() - started
    given = np.array([scheme.index(label) for label in labels])
    im_probs = probs["im"] / probs["im"].sum(axis=1, keepdims=True)
    quality = get_label_quality_scores(given, im_probs)
    top = np.zeros(len(pool), dtype=bool)
    top[np.argsort(quality, kind="stable")[: int(flags["ms"].sum())]] = True
    flags["cleanlab_top_ms_size"] = top

    methods = {name: scores(noisy, mask) for name, mask in flags.items()}
    for name in ("ms", "cleanlab"):
        methods[f"random_{name}"] = random_scores(noisy, int(flags[name].sum()), args.random_draws, seed)
    both = flags["ms"] & flags["cleanlab"]
    # the rule's selection (no label floor) with each finder as its last condition: how clean is what is kept?
    learnable_hard = np.asarray(passes["ci"], dtype=bool) & np.asarray(passes["im"], dtype=bool)
    rule = {"ci_and_im": learnable_hard, "ms": learnable_hard & ~flags["ms"],
            "cleanlab": learnable_hard & ~flags["cleanlab"]}
    selection = {name: {"selected": int(mask.sum()),
                        "noise_rate": round(float(noisy[mask].mean()), 4) if mask.any() else None}
                 for name, mask in rule.items()}
    # where the last condition acts: flags among the pairs that pass CI and IM
    candidates = np.flatnonzero(learnable_hard)
    within = {name: scores(noisy[candidates], flags[name][candidates]) for name in ("ms", "cleanlab")}
    for name in ("ms", "cleanlab"):
        within[f"random_{name}"] = random_scores(noisy[candidates], within[name]["flagged"], args.random_draws, seed)
    print(f"seed {seed}: " + "; ".join(f"{name} P {m['precision']:.3f} R {m['recall']:.3f} F1 {m['f1']:.3f} "
                                        f"(n {m['flagged']})" for name, m in methods.items()), flush=True)
    return {
        "seed": seed,
        "methods": methods,
        "overlap_ms_cleanlab": int(both.sum()),
        "rule_selection": selection,
        "within_rule": {"candidates": len(candidates), "noisy": int(noisy[candidates].sum()), **within},
        "noise_rate": round(float(noisy.mean()), 4),
        "noisy": int(noisy.sum()),
        "pool": len(pool),
        "selector_pool_accuracy": report["selector_pool_accuracy"],
        "confusion_map": report["confusion"].get("map"),
        "timings": report["timings"],
        "select_wall_s": round(select_s, 1),
        "cleanlab_s": round(cleanlab_s, 2),
    }


def main() -> None:
    args = parse_args()
    import numpy as np

    started = time.perf_counter()
    runs = [audit_seed(args, seed) for seed in args.seeds]
    names = list(runs[0]["methods"])
    keys = ("flagged", "precision", "recall", "f1")
    mean = {name: {key: round(float(np.mean([run["methods"][name][key] for run in runs])), 4) for key in keys}
            for name in names}
    within = {name: {key: round(float(np.mean([run["within_rule"][name][key] for run in runs])), 4) for key in keys}
              for name in ("ms", "cleanlab", "random_ms", "random_cleanlab")}
    kept = {name: {key: round(float(np.mean([run["rule_selection"][name][key] for run in runs])), 4)
                   for key in ("selected", "noise_rate")} for name in ("ci_and_im", "ms", "cleanlab")}
    result = {
        "mean_over_seeds": mean,
        "mean_within_rule": within,
        "mean_rule_selection": kept,
        "runs": runs,
        "settings": {**vars(args), "probabilities": {"cleanlab": "im", "cleanlab_ci": "ci",
                                                     "cleanlab_top_ms_size": "im"},
                     "cleanlab_filter_by": "prune_by_noise_rate",
                     "cleanlab_rank_method": "self_confidence"},
        "machine": machine(),
        "wall_time_s": round(time.perf_counter() - started, 1),
        "date": utc_now(),
        "command": "python " + " ".join(sys.argv),
    }
    out = Path(args.out)
    write_json(out, result)
    for name in names:
        m = mean[name]
        print(f"{name:22s} flagged {m['flagged']:7.1f}  precision {m['precision']:.3f}  recall {m['recall']:.3f}  "
              f"F1 {m['f1']:.3f}")
    for name, m in within.items():
        print(f"within CI and IM: {name:16s} flagged {m['flagged']:6.1f}  precision {m['precision']:.3f}  "
              f"recall {m['recall']:.3f}  F1 {m['f1']:.3f}")
    for name, m in kept.items():
        print(f"rule selection with {name:10s}: {m['selected']:6.1f} pairs, noise rate {m['noise_rate']:.3f}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
