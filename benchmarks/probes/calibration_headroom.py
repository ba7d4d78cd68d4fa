"""How much of each system's weighted-F1 on a finished Home Depot run is lost to its label prior rather than to
its ranking: the dev predictions' label log-probabilities shifted by the per-label bias that maximises weighted-F1
*on those same dev pairs*. That is an oracle bound, not a result: a real calibration would fit the biases on
training pairs and be judged on dev. A second oracle cuts the expected rating (sum of p(label) * rating) at two
dev-fitted thresholds instead, an ordinal decision rule (schemes of three grades). On a run with `calibration:` the
predictions already carry the fitted bias, so the figures are what a perfect fit would add on top of it.

    python benchmarks/probes/calibration_headroom.py            # reads runs/homedepot, writes the JSON below
    python benchmarks/probes/calibration_headroom.py --run-dir runs/hd11 \\
        --out benchmarks/results/calibration_headroom_run11.json

It needs ../shared/datasets/homedepot and a finished run of configs/homedepot.yaml.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
from pathlib import Path

import numpy as np

from lref.io import write_json
from lref.labels import get_scheme

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[2]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "homedepot.yaml"))
    parser.add_argument("--run-dir", help="a finished run of the config (default: the config's run_dir)")
    parser.add_argument("--grid", type=float, default=3.0, help="biases searched in [-grid, grid], step 0.1")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "calibration_headroom.json"))
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    from sklearn.metrics import f1_score  # after the arguments: `--help` answers at once

    from lref.pipeline import STAGES, load_config, load_data, read_manifest

    config = load_config(args.config)
    data = load_data(config)
    run_dir = Path(args.run_dir or config.run_dir)
    scheme = get_scheme(data.scheme)
    labels = list(scheme.labels)
    ratings = np.array([scheme.rating(label) for label in labels])
    gold = {record.id: labels.index(record.label) for record in data.eval}
    steps = np.round(np.arange(-args.grid, args.grid + 1e-9, 0.1), 1)
    systems = {}
    for stage in STAGES:
        stage_dir = run_dir / "stages" / stage
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
            line = f"{system:10s} weighted-F1 {plain:.3f}  with the dev-fitted label bias {best[0]:.3f}"
            if len(labels) == 3:
                score, cuts = threshold_oracle(np.exp(logp) @ ratings, y, ratings)
                systems[system].update(oracle_thresholds_weighted_f1=round(score, 6), thresholds=cuts)
                line += f"  with dev-fitted rating thresholds {score:.3f}"
            print(line)
    note = "oracle bounds: biases and thresholds fitted on the dev pairs they are scored on"
    write_json(args.out, {"run_dir": str(run_dir), "dev_pairs": len(data.eval), "labels": labels, "note": note,
                          "systems": systems})


def threshold_oracle(expected: np.ndarray, y: np.ndarray, ratings: np.ndarray) -> tuple[float, list[float]]:
    """The best weighted-F1 of cutting the expected rating at two thresholds (grid step 0.02), and those cuts."""
    from sklearn.metrics import f1_score

    top, middle, bottom = ratings
    grid = np.round(np.arange(bottom + 0.02, top, 0.02), 2)
    best = (0.0, [float(middle), float(middle)])
    for low, high in itertools.combinations(grid, 2):
        predicted = np.where(expected >= high, 0, np.where(expected >= low, 1, 2))
        score = f1_score(y, predicted, average="weighted")
        if score > best[0]:
            best = (score, [float(low), float(high)])
    return best


if __name__ == "__main__":
    main()
