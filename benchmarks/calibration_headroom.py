"""How much of each system's weighted-F1 on a finished Home Depot run is lost to its label prior rather than to
its ranking: the dev predictions' label log-probabilities shifted by the per-label bias that maximises weighted-F1
*on those same dev pairs*. That is an oracle bound, not a result: a real calibration would fit the biases on
training pairs and be judged on dev.

    python benchmarks/calibration_headroom.py            # reads runs/homedepot, writes the JSON below

It needs ../shared/datasets/homedepot and a finished run of configs/homedepot.yaml.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
from sklearn.metrics import f1_score

from lref.io import write_json
from lref.labels import get_scheme
from lref.pipeline import STAGES, load_config, load_data, read_manifest

ROOT = Path(__file__).resolve().parent.parent


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "homedepot.yaml"))
    parser.add_argument("--grid", type=float, default=3.0, help="biases searched in [-grid, grid], step 0.1")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "calibration_headroom.json"))
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    config = load_config(args.config)
    data = load_data(config)
    labels = list(get_scheme(data.scheme).labels)
    gold = {record.id: labels.index(record.label) for record in data.eval}
    steps = np.round(np.arange(-args.grid, args.grid + 1e-9, 0.1), 1)
    systems = {}
    for stage in STAGES:
        stage_dir = Path(config.run_dir) / "stages" / stage
        manifest = read_manifest(stage_dir) or {}
        for system, spec in (manifest.get("systems") or {}).items():
            if not (stage_dir / f"predictions_{system}.jsonl").is_file():
                continue
            rows = [json.loads(line) for line in (stage_dir / f"predictions_{system}.jsonl").open()]
            logp = np.log(np.array([[row["probs"][label] for label in labels] for row in rows]) + 1e-9)
            y = np.array([gold[row["id"]] for row in rows])
            plain = f1_score(y, logp.argmax(1), average="weighted")
            best = (plain, (0.0,) * (len(labels) - 1))
            for bias in itertools.product(steps, repeat=len(labels) - 1):  # the first label's bias stays 0
                score = f1_score(y, (logp + np.array((0.0, *bias))).argmax(1), average="weighted")
                if score > best[0]:
                    best = (score, bias)
            systems[system] = {"weighted_f1": round(plain, 6), "oracle_bias_weighted_f1": round(best[0], 6),
                               "bias": dict(zip(labels[1:], map(float, best[1])))}
            print(f"{system:10s} weighted-F1 {plain:.3f}  with the dev-fitted label bias {best[0]:.3f}")
    write_json(args.out, {"run_dir": str(config.run_dir), "dev_pairs": len(data.eval), "labels": labels,
                          "note": "oracle bound: biases fitted on the dev pairs they are scored on", "systems": systems})


if __name__ == "__main__":
    main()
