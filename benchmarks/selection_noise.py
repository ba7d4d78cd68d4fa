"""Noise audit of stage 1: how much of a known injected label noise does the Mislabeled Supervisor remove?

A synthetic catalog with `--noise` (default 15%) of its labels replaced (`meta["label_noise"]` marks them, the rule
label is in `meta["true_label"]`) goes through `lref.stages.select.select` with the encoder backbone (real
all-MiniLM-L6-v2 by default) and `--ms-method` (default `supervisor`: this script audits the Mislabeled Supervisor;
benchmarks/noise_audit.py sets it against cleanlab and random flags). Reported against the ground truth:

* precision: share of the pairs MS drops (fail the MS condition) that are truly noisy; a random drop of the same
  size would score the noise rate;
* recall: share of the truly noisy pairs that MS drops;
* the same two numbers for the whole rule (pairs not selected), the noise rate of the pool and of the selected set,
  and the funnel.

Writes `noise_audit` (and `noise_audit_funnel`) into benchmarks/results/selection.json, keeping any other keys there
(`systems` comes from the Home Depot run).

    .venv/bin/python benchmarks/selection_noise.py                     # the full audit
    .venv/bin/python benchmarks/selection_noise.py --pool 600 --sample 240 --out /tmp/s.json   # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from common import RESULTS, ROOT, utc_now

from lref.io import write_json


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pool", type=int, default=6000, help="pairs in the synthetic pool")
    parser.add_argument("--noise", type=float, default=0.15, help="injected label-noise rate")
    parser.add_argument("--scheme", default="graded3")
    parser.add_argument("--sample", type=int, default=1800, help="training sample of each selector (IM, CI, MS)")
    parser.add_argument("--confusion-slice", type=int, default=1000)
    parser.add_argument("--confusion-source", default="im_confusion", choices=["im_confusion", "neighbour"])
    parser.add_argument("--backbone", default="encoder", choices=["encoder", "llm", "lexical"])
    parser.add_argument("--ms-method", default="supervisor", choices=["supervisor", "cleanlab"],
                        help="SelectConfig.ms_method whose flags are audited (benchmarks/noise_audit.py compares both)")
    parser.add_argument("--model", default=None, help="selector base model (default: the backbone's default)")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--folds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--run-dir", default=str(ROOT / "runs" / "selection_noise"))
    parser.add_argument("--out", default=str(RESULTS / "selection.json"))
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    from rich.console import Console

    from lref.data.synthetic import SyntheticCatalogConfig, generate_catalog
    from lref.stages.select import EmptySelectionError, SelectConfig, funnel_table, noise_audit, select

    pool = generate_catalog(
        SyntheticCatalogConfig(n_pairs=args.pool, label_noise=args.noise, scheme=args.scheme, seed=args.seed)
    )
    config = SelectConfig(
        output_dir=args.run_dir, scheme=args.scheme, backbone=args.backbone, model=args.model,
        im_sample=args.sample, ci_sample=args.sample, ms_sample=args.sample, confusion_slice=args.confusion_slice,
        confusion_source=args.confusion_source, folds=args.folds, epochs=args.epochs, learning_rate=args.lr,
        batch_size=args.batch_size, seed=args.seed, threads=args.threads, score_batch_size=64,
        ms_method=args.ms_method,
    )
    started = time.perf_counter()
    try:
        result = select(config, pool)
        report = result.report
    except EmptySelectionError as error:  # still audit MS: the report is on disk
        print(f"warning: {error}", file=sys.stderr)
        report = json.loads((Path(args.run_dir) / "selection_report.json").read_text())
        result = None
    wall = time.perf_counter() - started

    Console().print(funnel_table(report))
    noisy = [bool(r.meta["label_noise"]) for r in pool]
    audit = dict(report["noise_audit"])
    audit["random_drop_precision"] = audit["noise_rate"]  # what dropping the same number at random would give
    if result is not None:
        audit["whole_rule"] = noise_audit(noisy, ~result.kept)
    audit.update(
        {
            "noise_rate_pool": report["label_noise_rate"]["pool"],
            "noise_rate_selected": report["label_noise_rate"]["selected"],
            "pool": len(pool),
            "selected": report["selected"],
            "selected_fraction": report["selected_fraction"],
            "scheme": args.scheme,
            "backbone": args.backbone,
            "model": report["model"],
            "selector_sample": args.sample,
            "folds": args.folds,
            "epochs": args.epochs,
            "confusion_source": args.confusion_source,
            "ms_method": args.ms_method,
            "confusion_map": report["confusion"].get("map"),
            "selector_pool_accuracy": report["selector_pool_accuracy"],
            "timings": report["timings"],
            "wall_time_s": round(wall, 1),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "date": utc_now(),
            "command": "python " + " ".join(sys.argv),
        }
    )
    out = Path(args.out)
    existing = json.loads(out.read_text()) if out.is_file() else {}
    existing["noise_audit"] = audit
    existing["noise_audit_funnel"] = {
        key: report[key] for key in ("funnel", "conditions", "label_distribution", "band_mix", "label_noise_rate")
    }
    write_json(out, existing)
    print(
        f"MS noise audit: precision {audit['precision']} (random drop: {audit['random_drop_precision']}), recall "
        f"{audit['recall']}; noise rate pool {audit['noise_rate_pool']:.3f} -> selected "
        f"{audit['noise_rate_selected']}; {wall / 60:.1f} min; wrote {out}"
    )


if __name__ == "__main__":
    main()
