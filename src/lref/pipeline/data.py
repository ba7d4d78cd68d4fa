"""The pairs of a run: training and held-out evaluation pairs as configured, calibration pairs held out of training,
seeded samples, and the checks that keep the evaluation split held out."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from lref.data import load_records, split_by_query
from lref.data.corrections import CorrectionSummary, load_and_apply
from lref.data.hints import with_match_hints
from lref.data.records import DataError, Record
from lref.data.synthetic import SyntheticCatalogConfig, generate_catalog
from lref.fingerprint import data_hash, sha256_json
from lref.labels import get_scheme
from lref.pipeline.config import PipelineConfig, scheme_name


@dataclass
class RunData:
    """A run's pairs: training, held-out evaluation and calibration, with the hashes the fingerprints use."""

    train: list[Record]
    eval: list[Record]
    scheme: str
    train_hash: str
    eval_hash: str
    calibration: list[Record] = field(default_factory=list)
    calibration_hash: str | None = None
    corrections: CorrectionSummary | None = None
    """The `data.corrections` file applied (path, sha256, rows, labels changed), or None."""


def sample(records: list[Record], n: int | None, seed: int, tag: str) -> list[Record]:
    """A seeded random sample of `n` records in input order (all of them when `n` is None or not smaller); `tag`
    names the draw, so the samples of different uses differ under the same seed."""
    if n is None or n >= len(records):
        return list(records)
    chosen = sorted(random.Random(f"{seed}-{tag}").sample(range(len(records)), n))
    return [records[i] for i in chosen]


def load_data(config: PipelineConfig) -> RunData:
    """The training pairs and the held-out evaluation pairs, sampled as configured; refuses overlapping ids."""
    data, scheme = config.data, scheme_name(config.data)
    if data.format == "synthetic":
        settings = {"scheme": scheme, "seed": config.seed, **data.synthetic}
        train = generate_catalog(SyntheticCatalogConfig(**settings))
    else:
        train = load_records(data.train, data.format, scheme=scheme, **data.options)
    if data.eval:
        held_out = load_records(data.eval, data.format, scheme=scheme, **data.options)
    corrections = None
    if data.corrections:  # before the split and the samples, so they see the corrected labels
        parts, corrections = load_and_apply(data.corrections, [train, held_out] if data.eval else [train],
                                            get_scheme(scheme))
        train = parts[0]
        if data.eval:
            held_out = parts[1]
    if not data.eval:
        split = split_by_query(train, {"train": 1 - data.eval_fraction, "eval": data.eval_fraction}, seed=config.seed)
        train, held_out = split["train"], split["eval"]
    calibration: list[Record] = []
    if config.calibration_pairs:
        train, calibration = hold_out_calibration(train, config.calibration_pairs, config.seed)
    train = sample(train, data.train_pairs, config.seed, "train")
    held_out = sample(held_out, data.eval_pairs, config.seed, "eval")
    if not train or not held_out:
        raise DataError(f"need training and evaluation pairs, got {len(train)} and {len(held_out)}")
    shared = {r.id for r in train} & {r.id for r in held_out}
    if shared:
        raise DataError(f"{len(shared)} evaluation ids also occur in the training data (e.g. {sorted(shared)[:3]}); "
                        "the evaluation split must be held out")
    shared = {r.id for r in calibration} & {r.id for r in held_out}
    if shared:
        raise DataError(f"{len(shared)} evaluation ids also occur among the calibration pairs (e.g. "
                        f"{sorted(shared)[:3]}); the evaluation split must be held out")
    for name, records in (("evaluation", held_out), ("calibration", calibration)):
        unlabelled = [r.id for r in records if r.label is None]
        if unlabelled:
            raise DataError(f"{len(unlabelled)} {name} pairs have no label (e.g. {unlabelled[0]!r})")
    if data.match_hints:
        train, held_out, calibration = (with_match_hints(records) for records in (train, held_out, calibration))

    def digest(records: list[Record]) -> str:
        # The hint changes every input text, so it changes every downstream fingerprint; off, hashes stay as before.
        value = sha256_json([data_hash(records), "match-hints"]) if data.match_hints else data_hash(records)
        # A changed corrections file re-runs everything downstream, even where no label it touches was sampled.
        return sha256_json([value, {"corrections": corrections.sha256}]) if corrections else value

    return RunData(train, held_out, scheme, digest(train), digest(held_out), calibration,
                   digest(calibration) if calibration else None, corrections)


def hold_out_calibration(train: list[Record], n: int, seed: int) -> tuple[list[Record], list[Record]]:
    """Whole queries moved out of `train` until `n` pairs are held out (the last query's surplus pairs are dropped,
    so no calibration query keeps pairs in training)."""
    if n >= len(train) // 2:
        raise DataError(f"calibration.pairs: {n} would hold out half or more of the {len(train)} training pairs")
    share = 1.25 * n / len(train)
    while True:  # few, large queries can leave the first draw short: widen it
        # Its own draw: with the eval split's seed, the calibration side would be exactly the queries eval took.
        split = split_by_query(train, {"train": 1 - share, "calibration": share}, seed=f"{seed}-calibration")
        if len(split["calibration"]) >= n or share >= 0.5:
            break
        share = min(0.5, share * 1.25)
    if len(split["calibration"]) < n:
        raise DataError(f"calibration.pairs: only {len(split['calibration'])} pairs fell to the calibration "
                        f"queries, fewer than {n}; lower it")
    return split["train"], sample(split["calibration"], n, seed, "calibration")


__all__ = ["RunData", "hold_out_calibration", "load_data", "sample"]
