"""Probes of the DR stage on a finished Home Depot pipeline run: DR alone, trained on top of the run's RA adapter (or
another `--model`) with the run's CoT settings plus overrides, then scored on the run's dev pairs. A diagnostic for
why DR moves the direct scorer, not a pipeline stage.

    python benchmarks/probes/dr_probe.py --name base
    python benchmarks/probes/dr_probe.py --name no_balance --set class_balance=none
    python benchmarks/probes/dr_probe.py --name mask --variant mask-wrong-grade
    python benchmarks/probes/dr_probe.py --name direct_only --variant direct-only

Variants: `plain` (DR as configured), `mask-wrong-grade` (the reflections do not name the wrong grade: "The decision
is wrong" instead of "The decision Exact is wrong"), `direct-only` (DR's CoT examples replaced by direct examples of
the same selected pairs, so the stage trains direct examples only). Each probe adds its entry to `--out` (JSON, by
name). It needs ../shared/datasets/homedepot and a run of configs/homedepot.yaml up to its cot stage.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import time
from pathlib import Path

from lref.io import write_json

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[2]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True, help="probe name (its output folder under --probe-dir)")
    parser.add_argument("--variant", default="plain", choices=["plain", "mask-wrong-grade", "direct-only"])
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="CoTConfig override, e.g. class_balance=none, dr_epochs=0.25 (YAML value)")
    parser.add_argument("--model", default=None, help="model to train DR on (default: the run's RA adapter)")
    parser.add_argument("--config", default=str(ROOT / "configs" / "homedepot.yaml"))
    parser.add_argument("--probe-dir", default=str(ROOT / "runs" / "dr_probe"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "dr_probe.json"))
    return parser.parse_args()


def patch_examples(variant: str) -> None:
    """Swap DR's example builder for the variant's."""
    import lref.stages.cot as cot

    original = cot.cot_examples

    def masked(*args, **kwargs):
        examples, stats = original(*args, **kwargs)
        return [dataclasses.replace(e, completion=re.sub(r"The decision \w+ is wrong", "The decision is wrong",
                                                         e.completion)) for e in examples], stats

    def direct_only(task, records, scheme, teacher, count, **kwargs):
        return cot.direct_examples(records, scheme, count, seed=99), {}

    if variant != "plain":
        cot.cot_examples = masked if variant == "mask-wrong-grade" else direct_only


def main() -> None:
    args = parse_args()
    import yaml  # after the arguments: `--help` answers at once

    from lref.data import load_records
    from lref.pipeline import evaluate_system, load_config, load_data
    from lref.stages.cot import CoTConfig, train_cot

    config = load_config(args.config)
    data = load_data(config)
    stage_dir = Path(config.run_dir) / "stages" / "cot"
    settings = json.loads((stage_dir / "manifest.json").read_text())["config"]
    overrides = {key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in args.set)}
    out_dir = Path(args.probe_dir) / args.name
    settings.update(model=args.model or str(stage_dir / "model" / "ra"), stages=["dr"], output_dir=str(out_dir),
                    resume=True, progress=False)
    settings.update(overrides)  # --set may override any of the above too
    patch_examples(args.variant)
    records = load_records(str(Path(config.run_dir) / "stages" / "select" / "selected.jsonl"), "jsonl",
                           scheme=data.scheme)
    started = time.perf_counter()
    adapter = train_cot(CoTConfig(**settings), records, direct_pool=data.train)["dr"]
    train_s = time.perf_counter() - started
    metrics = evaluate_system("dr", "llm", str(adapter), data, dataclasses.replace(config.eval, bootstrap=0), out_dir)
    row = {"name": args.name, "variant": args.variant, "overrides": overrides, "model": settings["model"],
           "accuracy": round(metrics["accuracy"], 4), "weighted_f1": round(metrics["weighted_f1"], 4),
           "macro_f1": round(metrics["macro_f1"], 4), "over_estimate_share": round(metrics["over_estimate_share"], 4),
           "recall": {k: round(v["recall"], 3) for k, v in metrics["per_class"].items()},
           "train_s": round(train_s, 1)}
    out = Path(args.out)
    probes = json.loads(out.read_text())["probes"] if out.is_file() else {}
    probes[args.name] = row
    write_json(out, {"run_dir": str(config.run_dir), "dev_pairs": len(data.eval), "probes": probes})
    print(json.dumps(row))


if __name__ == "__main__":
    main()
