"""Probe: the selected pairs added to llm-base's own training sample, one SFT from the base model, against continuing
llm-base on the selected pairs alone (what the pipeline's sft stage does).

It reads a finished Home Depot run (configs/homedepot.yaml): the llm-base sample is redrawn exactly as the pipeline
drew it, the selected pairs come from the run's select stage, the SFT settings are the llm-base stage's, and the
model is evaluated like every pipeline system (label bias fitted on the run's calibration pairs, then the run's dev
pairs). Writes benchmarks/results/selection_mix_probe.json.

    .venv/bin/python benchmarks/probes/selection_mix_probe.py
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from pathlib import Path

from lref.io import write_json

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[2]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs/homedepot.yaml"))
    parser.add_argument("--run-dir", default=None, help="the finished run (default: the config's run_dir)")
    parser.add_argument("--out-dir", default=str(ROOT / "runs/selection_mix_probe"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/selection_mix_probe.json"))
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    from lref.data import load_records  # after the arguments: `--help` answers at once
    from lref.pipeline import Pipeline, evaluate_system, load_config, load_data, read_manifest, sample
    from lref.prompts import with_match_hints
    from lref.stages.sft import train_sft

    config = load_config(args.config)
    pipeline = Pipeline(config, args.run_dir)
    select = read_manifest(pipeline.stage_dir("select"))
    if not select or select.get("status") != "done":
        raise SystemExit(f"{pipeline.stage_dir('select')}: the run's select stage has not finished")
    data = load_data(config)
    base = sample(data.train, config.pairs.get("llm-base"), config.seed, "llm-base")
    selected = load_records(select["outputs"]["records"], "jsonl", scheme=data.scheme)
    if config.data.match_hints:
        selected = with_match_hints(selected)
    in_base = {r.id for r in base}
    added = [r for r in selected if r.id not in in_base]
    records = base + added
    print(f"llm-base sample {len(base)} + selected {len(selected)} ({len(added)} not in it) = {len(records)} pairs")

    out_dir = Path(args.out_dir)
    sft = dataclasses.replace(config.stages["llm-base"], output_dir=str(out_dir / "model"), resume=False)
    started = time.perf_counter()
    folder = train_sft(sft, records)
    train_s = time.perf_counter() - started
    metrics = evaluate_system("mix", "llm", str(folder), data, config.eval, out_dir, config.seed, config.calibration)

    stages = {name: read_manifest(pipeline.stage_dir(name)) or {} for name in ("llm-base", "sft")}
    compared = {name: stages[stage].get("metrics", {}).get(name, {}).get("weighted_f1")
                for name, stage in (("llm-base", "llm-base"), ("sft", "sft"))}
    result = {
        "records": {"llm_base_sample": len(base), "selected": len(selected), "added": len(added),
                    "total": len(records)},
        "train_seconds": round(train_s, 1),
        "mix": {key: metrics[key] for key in ("accuracy", "macro_f1", "weighted_f1", "over_estimate_share", "rmse")},
        "mix_ci95_weighted_f1": metrics["ci95"]["weighted_f1"],
        "mix_uncalibrated": (metrics.get("calibration") or {}).get("uncalibrated"),
        "run_weighted_f1": compared,
        "run_dir": str(pipeline.run_dir),
        "command": "python benchmarks/probes/selection_mix_probe.py",
    }
    write_json(args.out, result)
    print(f"mix: weighted-F1 {metrics['weighted_f1']:.3f} (llm-base {compared['llm-base']}, "
          f"llm-base continued on the selection {compared['sft']}); {args.out}")


if __name__ == "__main__":
    main()
