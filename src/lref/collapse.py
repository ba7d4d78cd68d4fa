"""Collapse check of a judge: does it still tell the grades apart, or has it fallen back to (nearly) one answer?

A judge trained too briefly on a skewed scheme can answer almost only the majority grade. Its accuracy then sits near
the majority floor and looks tolerable, but a student distilled from it learns nothing else. `check_collapse` reads
three signs from a judge's labels on pairs with gold labels:

- **macro-F1 against the majority floor**: the macro-F1 of always answering the most common gold grade (scikit-learn's
  macro average over the grades present in gold or predictions, as `lref.metrics` computes it). A judge that beats
  this floor by less than `min_macro_f1_gain` has learnt almost nothing beyond the prior.
- **prediction entropy**: the entropy of the predicted-grade distribution over the scheme's grades, divided by
  log(K) (1 = every grade equally often, 0 = one grade only). Below `min_entropy` the judge is near-constant.
- **silent grades**: grades with at least `min_support` gold pairs whose recall is below `silent_recall`. They do not
  make a judge collapsed on their own (a 3-grade judge may rarely answer the rarest grade and still rank well), but
  they are listed, because a student cannot learn a grade its teacher never answers.

The judge is `collapsed` when either of the first two holds. The pipeline runs this on each system's calibration
pairs (else its held-out pairs), prints it, stores it in the stage manifest and the report, and the distill stage
refuses a collapsed teacher unless `allow_collapsed_teacher` is set.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from sklearn.metrics import f1_score, recall_score

from lref.labels import LabelScheme, get_scheme


@dataclass
class CollapseConfig:
    """Thresholds of `check_collapse`."""

    min_macro_f1_gain: float = field(
        default=0.05, metadata={"help": "Least macro-F1 above the majority floor (always answering the most common "
                                "gold grade) for a judge not to count as collapsed."})
    min_entropy: float = field(
        default=0.35, metadata={"help": "Least entropy of the predicted grades, as a share of log(number of grades), "
                                "for a judge not to count as collapsed."})
    silent_recall: float = field(
        default=0.05, metadata={"help": "A grade whose recall is below this is listed as silent."})
    min_support: int = field(
        default=5, metadata={"help": "Fewest gold pairs of a grade for its recall to be judged."})

    def __post_init__(self) -> None:
        for name in ("min_macro_f1_gain", "min_entropy", "silent_recall"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"{name} must be between 0 and 1, got {value}")
        if self.min_support < 1:
            raise ValueError(f"min_support must be >= 1, got {self.min_support}")


def check_collapse(gold: Sequence[str], predicted: Sequence[str], scheme: LabelScheme | str,
                   config: CollapseConfig | None = None) -> dict[str, Any]:
    """The collapse signs of `predicted` against `gold` (labels of `scheme`, in the same order); JSON-ready."""
    config = config or CollapseConfig()
    scheme = get_scheme(scheme)
    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold labels but {len(predicted)} predictions")
    if not gold:
        raise ValueError("no pairs to check")
    labels = list(scheme.labels)
    gold_counts = Counter(gold)
    majority = max(labels, key=lambda label: (gold_counts[label], -labels.index(label)))
    macro_f1 = float(f1_score(gold, predicted, average="macro", zero_division=0))
    floor = float(f1_score(gold, [majority] * len(gold), average="macro", zero_division=0))
    predicted_counts = Counter(predicted)
    shares = [predicted_counts[label] / len(predicted) for label in labels]
    entropy = max(0.0, -sum(p * math.log(p) for p in shares if p > 0) / math.log(len(labels)))
    recalls = recall_score(gold, predicted, labels=labels, average=None, zero_division=0)
    per_class_recall = {label: (round(float(r), 4) if gold_counts[label] else None)
                        for label, r in zip(labels, recalls)}
    silent = [label for label, r in zip(labels, recalls)
              if gold_counts[label] >= config.min_support and r < config.silent_recall]
    reasons = []
    if macro_f1 < floor + config.min_macro_f1_gain:
        reasons.append(f"macro-F1 {macro_f1:.3f} is less than {config.min_macro_f1_gain:.2f} above the majority "
                       f"floor {floor:.3f} (always {majority})")
    if entropy < config.min_entropy:
        top = max(labels, key=lambda label: predicted_counts[label])
        reasons.append(f"prediction entropy {entropy:.2f} < {config.min_entropy:.2f}: "
                       f"{predicted_counts[top] / len(predicted):.0%} of its answers are {top}")
    return {
        "collapsed": bool(reasons),
        "reasons": reasons,
        "pairs": len(gold),
        "macro_f1": round(macro_f1, 4),
        "majority_label": majority,
        "majority_macro_f1": round(floor, 4),
        "prediction_entropy": round(entropy, 4),
        "predicted_shares": {label: round(share, 4) for label, share in zip(labels, shares)},
        "per_class_recall": per_class_recall,
        "silent_labels": silent,
        "thresholds": asdict(config),
    }


def collapse_summary(check: dict[str, Any]) -> str | None:
    """One console line for a check that found a collapse or silent grades; None when it found neither."""
    if check["collapsed"]:
        return "COLLAPSED: " + "; ".join(check["reasons"])
    if check["silent_labels"]:
        recalls = check["per_class_recall"]
        return "never or almost never answers " + ", ".join(
            f"{label} (recall {recalls[label]:.2f})" for label in check["silent_labels"])
    return None


__all__ = ["CollapseConfig", "check_collapse", "collapse_summary"]
