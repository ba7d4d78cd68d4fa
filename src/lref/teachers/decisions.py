"""The wrong decisions Decision Reflection (DR) asks a teacher to explain, drawn so that a set share over-estimates.

`wrong_decision_plan` says which gold-label mix DR's pairs need and, per gold grade, how likely its wrong decision
over-estimates; `sample_wrong_label` draws one pair's wrong decision, fixed per (seed, pair id), so `lref cot` and
`lref teach` on the same pairs ask the same questions (and share their teacher caches).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence

from lref.data.records import Record
from lref.labels import LabelScheme


def sample_wrong_label(record: Record, scheme: LabelScheme, over_probability: float, seed: int = 0) -> str:
    """A wrong decision for DR, fixed per (seed, pair id): with probability `over_probability` a grade more relevant
    than gold (an over-estimate), else a less relevant one; when only one side exists, that side."""
    gold = scheme.parse(record.label)
    index = scheme.index(gold)
    more, less = list(scheme.labels[:index]), list(scheme.labels[index + 1 :])
    rng = random.Random(f"{seed}:{record.id}")
    side = more if more and (not less or rng.random() < over_probability) else less
    return rng.choice(side)


def wrong_decision_plan(
    labels: Sequence[str], scheme: LabelScheme, over_estimate_share: float
) -> tuple[dict[str, float], dict[str, float]]:
    """How DR reaches `over_estimate_share`: the gold-label mix of its pairs and, per gold grade, the probability that
    its wrong decision over-estimates (for `sample_wrong_label`). A top-grade pair can only be under-estimated and a
    bottom-grade one only over-estimated, so keeping the pool's label mix would cap the share (at 53 % on Home Depot,
    where 47 % of pairs are Exact). Instead the over-estimates are spread over the grades that allow one in
    proportion to the pool, and the under-estimates likewise."""
    mix = Counter(labels)
    pool = {label: n / len(labels) for label, n in mix.items()}
    can_over = {label: p for label, p in pool.items() if scheme.index(label) > 0}
    can_under = {label: p for label, p in pool.items() if scheme.index(label) < len(scheme.labels) - 1}
    share = 0.0 if not can_over else 1.0 if not can_under else over_estimate_share
    over = {label: share * p / sum(can_over.values()) for label, p in can_over.items()}
    under = {label: (1 - share) * p / sum(can_under.values()) for label, p in can_under.items()}
    weights = {label: over.get(label, 0.0) + under.get(label, 0.0) for label in pool}
    probability = {label: over.get(label, 0.0) / w if w else 0.0 for label, w in weights.items()}
    return weights, probability


def wrong_decisions(
    records: Sequence[Record], scheme: LabelScheme, over_estimate_share: float, seed: int = 0,
    plan_records: Sequence[Record] | None = None,
) -> list[str]:
    """One wrong decision per record (`sample_wrong_label`), at the per-grade odds `wrong_decision_plan` gives for
    the labels of `plan_records` (default: `records`)."""
    basis = records if plan_records is None else plan_records
    _, odds = wrong_decision_plan([scheme.parse(r.label) for r in basis], scheme, over_estimate_share)
    return [sample_wrong_label(r, scheme, odds[scheme.parse(r.label)], seed) for r in records]


__all__ = ["sample_wrong_label", "wrong_decision_plan", "wrong_decisions"]
