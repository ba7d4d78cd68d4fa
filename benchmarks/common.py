"""What the benchmark scripts share: where things are, how the machine is described, the SFT sample they leave out.

The scripts import it as a sibling module (`import common`): `python benchmarks/NAME.py` puts benchmarks/ first on
sys.path, so no script edits sys.path and benchmarks/ is not a package. The one-off probes in benchmarks/probes/
do not import it (they run as `python benchmarks/probes/NAME.py`, which puts only probes/ on sys.path).

Importing it switches the Hugging Face libraries to offline mode unless the caller set the variables: benchmarks use
the models installed with lref and never download. It imports nothing heavy, so that each script can parse its
arguments (and answer `--help`, which tests/test_benchmarks.py runs for every script) before it imports lref, torch
or numpy.
"""

from __future__ import annotations

import os
import platform
import random
import sys
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
"""The repository."""
HOMEDEPOT = ROOT.parent / "shared" / "datasets" / "homedepot"
"""The Home Depot train.csv and dev.csv: Kaggle competition data, kept beside the repository, never shipped."""
RESULTS = ROOT / "benchmarks" / "results"
"""Where each benchmark writes its JSON by default."""


def cpu_name() -> str:
    """The CPU model as /proc/cpuinfo names it, else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    """CPU model, logical CPUs and OS, for speed figures that depend on them."""
    return f"{cpu_name()}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.machine()}"


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages (other work on the machine slows speed figures); empty where unknown."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def utc_now() -> str:
    """The current time in UTC, to the second (ISO 8601)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def homedepot_with_held_out(calibration_pairs: int, seed: int) -> tuple[list, list, list]:
    """Home Depot train.csv less `calibration_pairs` pairs held out by whole queries, as the pipeline holds out its
    calibration pairs; those held-out pairs; and all of dev.csv. blind.csv is never read."""
    from lref.data import load_records  # lazy: lref loads only after the script has parsed its arguments
    from lref.pipeline.data import hold_out_calibration

    train_all = load_records(HOMEDEPOT / "train.csv", "homedepot")
    dev = load_records(HOMEDEPOT / "dev.csv", "homedepot")
    train, held_out = hold_out_calibration(train_all, calibration_pairs, seed)
    return train, held_out, dev


def probe_student(folder: Path, records: list, args, **options) -> tuple[Path, float | None]:
    """A MiniLM cross-encoder trained on `records` into `folder` with the probe scripts' settings (`args`: epochs,
    batch_size, max_length, seed, threads) plus `options` (CrossEncoderConfig fields); kept and resumed across runs.
    Returns the folder and the training seconds (None when an earlier run had finished it)."""
    import time

    from lref.training.cross_encoder import CrossEncoderConfig, train_cross_encoder

    if (folder / "lref_manifest.json").is_file():
        return folder, None
    started = time.perf_counter()
    train_cross_encoder(CrossEncoderConfig(
        model="minilm-l6", output_dir=str(folder), epochs=args.epochs, batch_size=args.batch_size,
        max_length=args.max_length, seed=args.seed, threads=args.threads, progress=True,
        resume=(folder / "checkpoints").is_dir(), **options), records)
    return folder, round(time.perf_counter() - started, 1)


def compare_on_dev(dev: list, systems: dict, pairs: list[tuple[str, str]], scheme, seed: int) -> tuple[dict, dict]:
    """Each system's headline figures on `dev` (query-bootstrap intervals) and the paired differences `a - b` of
    `pairs`; both printed, one line each."""
    from lref.metrics import evaluate, paired_difference  # lazy: lref loads only after the script has parsed its args

    results = {name: {k: evaluate(dev, predictions, scheme, bootstrap=1000, seed=seed)[k]
                      for k in ("weighted_f1", "macro_f1", "accuracy", "quadratic_weighted_kappa", "ci95")}
               for name, predictions in systems.items()}
    paired = {f"{a} - {b}": paired_difference(dev, systems[a], systems[b], scheme, bootstrap=1000, seed=seed)
              for a, b in pairs}
    for name, figures in results.items():
        print(f"{name:18s} wF1 {figures['weighted_f1']:.4f}  macro-F1 {figures['macro_f1']:.4f}  "
              f"QWK {figures['quadratic_weighted_kappa']:.4f}")
    for name, difference in paired.items():
        low, high = difference["ci95"]["weighted_f1"]
        print(f"{name:28s} {100 * difference['weighted_f1']:+.2f} [{100 * low:+.2f}, {100 * high:+.2f}] points")
    return results, paired


def sft_training_ids(model: str, train_all: list) -> set[str]:
    """Ids of the train.csv sample a benchmarks/sft_quality.py adapter was trained on, rebuilt from its manifest
    (seeded sample of n_train pairs) and confirmed by the data hash; empty when it cannot be confirmed."""
    from lref.fingerprint import data_hash  # lazy: lref loads only after the script has parsed its arguments
    from lref.models.loading import read_manifest
    from lref.models.zoo import resolve_model

    manifest = read_manifest(resolve_model(model)) or {}
    n_train, seed = manifest.get("n_train"), (manifest.get("config") or {}).get("seed")
    if not n_train or seed is None:
        return set()
    sample = random.Random(seed).sample(train_all, min(n_train, len(train_all)))
    if data_hash(sample) != manifest.get("data_hash"):
        print("note: could not rebuild the SFT training sample; the pool may overlap it", file=sys.stderr)
        return set()
    return {record.id for record in sample}
